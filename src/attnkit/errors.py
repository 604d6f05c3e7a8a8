"""The one exception type for mistakes a user can make (bad files, bad config, bad checkpoints).

The command line catches it and prints its message as one line on stderr with a non-zero exit;
anything else that escapes is a bug in attnkit and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, described in one line that names the file or key."""
