"""The stored format has one owner (service/state.py); the Lua scripts name the same positions."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from service import state
from service.errors import NotFound

PRELUDE = Path(state.__file__).with_name("lua") / "_prelude.lua"


def lua_positions() -> dict[str, int]:
    """Every `local NAME, ... = 1, ...` assignment of upper-case names in _prelude.lua."""
    text = PRELUDE.read_text("utf-8")
    positions: dict[str, int] = {}
    for names, values in re.findall(
        r"^local ([A-Z_]+(?:, [A-Z_]+)*) =\s*([\d, \n]+)$", text, flags=re.MULTILINE
    ):
        split_names = [n.strip() for n in names.split(",")]
        split_values = [int(v) for v in values.replace("\n", " ").split(",")]
        assert len(split_names) == len(split_values), names
        positions.update(zip(split_names, split_values, strict=True))
    return positions


def test_the_lua_scripts_and_python_name_the_same_positions() -> None:
    lua = lua_positions()
    python = {
        name: getattr(state, name) + 1  # Lua counts from 1
        for name in lua
    }
    assert lua == python
    # Every position Python names is named in Lua too (none forgotten on either side).
    named_in_python = {
        name
        for name, value in vars(state).items()
        if name.isupper() and isinstance(value, int) and not name.startswith("_")
    }
    assert named_in_python == lua.keys()
    assert len(lua) == 27


def test_a_stored_state_decodes_into_named_fields() -> None:
    raw = orjson.dumps(
        [
            "79035675124",
            [1000, 2000],
            {"dev": "A" * 16},
            {
                "A" * 16: [
                    "dev",
                    "pending",
                    5,
                    4,
                    2,
                    301000,
                    [["f", 1000, "c-1", "answered", 7], ["v", 2000, "c-2"]],
                    "hash",
                ]
            },
            [86401000],
        ]
    )
    phone = state.PhoneState.decode("0123456789abcdef", raw)
    assert (phone.phone, phone.call_times_ms, phone.guesses_back_ms) == (
        "79035675124",
        [1000, 2000],
        [86401000],
    )
    assert phone.pending_ids() == {"dev": "vf_0123456789abcdef" + "A" * 16}
    (v,) = phone.all_verifications()
    assert (v.id, v.client, v.status, v.code_length, v.checks_left, v.sends) == (
        "vf_0123456789abcdef" + "A" * 16,
        "dev",
        "pending",
        5,
        4,
        2,
    )
    assert (v.expires_at_ms, v.code_hash, v.channel) == (301000, "hash", "voice_call")
    first, second = v.calls
    assert (first.channel, first.placed_at_ms, first.call_id) == ("flash_call", 1000, "c-1")
    assert (first.status, first.checked_at_s) == ("answered", 7)
    assert (second.status, second.checked_at_s) == ("", 0)
    assert state.read_verification(raw, v.id) == v


def test_a_state_written_before_the_guess_budget_decodes_with_no_guesses() -> None:
    phone = state.PhoneState.decode("0123456789abcdef", orjson.dumps(["7903", [], {}, {}]))
    assert phone.guesses_back_ms == []
    assert phone.all_verifications() == []


@pytest.mark.parametrize(
    "bad",
    ["vf_0123456789abcdef" + "A" * 15, "vf_0123456789abcdef" + "A" * 16 + "\n", "vf_x", ""],
)
def test_an_id_is_matched_whole(bad: str) -> None:
    with pytest.raises(NotFound):
        state.split_id(bad)


def test_ids_and_keys_round_trip() -> None:
    verification_id = state.make_id("0123456789abcdef", "B" * 16)
    assert state.split_id(verification_id) == ("0123456789abcdef", "B" * 16)
    key = state.phone_key("p:", "0123456789abcdef")
    assert state.tag_of("p:", key) == "0123456789abcdef"
    assert state.tag_of("p:", "p:{ip:0123}:slots") is None
