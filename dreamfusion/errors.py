"""Errors a user can cause. Stages turn them into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from a user: a config value, a missing or corrupt file, an unreachable service."""


class ConfigError(UserError):
    """A config key or value that cannot be used; the message names the key and the value."""


class RunFailed(UserError):
    """A run that cannot go on (training diverged); reported like a user error, in one line, and
    not worth retrying with the same inputs."""
