"""SECURITY.md names a test for each control: those tests must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text("utf-8")
    named = set(re.findall(r"(test_\w+)::(test_\w+)", text))
    assert len(named) >= 30
    missing = [
        f"{module}::{test}"
        for module, test in sorted(named)
        if not re.search(
            rf"^(async )?def {test}\(",
            (ROOT / "tests" / f"{module}.py").read_text("utf-8"),
            re.MULTILINE,
        )
    ]
    assert missing == []
