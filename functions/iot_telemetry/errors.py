"""Exceptions that map onto the Knative delivery rules (4xx: not retried, 5xx: retried)."""

from __future__ import annotations

from collections.abc import Sequence


class TelemetryError(Exception):
    """Base of every error this package raises on purpose."""

    status: int = 500
    reason: str = "internal"

    def payload(self) -> dict[str, object]:
        return {"error": self.reason, "message": str(self)}


class BadRequest(TelemetryError, ValueError):
    """The request or event is malformed: answered 400, dead-lettered, never retried."""

    status = 400
    reason = "invalid"

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("; ".join(self.problems))

    def payload(self) -> dict[str, object]:
        return {"error": self.reason, "message": str(self), "problems": list(self.problems)}


class Unauthorized(TelemetryError):
    status = 401
    reason = "unauthorized"


class Forbidden(TelemetryError):
    status = 403
    reason = "forbidden"


class TooManyRequests(TelemetryError):
    """A device sends faster than its rate limit: answered 429 with Retry-After."""

    status = 429
    reason = "rate_limited"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(TelemetryError, LookupError):
    status = 404
    reason = "not_found"


class MethodNotAllowed(TelemetryError):
    status = 405
    reason = "method_not_allowed"

    def __init__(self, message: str, allowed: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.allowed = tuple(allowed)


class Conflict(TelemetryError):
    status = 409
    reason = "conflict"


class PayloadTooLarge(TelemetryError, ValueError):
    status = 413
    reason = "too_large"


class UnsupportedMediaType(TelemetryError, ValueError):
    status = 415
    reason = "unsupported_media_type"


class DependencyUnavailable(TelemetryError):
    """Kafka or the store cannot be reached: answered 503 with Retry-After, retried."""

    status = 503
    reason = "unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
