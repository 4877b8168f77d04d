"""The Grafana dashboard and the Prometheus alert rules stay true to service/metrics.py.

Always: structure checks and "every metric, label and suffix used exists". When `promtool`
is on PATH (Debian's `prometheus` package): the rules are checked, their alerts unit-tested,
and every dashboard query is parsed by Prometheus's own PromQL parser.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "callauth.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Series Prometheus makes itself (scrape health, blackbox probes): not ours, allowed by name.
EXTERNAL = {"up": set[str](), "probe_success": set[str]()}
# Labels every scraped series carries, whatever the family.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning", "info"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def families() -> dict[str, tuple[str, set[str]]]:
    """Every sample name the service can export -> (its family, the family's labels)."""
    metrics = Metrics()
    labels: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                labels[family.name] = set(collector._labelnames)
    names: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = (family.name, labels[family.name] | extra)
    return names


KNOWN = families()

# --- a small PromQL reader: which metrics and labels an expression uses ------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
}


def used(expr: str) -> tuple[set[str], list[tuple[str, set[str]]], set[str]]:
    """(metric names, [(metric, labels in its matchers)], labels in by/on/... clauses)."""
    text = _GRAFANA_VAR.sub("1", _STRING.sub('""', expr))
    selectors = [
        (name, set(_MATCHER_LABEL.findall(body)))
        for name, body in _SELECTOR.findall(text)
        if name not in _KEYWORDS
    ]
    grouping = {
        label.strip() for group in _GROUPING.findall(text) for label in group.split(",")
    } - {""}
    bare = _GROUPING.sub(" ", text)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    names = {name for name in _IDENT.findall(bare) if name not in _KEYWORDS}
    return names, selectors, grouping


def check_expr(expr: str, where: str, *, constant: bool = False) -> set[str]:
    """Every metric known (with the right suffix), every label one its metrics have."""
    names, selectors, grouping = used(expr)
    assert names or constant, f"{where}: no metric in {expr!r}"
    allowed_labels = set(TARGET_LABELS)
    for name in names:
        if name in EXTERNAL:
            allowed_labels |= EXTERNAL[name]
            continue
        assert name in KNOWN, (
            f"{where}: {name!r} is not exported by service/metrics.py (known: {sorted(KNOWN)})"
        )
        allowed_labels |= KNOWN[name][1]
    for name, labels in selectors:
        own = EXTERNAL.get(name, set()) if name in EXTERNAL else KNOWN[name][1]
        unknown = labels - own - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"
    unknown = grouping - allowed_labels
    assert not unknown, f"{where}: grouping by labels no metric here has: {sorted(unknown)}"
    return {KNOWN[name][0] for name in names if name in KNOWN}


def test_the_promql_reader_finds_metrics_and_labels() -> None:
    names, selectors, grouping = used(
        "histogram_quantile(0.99, sum by (le, method) ("
        'rate(callauth_newtel_request_seconds_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (method) group_left sum(callauth_x offset 1d) and up == 0 > bool 1e3"
    )
    assert names == {"callauth_newtel_request_seconds_bucket", "callauth_x", "up"}
    assert selectors == [("callauth_newtel_request_seconds_bucket", {"job"})]
    assert grouping == {"le", "method"}
    with pytest.raises(AssertionError, match="not exported"):
        check_expr("rate(callauth_verification_total[5m])", "typo")
    with pytest.raises(AssertionError, match="no label"):
        check_expr('callauth_checks_total{result="approved"}', "label typo")
    with pytest.raises(AssertionError, match="not exported"):
        check_expr("callauth_newtel_request_seconds_total", "wrong suffix")
    assert "callauth_newtel_request_seconds_bucket" in KNOWN
    assert "callauth_verifications_total" in KNOWN
    assert "callauth_newtel_circuit_state" in KNOWN


# --- the dashboard ------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside a collapsed row
    return out


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "callauth"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"

    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel.get("title", "")
        assert title, f"panel {panel['id']} has no title"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
        targets = panel.get("targets")
        assert targets, f"{title}: no targets"
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", title
        grid = panel["gridPos"]
        assert grid["x"] >= 0, title
        assert grid["x"] + grid["w"] <= 24, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title


def test_dashboard_uses_only_exported_metrics_and_shows_every_family() -> None:
    dashboard = _dashboard()
    shown: set[str] = set()
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            # A constant line (e.g. the client budget's limit) is a query without a metric.
            where = f"panel {panel['title']!r}"
            shown |= check_expr(target["expr"], where, constant=True)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["definition"]
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert found, query
        shown |= check_expr(found.group(1), f"variable {variable['name']}")
        metric = used(found.group(1))[0].pop()
        assert found.group(2) in KNOWN[metric][1] | TARGET_LABELS, query
    everything = {family for family, _ in KNOWN.values()}
    assert shown == everything, f"families without a panel: {sorted(everything - shown)}"


# --- the alert rules ------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict)
    assert list(doc) == ["groups"]
    rules = []
    for group in doc["groups"]:
        assert group["name"], group
        assert group["rules"], group
        rules.extend(group["rules"])
    return rules


def test_alert_rules_structure_and_metrics() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        where = rule.get("alert", rule)
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, where
        assert rule["alert"].startswith("Callauth"), where
        assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), where
        assert rule["labels"]["severity"] in SEVERITIES, where
        assert rule["annotations"]["summary"].strip(), where
        check_expr(rule["expr"], f"alert {where}")
    # What operators asked for (issue 7).
    wanted = {
        "CallauthNewTelBalanceLow",
        "CallauthNewTelCircuitOpen",
        "CallauthNewTelErrorRate",
        "CallauthConversionDrop",
        "CallauthClientBudgetRefusals",
        "CallauthClientBudgetNearLimit",
        "CallauthInstanceDown",
        "CallauthNotReady",
    }
    assert wanted <= set(names), sorted(wanted - set(names))


# --- with promtool --------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def _run(*args: str) -> str:
    done = subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_checks_the_rules() -> None:
    out = _run("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, Grafana's variables filled in, as a recording rule promtool checks."""
    fill = {"$__rate_interval": "5m", "$client_limit": "1000"}
    rules = []
    for panel in _panels(_dashboard()):
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            expr = re.sub(r"\$\w+", ".*", expr)
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = _run("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in out


def _annotations(alert: str, labels: dict[str, str], value: str = "") -> dict[str, str]:
    """The rule's annotations rendered for the given labels and a pre-formatted $value."""
    rule = next(r for r in _rules() if r["alert"] == alert)
    out = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)
        text = re.sub(r"\{\{\s*\$value[^}]*\}\}", value, text)
        assert "{{" not in text, text
        out[key] = text
    return out


def _case(
    alert: str, at: str, labels: dict[str, str] | None = None, value: str = ""
) -> dict[str, Any]:
    if labels is None:
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}
    severity = next(r for r in _rules() if r["alert"] == alert)["labels"]["severity"]
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {**labels, "severity": severity},
                "exp_annotations": _annotations(alert, labels, value),
            }
        ],
    }


def test_promtool_unit_tests_the_alerts(tmp_path: Path) -> None:
    a = 'job="callauth", instance="a:8080"'
    operations = [
        # The circuit opens at 1m; up fails at 1m on another instance.
        (f"callauth_newtel_circuit_state{{{a}}}", "0 2x10"),
        ('up{job="callauth", instance="b:8080"}', "1 0x10"),
        (f'callauth_newtel_balance{{{a}, currency="RUB"}}', "5000 500x20"),
        # The client budget: 15 calls a minute (900 an hour) and refusals from 5m on.
        (
            f'callauth_verifications_total{{{a}, client="shop", channel="flash_call", '
            'kind="start", result="placed"}',
            "0+15x90",
        ),
        (f'callauth_rate_limited_total{{{a}, limit="client"}}', "0x5 1+3x30"),
        # Token probing: 30 rejected callbacks a minute from 3m on.
        (f'callauth_inbound_callbacks_total{{{a}, outcome="rejected"}}', "0x3 30+30x30"),
        # The call-status circuit opens at 2m: an alert of its own, not CircuitOpen's.
        (f"callauth_newtel_status_circuit_state{{{a}}}", "0 0 2x10"),
        # One flash call and one status request a second; half the calls fail, and ten
        # status polls a second are refused by the budget (nothing sent: not an error rate).
        (f'callauth_newtel_request_seconds_count{{{a}, method="flash_call"}}', "0+60x30"),
        (
            f'callauth_newtel_errors_total{{{a}, method="flash_call", reason="http_5xx"}}',
            "0+30x30",
        ),
        (f'callauth_newtel_request_seconds_count{{{a}, method="call_status"}}', "0+60x30"),
        (
            f'callauth_newtel_errors_total{{{a}, method="call_status", reason="budget"}}',
            "0+600x30",
        ),
        # HTTP: a start a second throughout; from 5m on, half a 503 a second as well.
        (
            f'callauth_http_requests_total{{{a}, route="/v1/verifications", method="POST", '
            'status="201"}',
            "0+60x30",
        ),
        (
            f'callauth_http_requests_total{{{a}, route="/v1/verifications", method="POST", '
            'status="503"}',
            "0x5 0+30x25",
        ),
        # Starts take 1-2.5 s (New-Tel: under their 5 s bound); checks, 250-500 ms from 3m
        # on (over their 250 ms one).
        *(
            (
                f'callauth_http_request_seconds_bucket{{{a}, route="/v1/verifications", '
                f'method="POST", le="{le}"}}',
                values,
            )
            for le, values in (("1.0", "0x30"), ("2.5", "0+60x30"), ("+Inf", "0+60x30"))
        ),
        *(
            (
                f'callauth_http_request_seconds_bucket{{{a}, route="/v1/verifications/check", '
                f'method="POST", le="{le}"}}',
                values,
            )
            for le, values in (
                ("0.25", "0+60x3 180x27"),
                ("0.5", "0+60x30"),
                ("+Inf", "0+60x30"),
            )
        ),
        # Redis refuses connections from 11m to 15m.
        (
            f'callauth_store_errors_total{{{a}, op="reserve", reason="connection"}}',
            "0x10 5+5x4 25x15",
        ),
    ]
    operations_cases = [
        _case("CallauthNewTelCircuitOpen", "1m"),
        _case("CallauthNewTelCircuitOpen", "3m", {"instance": "a:8080"}),
        _case("CallauthInstanceDown", "1m"),
        _case("CallauthInstanceDown", "4m", {"job": "callauth", "instance": "b:8080"}),
        _case("CallauthNewTelBalanceLow", "5m"),
        _case("CallauthNewTelBalanceLow", "15m", {"currency": "RUB"}, "500.00"),
        _case("CallauthClientBudgetRefusals", "4m"),
        _case("CallauthClientBudgetRefusals", "15m", {}),
        _case("CallauthClientBudgetNearLimit", "30m"),
        _case("CallauthClientBudgetNearLimit", "80m", {"client": "shop"}, "900"),
        _case("CallauthInboundCallbacksRejected", "3m"),
        _case("CallauthInboundCallbacksRejected", "15m", {}, "0.50"),
        _case("CallauthNewTelStatusCircuitOpen", "4m"),
        _case("CallauthNewTelStatusCircuitOpen", "8m", {"instance": "a:8080"}),
        _case("CallauthNewTelErrorRate", "4m"),
        _case("CallauthNewTelErrorRate", "15m", {"method": "flash_call"}, "50%"),
        _case("CallauthHttpErrorRatio", "8m"),
        _case("CallauthHttpErrorRatio", "20m", {}, "33.33%"),
        _case("CallauthHttpSlow", "8m"),
        _case("CallauthHttpSlow", "20m", {"route": "/v1/verifications/check"}, "497.5ms"),
        _case("CallauthStoreErrors", "10m"),
        _case("CallauthStoreErrors", "13m", {"instance": "a:8080"}),
        _case("CallauthStoreErrors", "25m"),
    ]
    # Conversion: 10 starts a minute throughout; 8 approvals a minute for a day, then 2.
    conversion = [
        (
            f'callauth_verifications_total{{{a}, client="app", channel="flash_call", '
            'kind="start", result="placed"}',
            "0+10x1600",
        ),
        (
            f'callauth_approvals_total{{{a}, client="app", channel="flash_call"}}',
            "0+8x1440 11522+2x160",
        ),
    ]
    conversion_cases = [
        _case("CallauthConversionDrop", "1450m"),
        _case("CallauthConversionDrop", "1520m", {}, "20%"),
    ]
    b = 'job="callauth", instance="b:8080"'
    webhooks = [
        # shop's first dead event at 10m, on a series that begins with it; app's at 30m, on
        # one that counted none until then.
        (f'callauth_webhook_deliveries_total{{{a}, client="shop", outcome="dead"}}', "_x10 1x50"),
        (f'callauth_webhook_deliveries_total{{{a}, client="app", outcome="dead"}}', "0x29 1x30"),
        # crm's endpoint stops answering 2xx at 10m; its events are retried from then on.
        (
            f'callauth_webhook_deliveries_total{{{a}, client="crm", outcome="delivered"}}',
            "0+10x10 100x50",
        ),
        (f'callauth_webhook_deliveries_total{{{a}, client="crm", outcome="retry"}}', "0x10 5+5x50"),
        # 60 deliveries a minute under a second; from 20m on, 5 of them take 60-300 s.
        *(
            (f'callauth_webhook_lag_seconds_bucket{{{a}, le="{le}"}}', values)
            for le, values in (
                ("1.0", "0+60x20 1255+55x40"),
                ("60.0", "0+60x20 1255+55x40"),
                ("300.0", "0+60x60"),
                ("+Inf", "0+60x60"),
            )
        ),
        # Both processes report the same outbox: 100 more events each minute.
        (f"callauth_webhook_pending{{{a}}}", "0+100x60"),
        (f"callauth_webhook_pending{{{b}}}", "0+100x60"),
    ]
    webhooks_cases = [
        _case("CallauthWebhooksDead", "9m"),
        _case("CallauthWebhooksDead", "10m", {"client": "shop"}),
        _case("CallauthWebhooksDead", "29m"),
        _case("CallauthWebhooksDead", "30m", {"client": "app"}),
        _case("CallauthWebhooksDead", "50m"),
        _case("CallauthWebhookLag", "30m"),
        _case("CallauthWebhookLag", "45m", {}, "4m 31s"),
        _case("CallauthWebhookFailing", "35m"),
        _case("CallauthWebhookFailing", "45m", {"client": "crm"}),
        _case("CallauthWebhookBacklog", "40m"),
        _case("CallauthWebhookBacklog", "50m", {}, "5000"),
    ]
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in inputs],
                "alert_rule_test": cases,
            }
            for inputs, cases in (
                (operations, operations_cases),
                (conversion, conversion_cases),
                (webhooks, webhooks_cases),
            )
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, allow_unicode=True))
    out = _run("test", "rules", str(path))
    assert "SUCCESS" in out
