"""REDFLAG_PATCH_DEADLINES_DAYS: the keys given override the defaults, the others keep theirs
(a bad value stopping start-up in one line is tested with the other settings, tests/server/redflag)."""

from __future__ import annotations

import pytest

from redflag.env import StartupRefused, env_int_map

DEFAULTS = {"critical": 7, "important": 14, "moderate": 30, "low": 90, "unknown": 30}
VARIABLE = "REDFLAG_PATCH_DEADLINES_DAYS"


def test_unset_or_blank_keeps_the_defaults(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    assert env_int_map(VARIABLE, DEFAULTS) == DEFAULTS
    monkeypatch.setenv(VARIABLE, "  ")
    assert env_int_map(VARIABLE, DEFAULTS) == DEFAULTS


def test_the_keys_given_override_their_defaults(monkeypatch):
    monkeypatch.setenv(VARIABLE, " critical = 3, low=60 ,")
    assert env_int_map(VARIABLE, DEFAULTS) == {**DEFAULTS, "critical": 3, "low": 60}


@pytest.mark.parametrize("value", ["critical", "critical=-1", "critical=1.5", "=7", "critical=7;low=1"])
def test_anything_else_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(StartupRefused, match=f"^RedFlag will not start: {VARIABLE}"):
        env_int_map(VARIABLE, DEFAULTS)
