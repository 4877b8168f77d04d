"""Domain errors with their stable codes, and the problem+json document they render as."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error the API answers with a stable `code` (RFC 9457 problem document)."""

    status = 500
    code = "internal_error"
    title = "Internal error"
    # What the code means and what a caller does about it: the page at /problems/<code>.
    meaning = "An unexpected error inside the service; it was logged with the request id."
    advice = "Retry later; if it persists, give the operator the X-Request-ID of the answer."

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
    meaning = "The Authorization header is missing, or its bearer key is not a key of any client."
    advice = "Send `Authorization: Bearer <your key>`; ask the operator for a key."


class MalformedJson(ServiceError):
    status, code, title = 400, "malformed_json", "Malformed JSON"
    meaning = "The body is not a JSON object, or an object repeats a key."
    advice = "Send one JSON object, each key once."


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"
    meaning = (
        "No such route, or no verification with this id (or phone) for your client: "
        "unknown, expired and another client's look the same."
    )
    advice = "Start a new verification; check the id and the key you use."


class RequestTimeout(ServiceError):
    status, code, title = 408, "request_timeout", "Request timeout"
    meaning = "The request body did not arrive within the service's body timeout."
    advice = "Send the whole body at once; retry."


class MethodNotAllowed(ServiceError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"
    meaning = "The path exists but not with this HTTP method; the Allow header names those that do."
    advice = "Use a method from the Allow header."


class MaxChecksReached(ServiceError):
    status, code, title = 409, "max_checks_reached", "Too many wrong codes"
    meaning = (
        "The wrong codes allowed for this verification, or for this phone across "
        "verifications, are used up: even the right code no longer works."
    )
    advice = "Start a new verification later (Retry-After of a start tells when)."


class IdempotencyInProgress(ServiceError):
    status, code, title = 409, "idempotency_in_progress", "Idempotent request in progress"
    meaning = "The first request with this Idempotency-Key is still running."
    advice = "Retry after Retry-After (1 s): the first request's answer comes back."


class IdempotencyKeyReused(ServiceError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency-Key reused"
    meaning = "This Idempotency-Key was used before with another phone, channel or ip."
    advice = "Use a new key for a new request."


class ChannelHasNoCode(ServiceError):
    status, code, title = 409, "channel_has_no_code", "The channel has no code"
    meaning = (
        "The latest call of this verification is an inbound call: the user calls, "
        "there is no code to check."
    )
    advice = (
        "Wait for the approval (GET the verification, or a webhook), or resend on a code channel."
    )


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload too large"
    meaning = "The body is larger than 4 KiB."
    advice = "Send a smaller body."


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"
    meaning = "The body's Content-Type is not application/json."
    advice = "Send `Content-Type: application/json`."


class InvalidRequest(ServiceError):
    status, code, title = 422, "invalid_request", "Invalid request"
    meaning = "The body or a parameter does not match the schema; `errors` lists the fields."
    advice = "Fix the fields named in `errors`."


class InvalidPhone(ServiceError):
    status, code, title = 422, "invalid_phone", "Invalid phone number"
    meaning = "The phone is not a valid number."
    advice = "Ask the user for the number again (international form, e.g. +7 903 567-51-24)."


class CountryNotAllowed(ServiceError):
    status, code, title = 422, "country_not_allowed", "Country not allowed"
    meaning = "The phone belongs to a country this service does not call."
    advice = "Tell the user this country is not served."


class NumberNotAllowed(ServiceError):
    status, code, title = 422, "number_not_allowed", "Number not allowed"
    meaning = "The number's type (premium rate, toll free, ...) or prefix is never called."
    advice = "Ask the user for a mobile number."


class ChannelNotAllowed(ServiceError):
    status, code, title = 422, "channel_not_allowed", "Channel not allowed"
    meaning = "Your client may not use this channel."
    advice = "Use another channel, or ask the operator to allow it."


class NumberUnreachable(ServiceError):
    status, code, title = 422, "number_unreachable", "Number unreachable"
    meaning = "New-Tel says the number is not valid: nothing rang."
    advice = "Ask the user to check the number."
    not_placed = True  # New-Tel refused the number: nothing rang


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Rate limited"
    meaning = "A limit is used up (phone, IP, client, cooldown or sends per verification)."
    advice = "Retry after the Retry-After header's seconds."

    def __init__(self, detail: str, *, retry_after: int, limit: str = "other") -> None:
        super().__init__(detail, retry_after=retry_after)
        self.limit = limit  # which limit refused: for metrics, not for the body


class ProviderError(ServiceError):
    """New-Tel answered with an error. `not_placed` is True only when the call certainly did
    not happen (a 4xx or a method error); an unusable 200 answer may still have rung."""

    status, code, title = 502, "provider_error", "Telephony provider error"
    meaning = "New-Tel answered with an error."
    advice = "Retry later; the call may or may not have rung."
    not_placed = False


class ProviderUnavailable(ServiceError):
    """New-Tel was not reached or did not answer. `not_placed` is True only when the request
    never left (circuit open, connection refused); after a timeout or a 5xx it may have rung."""

    status, code, title = 503, "provider_unavailable", "Telephony provider unavailable"
    meaning = "New-Tel was not reached, did not answer in time, or its circuit is open."
    advice = "Retry after the Retry-After header's seconds."
    not_placed = False


class StoreUnavailable(ServiceError):
    status, code, title = 503, "store_unavailable", "Store unavailable"
    meaning = "The service's store (Redis) is unreachable or too slow."
    advice = "Retry after the Retry-After header's seconds."


def type_uri(code: str) -> str:
    """A problem's `type`: the page this service serves for its code. Relative (RFC 9457
    allows a URI reference, resolved against the request's URL), so one problem type has one
    identifier whatever host, proxy or CALLAUTH_PUBLIC_URL a deployment is reached through."""
    return f"/problems/{code}"


def problem(
    status: int, code: str, title: str, detail: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem document with the contract's stable `code`."""
    return {
        "type": type_uri(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
