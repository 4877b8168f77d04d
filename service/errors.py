"""Domain errors with their stable codes, and the problem+json document they render as."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error the API answers with a stable `code` (RFC 9457 problem document)."""

    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra or {}


class Unauthorized(ServiceError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class MalformedJson(ServiceError):
    status, code, title = 400, "malformed_json", "Malformed JSON"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class RequestTimeout(ServiceError):
    status, code, title = 408, "request_timeout", "Request timeout"


class MethodNotAllowed(ServiceError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class MaxChecksReached(ServiceError):
    status, code, title = 409, "max_checks_reached", "Too many wrong codes"


class IdempotencyInProgress(ServiceError):
    status, code, title = 409, "idempotency_in_progress", "Idempotent request in progress"


class IdempotencyKeyReused(ServiceError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency-Key reused"


class ChannelHasNoCode(ServiceError):
    status, code, title = 409, "channel_has_no_code", "The channel has no code"


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class InvalidRequest(ServiceError):
    status, code, title = 422, "invalid_request", "Invalid request"


class InvalidPhone(ServiceError):
    status, code, title = 422, "invalid_phone", "Invalid phone number"


class CountryNotAllowed(ServiceError):
    status, code, title = 422, "country_not_allowed", "Country not allowed"


class NumberNotAllowed(ServiceError):
    status, code, title = 422, "number_not_allowed", "Number not allowed"


class ChannelNotAllowed(ServiceError):
    status, code, title = 422, "channel_not_allowed", "Channel not allowed"


class NumberUnreachable(ServiceError):
    status, code, title = 422, "number_unreachable", "Number unreachable"
    not_placed = True  # New-Tel refused the number: nothing rang


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Rate limited"

    def __init__(self, detail: str, *, retry_after: int, limit: str = "other") -> None:
        super().__init__(detail, retry_after=retry_after)
        self.limit = limit  # which limit refused: for metrics, not for the body


class ProviderError(ServiceError):
    """New-Tel answered with an error. `not_placed` is True only when the call certainly did
    not happen (a 4xx or a method error); an unusable 200 answer may still have rung."""

    status, code, title = 502, "provider_error", "Telephony provider error"
    not_placed = False


class ProviderUnavailable(ServiceError):
    """New-Tel was not reached or did not answer. `not_placed` is True only when the request
    never left (circuit open, connection refused); after a timeout or a 5xx it may have rung."""

    status, code, title = 503, "provider_unavailable", "Telephony provider unavailable"
    not_placed = False


class StoreUnavailable(ServiceError):
    status, code, title = 503, "store_unavailable", "Store unavailable"


def problem(
    status: int, code: str, title: str, detail: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem document with the contract's stable `code`."""
    return {
        "type": f"https://callauth.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
