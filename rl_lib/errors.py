"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (config, data file, command-line value). The message says what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or out of range."""
