"""The one error type the command line reports as `gradloop: error: ...` with exit code 2."""


class UsageError(Exception):
    """Bad input from the user (config, data, paths): one line that names the problem and the fix."""
