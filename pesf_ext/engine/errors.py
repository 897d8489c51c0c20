"""Errors that stop a run before training, each naming the YAML key or file at fault."""


class ConfigError(ValueError):
    """A YAML problem found before any data is loaded or step taken; the message starts with the YAML key."""
