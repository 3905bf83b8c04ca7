"""Every error type `dyn` raises on purpose; the CLI turns each into one line and an exit code."""


class UserError(Exception):
    """A bad config value, unknown name, bad layer spec or missing file: what was wrong, what is valid (exit 2)."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the last good state is kept (exit 3)."""
