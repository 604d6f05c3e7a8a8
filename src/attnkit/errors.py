"""The one exception type for mistakes a user can make (bad files, bad config, bad checkpoints).

The command line catches it and prints its message as one line on stderr with a non-zero exit;
anything else that escapes is a bug in attnkit and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, described in one line that names the file or key."""


class Stopped(Exception):
    """Work stopped on request (Ctrl-C, SIGTERM) after saving what resumes it: the message is
    one line for the user and `status` the exit status (128 + the signal's number)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
