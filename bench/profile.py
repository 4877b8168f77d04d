"""py-spy against the running service: a flamegraph, collapsed stacks and a text summary."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 200
# The stdlib's directory of this interpreter, the one the profiled service runs on.
_STDLIB_DIR = f"/python{sys.version_info.major}.{sys.version_info.minor}/"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def ensure_py_spy() -> str:
    """py-spy from the venv, installed with pip if it is missing."""
    here = Path(sys.executable).with_name("py-spy")
    if here.exists():
        return str(here)
    found = shutil.which("py-spy")
    if found:
        return found
    print("py-spy is missing: pip install py-spy into the venv", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(here)


def record(pid: int, seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """Start two non-blocking samplers (a flamegraph SVG and raw collapsed stacks)."""
    spy = ensure_py_spy()
    common = ["record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    common += ["--rate", str(RATE), "--nonblocking"]
    return [
        subprocess.Popen(
            [spy, *common, "--format", fmt, "--output", str(out.with_suffix(suffix))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".collapsed.txt"))
    ]


def _where(path: str) -> str:
    """A frame's file as an area: service/<file>.py, a package or stdlib module, or <...>.

    py-spy writes paths relative to the sys.path entry they were found under
    (`aiohttp/web.py`, `asyncio/streams.py`, `hmac.py`), absolute ones otherwise.
    """
    if path.startswith("<"):
        return path
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        path = path.rsplit(_STDLIB_DIR, 1)[-1]
    if path.startswith("service/"):
        return path
    head, sep, _ = path.partition("/")
    return head if sep else head.removesuffix(".py")


def summarize(collapsed: Path, top: int = 30) -> dict[str, Any]:
    """Self and inclusive samples per function, and self samples per area."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw.strip())
            func, file = (match["func"], match["file"]) if match else (raw, "?")
            frames.append((f"{func} ({_where(file)})", _where(file)))
        if not frames:
            continue
        own[frames[-1][0]] += count
        areas[frames[-1][1]] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": n, "pct": round(100 * n / max(1, total), 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "self": pct(own),
        "inclusive": pct(inclusive),
        "self_by_area": pct(areas),
        "area_samples": dict(areas),
    }


def per_request(summary: dict[str, Any], rate: int, requests: int) -> dict[str, float]:
    """Microseconds of on-CPU (sampled) time per request, by area."""
    return {
        area: round(n / rate / max(1, requests) * 1e6, 1)
        for area, n in sorted(summary["area_samples"].items(), key=lambda kv: -kv[1])
    }


def compare(service: dict[str, float], baseline: dict[str, float]) -> list[dict[str, Any]]:
    """Per-area microseconds per request: the service, the baseline, and the difference."""
    areas = set(service) | set(baseline)
    rows = [
        {
            "area": a,
            "service_us": service.get(a, 0.0),
            "baseline_us": baseline.get(a, 0.0),
            "extra_us": round(service.get(a, 0.0) - baseline.get(a, 0.0), 1),
        }
        for a in areas
    ]
    return sorted(rows, key=lambda row: -row["extra_us"])


def render(summary: dict[str, Any], title: str = "") -> str:
    lines = [f"{title}py-spy samples: {summary['samples']}", "", "self time by area:"]
    lines += [f"  {e['pct']:5.1f}%  {e['name']}" for e in summary["self_by_area"]]
    lines += ["", "self time by function:"]
    lines += [f"  {e['pct']:5.1f}%  {e['name']}" for e in summary["self"]]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {e['pct']:5.1f}%  {e['name']}" for e in summary["inclusive"]]
    return "\n".join(lines) + "\n"
