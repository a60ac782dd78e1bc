"""Single sign-on claims to RedFlag roles: REDFLAG_OIDC_ROLE_CLAIM's values looked up in REDFLAG_OIDC_ROLE_MAP.

The map is ``{"<claim value>": {"role": "<role>", "groups": ["<agent group>", ...]}}``; no groups (or
an empty list) grants the role on the whole fleet. Several values granting one role add up; any of
them fleet-wide makes it fleet-wide.
"""

from __future__ import annotations

from typing import Any

from accounts_app.choices import Role

# What an OpenID Connect provider's "amr" claim (RFC 8176) says when it asked for more than a password.
PROVIDER_MFA_METHODS = frozenset({"mfa", "otp", "hwk", "swk", "sc"})


class RoleMapError(ValueError):
    """REDFLAG_OIDC_ROLE_MAP names something that does not exist (reported by the system check)."""


def claim_values(claims: dict[str, Any], claim: str) -> list[str]:
    """The claim's values, from the userinfo answer first, then the ID token: strings only.

    A provider sends a single value as a string and several as a list; anything else (numbers,
    objects) cannot name a role and is ignored.
    """
    for source in (claims.get("userinfo") or {}, claims.get("id_token") or {}):
        if claim in source:
            value = source[claim]
            values = value if isinstance(value, list) else [value]
            return [item for item in values if isinstance(item, str)]
    return []


def provider_did_second_factor(claims: dict[str, Any]) -> bool:
    """The ID token's ``amr`` (RFC 8176) names a method beyond a password."""
    amr = (claims.get("id_token") or {}).get("amr") or []
    return isinstance(amr, list) and any(isinstance(method, str) and method in PROVIDER_MFA_METHODS
                                         for method in amr)


def validate_role_map(role_map: dict[str, Any]) -> None:
    for value, entry in role_map.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("role"), str):
            raise RoleMapError(f"entry {value!r} must be an object with a \"role\"")
        if entry["role"] not in Role.values:
            raise RoleMapError(f"entry {value!r}: unknown role {entry['role']!r} (roles: {', '.join(Role.values)})")
        groups = entry.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(name, str) for name in groups):
            raise RoleMapError(f"entry {value!r}: \"groups\" must be a list of agent group names")
        unknown = set(entry) - {"role", "groups"}
        if unknown:
            raise RoleMapError(f"entry {value!r}: unknown key(s) {', '.join(sorted(unknown))}")


def grants_for(values: list[str], role_map: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(role, agent group names) for role_grants_replace; [] when no value is mapped."""
    scopes: dict[str, set[str] | None] = {}
    for value in values:
        entry = role_map.get(value)
        if entry is None:
            continue
        groups = set(entry.get("groups") or [])
        role = entry["role"]
        if not groups or scopes.get(role, set()) is None:
            scopes[role] = None  # the whole fleet
        else:
            scopes[role] = scopes.get(role, set()) | groups
    return [(role, sorted(groups) if groups else []) for role, groups in sorted(scopes.items())]
