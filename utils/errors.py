"""The one exception type for mistakes a user can make (bad flags, missing or corrupt files).

Algorithm scripts catch it at top level and print a single ``error: ...`` line with a non-zero
exit code instead of a stack trace.
"""


class UserError(Exception):
    """A problem the user can fix; its message is one actionable line."""
