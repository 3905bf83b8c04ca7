"""The one exception type for mistakes a user can fix: the CLI prints its message on one line, exit 2."""


class UserError(Exception):
    """A bad config value, unknown name, bad layer spec or missing file: what was wrong, what is valid."""
