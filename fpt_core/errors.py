"""The errors a user can fix, each with a one-line message that names the key, file or value.

The command line prints them as `error: <message>` with exit status 2, and the pipeline turns
them into a WorkflowError before any job starts. They live here, apart from the modules that
raise them, so that any module can raise one without importing another.
"""


class ConfigError(ValueError):
    """A bad key or value; its message is one line that names the key and the allowed values."""


class DataError(RuntimeError):
    """Data files are missing or malformed; the message says which files to put where."""


class ResultError(RuntimeError):
    """A results file that is missing columns, unreadable or truncated."""
