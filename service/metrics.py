"""prometheus-client collectors, one registry per app. Labels never carry a phone, code or key."""

from __future__ import annotations

from typing import Any, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "NEWTEL_ERROR_REASONS",
    "STORE_ERROR_REASONS",
    "WEBHOOK_OUTCOMES",
    "Metrics",
    "NewTelReason",
    "StoreReason",
    "WebhookOutcome",
]

# callauth_newtel_errors_total's `reason`: a fixed set, never New-Tel's own text (that goes to
# the log, digits masked). The help text below spells each one out.
NewTelReason = Literal[
    "timeout",
    "connect_failed",
    "connection_lost",
    "http_429",
    "http_4xx",
    "http_5xx",
    "method_error",
    "bad_answer",
    "number_unreachable",
    "circuit_open",
    "budget",
    "other",
]
NEWTEL_ERROR_REASONS: tuple[NewTelReason, ...] = get_args(NewTelReason)

# callauth_store_errors_total's `reason`: what kind of failure, never Redis's own text.
StoreReason = Literal[
    "timeout",
    "connection",
    "script_error",
    "cluster_moved",
    "cluster_ask",
    "readonly",
    "loading",
    "other",
]
STORE_ERROR_REASONS: tuple[StoreReason, ...] = get_args(StoreReason)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# HTTP answers come in two kinds: those that only touch Redis (checks, status reads, refusals:
# a script or two, 1-10 ms here) and starts and resends, which wait for New-Tel (0.1-2 s
# usually, up to CALLAUTH_NEWTEL_TIMEOUT_S, 10 s by default). Bounds dense below 25 ms split the
# first kind, a p99 alert at 250 ms for it sits on a bound, and 2.5-10 s shows a New-Tel
# timeout; 13 bounds keep a route's series at 16.
# Webhook lag, an event to its delivery: tens of ms when the receiver answers at once, then the
# retry waits (5 s, 5 min, 30 min, ... 1 day) when it does not.
_LAG = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    60.0,
    300.0,
    1800.0,
    7200.0,
    86400.0,
)
WebhookOutcome = Literal["delivered", "retry", "dead", "gone", "refused"]
WEBHOOK_OUTCOMES: tuple[WebhookOutcome, ...] = get_args(WebhookOutcome)
_HTTP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every family the service exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # route: the route's template ("/v1/verifications/{id}") or "(unmatched)", never the
        # path; method: a standard one or "other". Both fixed sets, whatever clients send.
        self.http_requests = Counter(
            "callauth_http_requests_total",
            "HTTP answers by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "callauth_http_request_seconds",
            "HTTP answer latency (handler start to the answer being ready) by route template "
            "and method",
            ["route", "method"],
            buckets=_HTTP,
            registry=r,
        )
        self.verifications = Counter(
            "callauth_verifications_total",
            "Verification starts and resends, by channel and result",
            ["client", "channel", "kind", "result"],
            registry=r,
        )
        self.checks = Counter(
            "callauth_checks_total",
            "Code checks by channel of the latest call and outcome "
            "(approved, wrong, spent, max_checks, not_found)",
            ["client", "channel", "outcome"],
            registry=r,
        )
        self.approvals = Counter(
            "callauth_approvals_total",
            "Verifications approved, by the channel of the call that approved them",
            ["client", "channel"],
            registry=r,
        )
        self.inbound_callbacks = Counter(
            "callauth_inbound_callbacks_total",
            "New-Tel's callbacks for inbound calls by outcome (approved, duplicate, rejected)",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "callauth_rate_limited_total",
            "Starts refused by a limit",
            ["limit"],
            registry=r,
        )
        self.numbers_refused = Counter(
            "callauth_numbers_refused_total",
            "Starts refused for the number itself: its type (premium_rate, toll_free, ...) or "
            "denied_prefix",
            ["reason"],
            registry=r,
        )
        self.newtel_latency = Histogram(
            "callauth_newtel_request_seconds",
            "New-Tel request latency by method",
            ["method"],
            buckets=_SLOW,
            registry=r,
        )
        self.newtel_errors = Counter(
            "callauth_newtel_errors_total",
            "New-Tel failures by method and reason: timeout (no answer in time), "
            "connect_failed (no connection: refused, DNS, TLS; nothing sent), connection_lost "
            "(the connection broke once the request may have been sent), http_429, http_4xx, "
            "http_5xx, method_error (HTTP 200, result error), bad_answer (not JSON, wrong shape, "
            "another HTTP status, no callId or pin), number_unreachable (isValidNumber false), "
            "circuit_open and budget (refused here, nothing sent), other",
            ["method", "reason"],
            registry=r,
        )
        self.store_latency = Histogram(
            "callauth_store_seconds",
            "Store operation latency",
            ["op"],
            buckets=_FAST,
            registry=r,
        )
        self.store_errors = Counter(
            "callauth_store_errors_total",
            "Store operations that failed, by op and reason: timeout, connection (refused, "
            "reset, closed), script_error (a Lua script failed), cluster_moved and cluster_ask "
            "(a Cluster reshuffle), readonly (a replica after a failover), loading (Redis still "
            "loading its data set), other",
            ["op", "reason"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "callauth_newtel_circuit_state",
            "New-Tel circuit: 0 closed, 1 half-open, 2 open",
            registry=r,
        )
        self.circuit_transitions = Counter(
            "callauth_newtel_circuit_transitions_total",
            "Circuit transitions by target state",
            ["state"],
            registry=r,
        )
        # Call-status polling has a circuit of its own: a failing status method must not pause
        # call starts (and /readyz follows only the call-start circuit above).
        self.status_circuit_state = Gauge(
            "callauth_newtel_status_circuit_state",
            "New-Tel call-status circuit (GET polling only): 0 closed, 1 half-open, 2 open",
            registry=r,
        )
        self.status_circuit_transitions = Counter(
            "callauth_newtel_status_circuit_transitions_total",
            "Call-status circuit transitions by target state",
            ["state"],
            registry=r,
        )
        self.balance = Gauge(
            "callauth_newtel_balance", "New-Tel account balance", ["currency"], registry=r
        )
        self.account_status = Gauge(
            "callauth_newtel_account_status",
            "New-Tel account status (1 for the current one)",
            ["status"],
            registry=r,
        )
        self.config_reloads = Counter(
            "callauth_config_reloads_total",
            "Reloads of the clients file (SIGHUP) by result: ok (in force for the next "
            "request) or error (refused; the clients in force stay)",
            ["result"],
            registry=r,
        )
        # Both series from the start: increase() misses a series' first sample, so a first
        # failed reload would go unseen by an alert.
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.webhook_deliveries = Counter(
            "callauth_webhook_deliveries_total",
            "Webhook delivery attempts by client and outcome: delivered (2xx), retry (failed, "
            "tried again later), dead (failed after the last retry), gone (410: the event is "
            "dropped), refused (the target is loopback, private, link-local or plain http://)",
            ["client", "outcome"],
            registry=r,
        )
        self.webhook_pending = Gauge(
            "callauth_webhook_pending",
            "Webhook events in the outbox: not yet delivered, gone or dead (all shards)",
            registry=r,
        )
        self.webhook_lag = Histogram(
            "callauth_webhook_lag_seconds",
            "From an event to its delivery (retries included)",
            buckets=_LAG,
            registry=r,
        )
        self.balance_checked = Gauge(
            "callauth_newtel_balance_checked_timestamp_seconds",
            "When the balance was last read",
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """A labelled child of `metric`, kept: `labels()` is not free, and the hot paths ask
        for the same few children on every request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def http(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter's and the latency histogram's children for one answer, kept
        together: served() pays one dict lookup a request for both."""
        key = (route, method, status)
        found = self._http_children.get(key)
        if found is None:
            found = self._http_children[key] = (
                self.http_requests.labels(route, method, str(status)),
                self.child(self.http_latency, route, method),
            )
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
