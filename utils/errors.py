class UserError(Exception):
    """A problem the user can fix (bad flags, missing or corrupt files): one actionable line, which ``utils.args.cli``
    prints as ``error: ...`` (exit code 2)."""
