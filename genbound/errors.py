"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero."""


class GenboundError(Exception):
    """A user mistake or an unusable input (bad flag, missing file, wrong shape)."""


class DataError(GenboundError):
    """A data set is missing, malformed or too small."""


class MethodError(GenboundError):
    """Unknown method, impossible rank or chain length."""


class CheckpointError(GenboundError):
    """A checkpoint directory is missing, corrupt or belongs to another base model."""


class TrainingError(GenboundError):
    """Training cannot go on (NaN loss, a checkpoint already in the way)."""


class Interrupted(TrainingError):
    """Ctrl-C during training: the resume state was saved (the command exits 130)."""


class NonFinite(TrainingError):
    """The loss, a weight or a final metric became inf or nan: nothing is saved as a checkpoint."""
