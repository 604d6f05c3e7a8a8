"""`attnkit serve`: the API and its errors (through FastAPI's TestClient), the dynamic batcher
(with a fake decoder), attention in answers, and the HTTP faults a real uvicorn must survive
(short bodies, disconnects, methods), on tiny trained runs."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import threading
import time

import pytest
from conftest import assert_one_line_error, run_cli, tiny_training
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit.errors import UserError
from attnkit.serving.batcher import Batcher, DecodeFailed, QueueFull
from attnkit.serving.catalog import load_models, model_names
from attnkit.serving.limits import Limits
from attnkit.serving.model_thread import ModelThread
from attnkit.serving.server import make_server
from attnkit.serving.service import TranslationService

LIMITS = Limits(max_request_bytes=2000, max_lines=3, max_chars=300, body_timeout=0.5)
SENTENCES = ["The young woman sees the small dogs.", "A man reads.", "Two cats sleep on a red car."]


def _train(root, name, *overrides):
    done = run_cli(
        "train", *tiny_training(root / "data", root / name, "train.max_steps=2", *overrides)
    )
    assert done.returncode == 0, done.stderr
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny Transformer (2 heads), a GRU with Bahdanau attention and one without attention."""
    root = tmp_path_factory.mktemp("serve")
    done = run_cli("data", "synth", "--out", str(root / "data"), "--size", "300")
    assert done.returncode == 0, done.stderr
    rnn = ("model.arch=rnn", "model.preset=tiny", "model.cell=gru", "model.d_model=16")
    return {
        "transformer": _train(root, "transformer", "model.n_heads=2", "decode.max_len_b=8"),
        "rnn": _train(root, "rnn", *rnn, "model.attention=bahdanau", "decode.max_len_b=8"),
        "plain": _train(root, "plain", *rnn, "model.attention=none", "decode.max_len_b=8"),
    }


@pytest.fixture(scope="module")
def service(runs):
    models = load_models(
        [runs["transformer"], runs["rnn"], runs["plain"]], checkpoint="best", device="cpu"
    )
    return TranslationService(models, LIMITS, batch_tokens=512, max_wait_s=0.002)


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from attnkit.serving.app import create_app

    with TestClient(create_app(service)) as client:
        yield client


@pytest.fixture(scope="module")
def server(runs):
    """A real uvicorn on a free port, its request log kept in `server.lines`."""
    lines: list[str] = []
    server = make_server([runs["transformer"]], port=0, limits=LIMITS, log=lines.append)
    server.lines = lines
    server.start()
    yield server
    server.stop()


def _post(client, body, path="/translate"):
    response = client.post(path, json=body)
    return response.status_code, response.json()


# The API --------------------------------------------------------------------------------------


def test_a_line_gives_a_line_and_a_list_gives_a_list(client):
    status, answer = _post(client, {"text": SENTENCES[0]})
    assert status == 200 and answer["model"] == "transformer"
    assert isinstance(answer["translations"], str) and isinstance(answer["scores"], float)
    assert set(answer) == {"model", "translations", "scores"}  # nbest, attention: only if asked
    status, answer = _post(client, {"text": ["A cat.", "", "A dog."], "beam": 2})
    assert status == 200 and len(answer["translations"]) == 3
    assert answer["translations"][1] == "" and answer["scores"][1] == 0.0


@pytest.mark.parametrize("beam", [1, 3])
def test_answers_are_the_translators_own(client, service, beam):
    translator = service.models["transformer"].translator
    expected = translator.translate(SENTENCES, translator.options.replace(beam=beam))
    status, answer = _post(client, {"text": SENTENCES, "beam": beam})
    assert status == 200
    assert answer["translations"] == [hyps[0].text for hyps in expected]
    assert answer["scores"] == pytest.approx([hyps[0].score for hyps in expected], abs=1e-5)


def test_nbest_lists_come_best_first_with_scores(client):
    status, answer = _post(client, {"text": [SENTENCES[0], ""], "beam": 3, "nbest": 3})
    assert status == 200
    hyps = answer["nbest"][0]
    assert 1 <= len(hyps) <= 3 and hyps[0]["text"] == answer["translations"][0]
    scores = [h["score"] for h in hyps]
    assert scores == sorted(scores, reverse=True) and scores[0] == answer["scores"][0]
    assert answer["nbest"][1] == [{"text": "", "score": 0.0}]
    # without "beam", the beam grows to the n-best asked for
    status, answer = _post(client, {"text": SENTENCES[0], "nbest": 2})
    assert status == 200 and isinstance(answer["nbest"], list) and len(answer["nbest"]) <= 2


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"txt": "x"}, 400, 'missing field "text"'),
        ({"text": "x", "beams": 2}, 400, 'unknown field "beams"'),
        ({"text": 3}, 400, '"text" must be a string or a list of strings, got 3'),
        ({"text": ["a", 3]}, 400, '"text" must be a string'),
        ({"text": []}, 400, "empty list"),
        ({"text": ["a", "b", "c", "d"]}, 400, "4 lines in one request; at most 3"),
        ({"text": "a\nb"}, 400, "line 1 holds a line break"),
        ({"text": ["a", "x" * 301]}, 400, "line 2 has 301 characters; at most 300"),
        ({"text": "a", "beam": 0}, 400, '"beam" must be an integer from 1 to 16'),
        ({"text": "a", "beam": True}, 400, '"beam" must be an integer'),
        ({"text": "a", "beam": 17}, 400, '"beam" 17: at most 16'),
        ({"text": "a", "beam": 2, "nbest": 3}, 400, '"nbest" 3 needs a beam at least as large'),
        ({"text": "a", "attention": "yes"}, 400, '"attention" must be true or false'),
        ({"text": "a", "layer": 1}, 400, 'add "attention": true'),
        ({"text": "a", "attention": True, "layer": 2}, 400, "has 1 layer(s)"),
        ({"text": "a", "attention": True, "head": 3}, 400, "has 2 head(s)"),
        ({"text": "a", "model": "nope"}, 404, 'no model "nope"'),
        ([1, 2], 400, 'expected a JSON object with "text"'),
    ],
)
def test_bad_requests_get_a_4xx_and_one_line_saying_why(client, body, status, says):
    got, answer = _post(client, body)
    assert got == status and list(answer) == ["error"]
    assert says in answer["error"] and "\n" not in answer["error"]


def test_bodies_that_are_not_json_or_too_large(client):
    response = client.post("/translate", content=b"{not json")
    assert response.status_code == 400 and "body is not JSON" in response.json()["error"]
    response = client.post("/translate", content=b'{"text": "\xff"}')
    assert response.status_code == 400 and "not UTF-8" in response.json()["error"]
    response = client.post("/translate", json={"text": "x" * 2100})
    assert response.status_code == 413 and "at most 2,000" in response.json()["error"]
    # curl -d sends form-urlencoded: the body is read as JSON all the same
    response = client.post(
        "/translate",
        content=b'{"text": "A cat."}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


def test_unknown_paths_and_methods_are_json_errors(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json() == {"error": "no such path: /nope"}
    response = client.get("/translate")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "GET is not allowed on /translate; it takes POST"}
    assert client.delete("/").status_code == 405


def test_models_health_page_and_docs(client, runs):
    listing = client.get("/models").json()
    assert listing["default"] == "transformer"
    by_name = {model["name"]: model for model in listing["models"]}
    assert list(by_name) == ["transformer", "rnn", "plain"]
    assert by_name["transformer"]["attention"] == {"layers": 1, "heads": 2}
    assert by_name["rnn"]["attention"] == {"layers": 1, "heads": 1}
    assert by_name["plain"]["attention"] is None
    assert by_name["transformer"]["run"] == str(runs["transformer"])
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_lines"] == 3 and health["max_beam"] == 16
    assert health["models"] == ["transformer", "rnn", "plain"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/translate" in page.text and 'id="heatmap"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    schema = client.get("/openapi.json").json()
    assert {"/translate", "/models", "/health"} <= set(schema["paths"])
    assert "TranslateRequest" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_model_names_are_folder_names_told_apart_by_parents(tmp_path):
    a, b, c = tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z" / "other"
    assert model_names([a, b, c]) == ["x/run", "y/run", "other"]
    with pytest.raises(UserError, match="given twice"):
        model_names([a, tmp_path / "x" / ".." / "x" / "run"])


def test_the_model_field_chooses_the_model(client, service):
    translator = service.models["rnn"].translator
    expected = translator.translate([SENTENCES[1]], translator.options.replace(beam=2))[0][0]
    status, answer = _post(client, {"text": SENTENCES[1], "model": "rnn", "beam": 2})
    assert status == 200 and answer["model"] == "rnn" and answer["translations"] == expected.text


# Attention ------------------------------------------------------------------------------------


def _assert_close(rows: list[list[float]], expected) -> None:
    """The API's weights (rounded to 4 decimals) against the model's (T, S)."""
    import torch

    torch.testing.assert_close(torch.tensor(rows), expected, atol=1e-4, rtol=0, check_dtype=False)


@pytest.mark.parametrize("model", ["transformer", "rnn"])
def test_attention_is_the_models_teacher_forced_cross_attention(client, service, model):
    from attnkit.generation.attention import teacher_forced_attention

    text = SENTENCES[2]
    status, answer = _post(client, {"text": [text], "model": model, "attention": True, "beam": 2})
    assert status == 200
    map_ = answer["attention"][0]
    translator = service.models[model].translator
    src_ids = translator.tokenizers.src.encode([text])[0]
    tokens = translator.tokenizers.tgt.ids(map_["output"][:-1])  # the best hypothesis
    assert translator.tokenizers.tgt.decode([tokens]) == [answer["translations"][0]]
    assert map_["source"] == [*translator.tokenizers.src.id_pieces(src_ids), "</s>"]
    assert len(map_["output"]) == len(map_["weights"]) and map_["output"][-1] == "</s>"
    assert all(len(row) == len(map_["source"]) for row in map_["weights"])
    assert all(sum(row) == pytest.approx(1, abs=1e-3) for row in map_["weights"])
    shape = service.models[model].attention
    assert (map_["layers"], map_["heads"], map_["layer"], map_["head"]) == (
        shape.layers,
        shape.heads,
        shape.layers,  # default: the last layer...
        None,  # ... averaged over heads
    )
    expected = teacher_forced_attention(translator.model, src_ids, tokens, translator.device)
    _assert_close(map_["weights"], expected[-1].mean(0))


def test_attention_of_one_head_and_of_each_line(client, service):
    from attnkit.generation.attention import teacher_forced_attention

    lines = [SENTENCES[0], "", SENTENCES[1]]
    status, answer = _post(client, {"text": lines, "attention": True, "head": 2, "layer": 1})
    assert status == 200
    first, empty, last = answer["attention"]
    assert empty is None and first["head"] == 2 and first["layer"] == 1
    translator = service.models["transformer"].translator
    src_ids = translator.tokenizers.src.encode([lines[2]])[0]
    tokens = translator.tokenizers.tgt.ids(last["output"][:-1])
    weights = teacher_forced_attention(translator.model, src_ids, tokens, translator.device)
    _assert_close(last["weights"], weights[0, 1])


def test_a_model_without_attention_says_so(client):
    status, answer = _post(client, {"text": "A cat.", "model": "plain", "attention": True})
    assert status == 400 and 'model "plain" has no attention' in answer["error"]
    assert _post(client, {"text": "A cat.", "model": "plain"})[0] == 200


# The batcher ----------------------------------------------------------------------------------


class FakeDecoder:
    """Records each batch (key, payloads) and answers each payload with itself upper-cased."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[tuple[object, list[str]]] = []
        self.started: list[float] = []  # time.monotonic() at each batch's start
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, key, payloads):
        self.batches.append((key, list(payloads)))
        self.started.append(time.monotonic())
        time.sleep(self.delay)
        if self.fail_on in payloads:
            raise RuntimeError("boom")
        return [payload.upper() for payload in payloads]


def _batcher(decoder, **options):
    settings = {"max_tokens": 100, "max_wait_s": 0.05, "max_pending": 50, **options}
    batcher = Batcher(decoder, **settings)
    batcher.start()
    return batcher


def _run(coroutine):
    return asyncio.run(coroutine)


def test_requests_arriving_together_share_a_batch_within_the_budget():
    decoder = FakeDecoder(delay=0.05)
    batcher = _batcher(decoder)

    async def main():
        first = asyncio.ensure_future(batcher.submit("k", [("first", 10)]))
        await asyncio.sleep(0.02)  # a lone request goes at once; these queue while it decodes
        return await asyncio.gather(
            first,
            batcher.submit("k", [("a", 10), ("b", 10)]),
            batcher.submit("k", [("c", 10)]),
            batcher.submit("other", [("d", 10)]),  # another search: another batch
        )

    try:
        assert _run(main()) == [["FIRST"], ["A", "B"], ["C"], ["D"]]
    finally:
        batcher.close()
    assert [sorted(p) for _, p in decoder.batches] == [["first"], ["a", "b", "c"], ["d"]]
    assert batcher.stats.batches == 3 and batcher.stats.sentences == 5


def test_a_batch_waits_for_the_requests_its_last_batch_answered():
    decoder = FakeDecoder(delay=0.05)
    batcher = _batcher(decoder, max_wait_s=1.0)

    async def main():
        await asyncio.sleep(0)
        busy = asyncio.ensure_future(batcher.submit("k", [("busy", 1)]))
        await asyncio.sleep(0.02)
        await asyncio.gather(batcher.submit("k", [("a", 1)]), batcher.submit("k", [("b", 1)]))
        await busy
        # The last batch answered two requests: one alone waits (here 0.1 s) for a second.
        started = time.monotonic()
        second = asyncio.ensure_future(batcher.submit("k", [("d", 1)]))
        await asyncio.sleep(0.1)
        await asyncio.gather(batcher.submit("k", [("c", 1)]), second)
        return time.monotonic() - started

    try:
        took = _run(main())
    finally:
        batcher.close()
    assert [sorted(p) for _, p in decoder.batches] == [["busy"], ["a", "b"], ["c", "d"]]
    assert took < 0.5  # far less than max_wait_s: it went as soon as its company came


def test_the_budget_splits_a_request_and_an_oversize_sentence_goes_alone():
    decoder = FakeDecoder()
    batcher = _batcher(decoder, max_tokens=40)

    async def main():
        return await batcher.submit("k", [("a", 10), ("b", 10), ("c", 10), ("d", 10), ("e", 90)])

    try:
        assert _run(main()) == ["A", "B", "C", "D", "E"]
    finally:
        batcher.close()
    sizes = sorted(len(p) for _, p in decoder.batches)
    assert sizes == [1, 4]  # 4 x 10 fits 40; the 90-token one alone
    for _, payloads in decoder.batches:
        assert len(payloads) == 1 or len(payloads) * 10 <= 40


def test_a_long_request_does_not_hold_up_a_short_one_behind_it():
    decoder = FakeDecoder(delay=0.05)
    batcher = _batcher(decoder, max_tokens=40, max_wait_s=0.01)
    arrived = []

    async def main():
        long = asyncio.ensure_future(batcher.submit("k", [(f"l{i}", 20) for i in range(8)]))
        await asyncio.sleep(0.02)  # the long request's first batch is being decoded
        arrived.append(time.monotonic())
        short = await batcher.submit("k", [("s", 5)])
        return short, await long

    try:
        short, long = _run(main())
    finally:
        batcher.close()
    assert short == ["S"] and long == [f"L{i}" for i in range(8)]
    in_batch = next(i for i, (_, payloads) in enumerate(decoder.batches) if "s" in payloads)
    # Of the batches that started after the short request came, at most one went before it,
    # and the long request still had batches to go after it: it did not wait for them all.
    ahead = [t for t in decoder.started[:in_batch] if t > arrived[0]]
    assert len(ahead) <= 1 and in_batch < len(decoder.batches) - 1


def test_a_failed_batch_fails_its_requests_and_the_worker_goes_on(capfd):
    decoder = FakeDecoder(fail_on="bad")
    batcher = _batcher(decoder, max_wait_s=0.0)

    async def main():
        with pytest.raises(DecodeFailed):
            await batcher.submit("k", [("bad", 1)])
        return await batcher.submit("k", [("good", 1)])

    try:
        assert _run(main()) == ["GOOD"]
    finally:
        batcher.close()
    assert capfd.readouterr().err.count("RuntimeError: boom") == 1


def test_a_cancelled_request_leaves_the_queue_and_a_full_queue_refuses():
    decoder = FakeDecoder(delay=0.1)
    batcher = _batcher(decoder, max_wait_s=0.0, max_pending=3)

    async def main():
        first = asyncio.ensure_future(batcher.submit("k", [("busy", 1)]))
        await asyncio.sleep(0.03)  # the worker is decoding "busy" now
        gone = asyncio.ensure_future(batcher.submit("k", [("gone", 1)]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="at most 3"):
            await batcher.submit("k", [("x", 1), ("y", 1), ("z", 1)])
        gone.cancel()
        return await first

    try:
        assert _run(main()) == ["BUSY"]
        time.sleep(0.15)
    finally:
        batcher.close()
    assert all("gone" not in payloads for _, payloads in decoder.batches)


def test_the_model_thread_runs_calls_in_order_and_hands_back_errors():
    thread = ModelThread()
    try:
        seen = []
        first = thread.submit(lambda: seen.append(threading.current_thread().name) or 1)
        assert thread.call(lambda x: x + 1, 2) == 3 and first.result() == 1
        assert seen == ["attnkit-model"]
        with pytest.raises(ZeroDivisionError):
            thread.call(lambda: 1 / 0)
    finally:
        thread.close()


def test_a_sentence_decodes_the_same_alone_and_in_a_batch(service):
    from attnkit.serving.service import SearchKey, Sentence

    translator = service.models["transformer"].translator
    lines = [*SENTENCES, "A dog runs.", "The man and the woman see a cat in the small house."]
    sentences = [
        Sentence(line, tuple(translator.tokenizers.src.encode([line])[0])) for line in lines
    ]
    for beam in (1, 3):
        key = SearchKey("transformer", beam, 1)
        together = service.decode(key, sentences)
        for sentence, batched in zip(sentences, together, strict=True):
            alone = service.decode(key, [sentence])[0]
            assert alone.hypotheses[0].text == batched.hypotheses[0].text
            assert alone.hypotheses[0].score == pytest.approx(batched.hypotheses[0].score, abs=1e-5)


# A real server: concurrency and HTTP faults -----------------------------------------------------


def _request(server, method, path, body=None):
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=60)
    connection.request(method, path, body=json.dumps(body) if body is not None else None)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def _raw(server, data: bytes, *, close_after_send=False, wait=10.0) -> tuple[bytes, float]:
    """Send raw bytes; what comes back until the server closes (or `wait` passes), and when."""
    started = time.perf_counter()
    with socket.create_connection(server.address, timeout=wait) as sock:
        sock.sendall(data)
        if close_after_send:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received, time.perf_counter() - started


def _wait_for(condition, seconds=2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_it_listens_on_localhost_by_default(server):
    assert server.address[0] == "127.0.0.1"


def test_concurrent_clients_are_batched_and_answered_as_alone(server, monkeypatch):
    lines = [*SENTENCES, "A dog runs.", "The small cat sees the man.", "A woman reads a book."]
    alone = [_request(server, "POST", "/translate", {"text": line})[1] for line in lines]
    real = server.service.batcher.decode

    def slow(key, sentences):  # the first request's batch decodes while the others queue
        time.sleep(0.3)
        return real(key, sentences)

    monkeypatch.setattr(server.service.batcher, "decode", slow)
    before = _request(server, "GET", "/health")[1]
    answers: dict[int, dict] = {}

    def client(i: int) -> None:
        answers[i] = _request(server, "POST", "/translate", {"text": lines[i]})[1]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(lines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = _request(server, "GET", "/health")[1]
    assert [answers[i]["translations"] for i in range(len(lines))] == [
        a["translations"] for a in alone
    ]
    assert [answers[i]["scores"] for i in range(len(lines))] == pytest.approx(
        [a["scores"] for a in alone], abs=1e-5
    )
    batches, sentences = (
        after["batches"] - before["batches"],
        after["sentences"] - before["sentences"],
    )
    assert sentences == len(lines) and batches < sentences  # some shared a batch


def test_one_log_line_per_request(server):
    _request(server, "GET", "/logged")
    _request(server, "PUT", "/logged")
    _wait_for(lambda: sum("/logged" in line for line in server.lines) >= 2)  # after the answer
    time.sleep(0.1)
    get, put = [line for line in server.lines if "/logged" in line]
    assert get.startswith("127.0.0.1 GET /logged 404 ") and get.endswith(" s")
    assert put.startswith("127.0.0.1 PUT /logged 404 ")
    assert re.fullmatch(r"127\.0\.0\.1 GET /logged 404 \d+\.\d{3} s", get)
    _request(server, "POST", "/translate", {"text": "A cat."})
    _wait_for(lambda: server.lines[-1].startswith("127.0.0.1 POST /translate "))
    assert server.lines[-1].startswith("127.0.0.1 POST /translate 200 ")


def test_unsupported_methods_and_malformed_requests_get_json(server):
    received, _ = _raw(server, b"PATCH /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and json.loads(body)["error"].startswith(
        "PATCH is not"
    )
    received, _ = _raw(server, b"NOT HTTP AT ALL\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body) == {
        "error": "malformed HTTP request"
    }


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    # Only the headers are sent: the answer must come without the body.
    received, took = _raw(
        server, b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    )
    assert received.startswith(b"HTTP/1.1 413 ") and took < 5
    assert b"request of 100,000 bytes; at most 2,000" in received
    chunked = b"".join(b"3e8\r\n" + b" " * 1000 + b"\r\n" for _ in range(3))  # no Content-Length
    received, _ = _raw(
        server,
        b"POST /translate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
    )
    assert received.startswith(b"HTTP/1.1 413 ") and b"more than 2,000 bytes" in received


def test_a_short_body_gets_408_quickly_or_ends_quietly(server, capfd):
    short = b'POST /translate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"text": "A'
    received, took = _raw(server, short)  # the client waits for an answer
    assert received.startswith(b"HTTP/1.1 408 ") and 0.4 < took < 5
    assert b"shorter than its Content-Length" in received and b"connection: close" in received
    received, took = _raw(server, short, close_after_send=True)  # the client gives up
    assert received == b"" and took < 5
    assert _request(server, "POST", "/translate", {"text": "A cat."})[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err


def test_a_client_that_leaves_mid_request_is_dropped_quietly(server, monkeypatch, capfd):
    decoded: list[str] = []
    threads: list[str] = []
    real = server.service.batcher.decode

    def slow(key, sentences):
        decoded.extend(sentence.text for sentence in sentences)
        threads.append(threading.current_thread().name)
        time.sleep(0.4)
        return real(key, sentences)

    monkeypatch.setattr(server.service.batcher, "decode", slow)
    server.lines.clear()
    body = json.dumps({"text": "The first sentence."}).encode()
    request = b"POST /translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    request += b"Content-Length: %d\r\n\r\n" % len(body)
    busy = threading.Thread(target=_raw, args=(server, request + body))
    busy.start()  # keeps the worker decoding for 0.4 s
    time.sleep(0.1)
    left = json.dumps({"text": "Nobody reads this one."}).encode()
    with socket.create_connection(server.address) as sock:  # queued behind it, then gone
        sock.sendall(
            b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(left) + left
        )
        time.sleep(0.1)
    busy.join()
    _wait_for(lambda: any(" gone " in line for line in server.lines))
    assert "Nobody reads this one." not in decoded  # it left the queue with its client
    assert set(threads) == {"attnkit-model"}  # the one thread that runs the model
    assert any(line.startswith("127.0.0.1 POST /translate gone ") for line in server.lines)
    monkeypatch.undo()
    assert _request(server, "POST", "/translate", {"text": "A cat."})[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err


def test_a_failure_inside_the_model_is_a_500_and_the_server_goes_on(server, monkeypatch, capfd):
    translator = server.service.models["transformer"].translator

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(translator, "translate", broken)
    status, answer = _request(server, "POST", "/translate", {"text": "A cat."})
    assert status == 500 and answer == {"error": "internal error"}
    assert capfd.readouterr().err.count("RuntimeError: boom") == 1
    monkeypatch.undo()
    assert _request(server, "POST", "/translate", {"text": "A cat."})[0] == 200


def test_a_port_in_use_is_a_user_error(server, runs):
    with pytest.raises(UserError, match="cannot listen"):
        make_server([runs["transformer"]], port=server.address[1])


def test_serve_command_errors_are_one_line(cli, tmp_path, runs):
    run, port = str(runs["transformer"]), ("--port", "0")
    assert_one_line_error(cli("serve", str(tmp_path / "missing"), *port), "missing")
    assert_one_line_error(cli("serve", run, "--max-lines", "0", *port), "--max-lines")
    assert_one_line_error(cli("serve", run, "--precision", "fp8", *port), "--precision")


def test_the_precision_option_reaches_every_served_model(runs):
    models = load_models([runs["transformer"], runs["rnn"]], checkpoint="best", device="cpu",
                         precision="bf16")  # fmt: skip
    assert [m.translator.config.decode.precision for m in models] == ["bf16", "bf16"]


# Random requests (issue 18's fuzz suite, for the HTTP API) ----------------------------------------

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
FIELDS = ["text", "model", "beam", "nbest", "attention", "layer", "head", "other"]
REQUEST = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUE, max_size=6),
    st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=60), st.lists(st.text(max_size=30), max_size=5))},
        optional={name: JSON_VALUE for name in FIELDS[1:]},
    ),
    JSON_VALUE,
)


def _assert_answer_or_json_error(response) -> None:
    """Any request gets an answer, or a JSON error of one line with a 4xx status: never 500
    (a 500 is a failure inside the model, and none of these requests should cause one)."""
    answer = response.json()
    if response.status_code == 200:
        assert "translations" in answer
        return
    assert 400 <= response.status_code < 500, (response.status_code, answer)
    assert set(answer) == {"error"} and "\n" not in answer["error"], answer


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=REQUEST)
def test_any_json_request_gets_an_answer_or_a_json_error(client, body):
    _assert_answer_or_json_error(client.post("/translate", json=body))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=3000),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded; charset=utf-16", "\x00"]),
    path=st.sampled_from(["/translate", "/", "/models", "/health", "/x", "/translate/"]),
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
)  # fmt: skip
def test_any_bytes_any_method_any_path(client, body, content_type, path, method):
    response = client.request(method, path, content=body, headers={"content-type": content_type})
    if response.status_code == 200:
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    answer = response.json()
    assert set(answer) == {"error"} and "\n" not in answer["error"]


@pytest.mark.slow
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.one_of(st.integers(-5, 5000), st.sampled_from(["abc", "", "1e3", "99999999999"])),
    body=st.binary(max_size=200),
    extra=st.sampled_from(["", "Transfer-Encoding: chunked\r\n", "Expect: 100-continue\r\n",
                           "Content-Type: \xff\r\n".encode("latin-1").decode("latin-1")]),
)  # fmt: skip
def test_real_server_survives_any_content_length(server, length, body, extra):
    """Headers that lie about the body: the server answers (a status line) or closes, within
    the body timeout, and goes on serving."""
    request = (f"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}"
               "Connection: close\r\n\r\n").encode("latin-1") + body  # fmt: skip
    received, seconds = _raw(server, request, close_after_send=True, wait=5.0)
    assert seconds < 5.0, "no request may hang past the body timeout"
    if received:
        assert received.startswith(b"HTTP/1.1 "), received[:100]
        status = int(received.split(b" ")[1])
        assert status < 500 or status == 503, received[:300]
    status, _ = _request(server, "GET", "/health")
    assert status == 200
