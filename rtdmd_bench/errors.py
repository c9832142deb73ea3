"""User-facing errors: anything the user can fix (bad name, bad --set, missing weights or
files). The CLI prints the message alone (no traceback) and exits with status 2."""


class UserError(Exception):
    """A problem the user can fix; the message must say what to change."""


class NonFiniteLoss(UserError):
    """A loss term became NaN/Inf; the run stops, keeping its last good checkpoint."""
