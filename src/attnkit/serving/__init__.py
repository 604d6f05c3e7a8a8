"""`attnkit serve`: trained runs over HTTP (FastAPI on uvicorn), concurrent requests decoded
together in batches, with the attention behind each translation and a page that draws it."""
