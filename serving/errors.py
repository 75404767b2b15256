"""Request failures with TF Serving's canonical status codes, shared by every front end.

Each front end maps ``ServingError.code`` to its own transport: gRPC status codes in
``serving.grpc_server``, HTTP statuses in ``serving.rest_api``.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request that cannot be served; ``code`` is a canonical status name such as ``"NOT_FOUND"``."""

    default_code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_string(self) -> str:
        """absl::Status::ToString(), which TF Serving embeds in some messages ("INVALID_ARGUMENT: ...")."""
        return f"{self.code}: {self.message}"


class NotFoundError(ServingError):
    default_code = "NOT_FOUND"


class InvalidArgumentError(ServingError):
    default_code = "INVALID_ARGUMENT"


class FailedPreconditionError(ServingError):
    default_code = "FAILED_PRECONDITION"


class UnavailableError(ServingError):
    default_code = "UNAVAILABLE"


class UnimplementedError(ServingError):
    default_code = "UNIMPLEMENTED"
