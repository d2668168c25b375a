"""User-facing errors: a mistake in the config or the inputs, reported without a traceback."""


class ConfigError(ValueError):
    """A user input is invalid. The message names the offending field, e.g. `config.model.name`."""


class NonFiniteError(ConfigError):
    """Training produced a non-finite loss or gradient (exit 2 from jkd.main: a setting to change,
    e.g. a lower learning rate); the message names the step and the metric."""
