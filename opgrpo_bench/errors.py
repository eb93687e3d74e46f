"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input or environment; ``str(err)`` is the whole message."""


class MissingWeightsError(UserError, RuntimeError):
    """Real weights or files are absent; the message names what is missing and how to provide it."""


class RunInterrupted(Exception):
    """Ctrl-C (SIGINT) during a run; ``step`` is the last optimizer step whose records were written.

    Not a :class:`UserError`: the CLI reports it as "interrupted at step N; run the same command again to
    resume" and exits with code 130.
    """

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}; run the same command again to resume")
        self.step = step

    def __reduce__(self):  # survives pickling between worker processes
        return (type(self), (self.step,))
