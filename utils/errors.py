"""The one exception type for mistakes a user can make; ``utils.args.cli`` prints it as one ``error:`` line (exit 2)."""


class UserError(Exception):
    """A problem the user can fix (bad flags, missing or corrupt files); its message is one actionable line."""
