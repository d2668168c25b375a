"""Export failures that are not config mistakes: the artifact would be wrong, so none is written.

`jkd.errors.ConfigError` (bad flag or workdir) exits with status 2; these exit with status 1.
"""


class ExportError(RuntimeError):
    """An export step failed; the message says which and why."""


class ParityError(ExportError):
    """onnxruntime (or TensorRT) and JAX disagree beyond the tolerance on the same inputs."""


class TensorRTCompatError(ExportError):
    """The ONNX graph uses an op or opset that TensorRT 10's ONNX parser would reject."""


class TensorRTError(ExportError):
    """TensorRT's parser or builder failed; the message carries its errors verbatim."""


class QuantizationError(ExportError):
    """The INT8 model loses more accuracy than allowed vs JAX (or computes non-finite logits)."""
