"""The one error type for a user's mistakes."""


class UserError(Exception):
    """A mistake the user can fix (bad input, bad option); the CLI prints it as one line."""


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving a resumable checkpoint."""
