"""The one error a checkpoint load or save raises on bad files or arguments."""
from ..formats.errors import FormatError


class CheckpointError(FormatError):
    """A checkpoint is malformed, incomplete or unsupported; the message names the file or tensor."""
