"""The errors a user can act on. Programs catch `MarjaxError` and exit with its message; any
other exception is a bug and keeps its traceback."""


class MarjaxError(Exception):
    """Base class: the message says what is wrong and what would work."""


class ConfigError(MarjaxError, ValueError):
    """A config that cannot run; the message names the field and what would work."""


class DataError(MarjaxError, ValueError):
    """Training data that is missing or unusable; the message says what to provide."""


class ConversionError(MarjaxError, ValueError):
    """A weight file that cannot be converted; the message names the file or the keys."""


class IncompatibleCheckpointError(MarjaxError, ValueError):
    """The workdir holds a checkpoint of a model this config does not build."""


class TrainingDiverged(MarjaxError, FloatingPointError):
    """The loss or the state became NaN or Inf; the message names the step and the last good checkpoint."""


class DamagedCheckpoint(MarjaxError, OSError):
    """A checkpoint's files are missing, truncated or unreadable; the message names the step and the file."""


class WorkdirInUse(MarjaxError, RuntimeError):
    """Another training holds the workdir; the message names the process."""


class DegenerateSamples(MarjaxError, ValueError):
    """Generated images that carry nothing (all one flat colour); the message names the checkpoint."""
