"""Model backends behind one interface: in-process SavedModel, or TF Serving over gRPC."""

from gateway.backends.base import (
    DecodeStepResult,
    ModelBackend,
    ModelInfo,
    ModelUnavailableError,
    ModelVersionGoneError,
)

__all__ = ["DecodeStepResult", "ModelBackend", "ModelInfo", "ModelUnavailableError", "ModelVersionGoneError"]
