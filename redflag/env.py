"""Strict parsing of RedFlag's environment variables.

A value that cannot be parsed stops start-up with one line naming the variable
and what it accepts (:class:`StartupRefused`): a typo in production must never
silently become a default, and never hides behind a traceback.
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from urllib.parse import urlsplit


class StartupRefused(SystemExit):
    """RedFlag cannot start with this configuration: one line on stderr, exit status 1, no traceback.

    A SystemExit, because settings are imported by every entry point (manage.py and every command,
    qcluster's worker processes, uvicorn, wsgi) and each of them prints a SystemExit's message as one
    line and exits; an ordinary exception would end in a traceback in each.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"RedFlag will not start: {problem}")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = _raw(name)
    if value is None:
        if required:
            raise StartupRefused(f"{name} must be set")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise StartupRefused(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise StartupRefused(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise StartupRefused(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int_map(name: str, default: dict[str, int], *, minimum: int = 1) -> dict[str, int]:
    """``key=number`` pairs separated by commas (``critical=3,low=60``) over ``default``: only its keys are
    accepted, and a key left out keeps its default."""
    value = _raw(name)
    result = dict(default)
    if value is None:
        return result
    accepted = f"comma-separated key=days pairs with keys {', '.join(default)}"
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, _, number = (piece.strip() for piece in item.partition("="))
        if key not in default or not number.isdigit():
            raise StartupRefused(f"{name} must be {accepted}, not {item!r}")
        if int(number) < minimum:
            raise StartupRefused(f"{name}: {key} must be at least {minimum}, not {number}")
        result[key] = int(number)
    return result


def env_json_object(name: str) -> dict:
    """A JSON object (``{"key": ...}``), or {} when unset. A refusal names the variable, not the value
    (it may be long, and quoting it back would not help)."""
    value = _raw(name)
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise StartupRefused(f"{name} must be a JSON object: {exc.msg} at character {exc.pos}") from None
    if not isinstance(parsed, dict):
        raise StartupRefused(f"{name} must be a JSON object ({{...}}), not a {type(parsed).__name__}")
    return parsed


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(name)
    if value is None:
        return default
    if value not in choices:
        raise StartupRefused(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def env_redis_url(name: str) -> str | None:
    """A redis://, rediss:// or unix:// URL, or None when unset. The URL may hold a password:
    a refusal names only its scheme."""
    value = _raw(name)
    if value is None:
        return None
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise StartupRefused(f"{name} must be a redis://, rediss:// or unix:// URL, "
                                   f"not {scheme + '://' if scheme else 'one without a scheme'}")
    return value


def env_database_url(name: str) -> str | None:
    """A postgresql:// (or postgres://) or sqlite:/// URL, or None when unset (the embedded SQLite). The URL
    may hold a password: a refusal names only its scheme."""
    value = _raw(name)
    if value is None:
        return None
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme not in ("postgresql", "postgres", "sqlite"):
        raise StartupRefused(f"{name} must be a postgresql://user@host:port/database URL (or sqlite:///path; unset: "
                             f"the embedded SQLite), not {scheme + '://' if scheme else 'one without a scheme'}")
    return value


def parse_duration(text: str) -> timedelta:
    """Parse '30m', '24h', '7d' or '90s' into a timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    amount, unit = match.groups()
    return timedelta(**{_DURATION_UNITS[unit]: int(amount)})
