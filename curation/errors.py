"""The error users see: something they can correct (a bad path, config or seed location).

It lives on the bottom floor so that every layer raises the same class without importing the
scheduling layer above it; the CLI (`pipelines.cli`) prints it as one line, never a traceback.
"""


class UserError(Exception):
    """A bad path, a bad config, a missing seed location: something the user can correct."""
