"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input or environment; ``str(err)`` is the whole message."""


class MissingWeightsError(UserError, RuntimeError):
    """Real weights or files are absent; the message names what is missing and how to provide it."""
