"""User-facing errors: a mistake in the config or the inputs, reported without a traceback."""


class ConfigError(ValueError):
    """A user input is invalid. The message names the offending field, e.g. `config.model.name`."""
