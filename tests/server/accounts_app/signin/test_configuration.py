"""The sign-in settings (redflag/settings.py "sign-in"): strict at start-up, the role map checked by manage.py check,
and the claim mapping and provider-MFA rule (accounts_app/signin/sso.py) on the shapes providers send."""

from __future__ import annotations

import json

import pytest

from accounts_app.signin.sso import (
    RoleMapError,
    claim_values,
    grants_for,
    provider_did_second_factor,
    validate_role_map,
)
from tests.server.redflag.test_settings_env import PRODUCTION_ENV, manage

SECRET = "client-secret-value-1234567890"
OIDC = {"REDFLAG_OIDC_ISSUER": "https://id.example.net/realms/ops", "REDFLAG_OIDC_CLIENT_ID": "redflag",
        "REDFLAG_OIDC_CLIENT_SECRET": SECRET}


@pytest.mark.parametrize("env, message", [
    ({"REDFLAG_OIDC_ISSUER": OIDC["REDFLAG_OIDC_ISSUER"]},
     "missing: REDFLAG_OIDC_CLIENT_ID, REDFLAG_OIDC_CLIENT_SECRET"),
    ({**OIDC, "REDFLAG_OIDC_ISSUER": "http://id.example.net"}, "REDFLAG_OIDC_ISSUER must be an https:// URL"),
    ({**OIDC, "REDFLAG_OIDC_ROLE_MAP": "{not json"}, "REDFLAG_OIDC_ROLE_MAP must be a JSON object"),
    ({**OIDC, "REDFLAG_OIDC_ROLE_MAP": "[1, 2]"}, "REDFLAG_OIDC_ROLE_MAP must be a JSON object ({...}), not a list"),
    ({"REDFLAG_SSO_ONLY": "true"}, "REDFLAG_SSO_ONLY needs single sign-on configured"),
    ({"REDFLAG_REQUIRE_MFA": "perhaps"}, "REDFLAG_REQUIRE_MFA must be true or false"),
])
def test_a_bad_sign_in_setting_stops_start_up_naming_it(tmp_path, env, message):
    result = manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_a_role_map_naming_an_unknown_role_fails_the_check(tmp_path):
    env = {**OIDC, "REDFLAG_OIDC_ROLE_MAP": json.dumps({"ops": {"role": "overlord"}})}
    result = manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0 and "redflag.signin.E001" in result.stderr and "'overlord'" in result.stderr


def test_single_sign_on_in_production_passes_check_deploy(tmp_path):
    env = {**PRODUCTION_ENV, **OIDC, "REDFLAG_SSO_ONLY": "true", "REDFLAG_BREAK_GLASS_USERS": "admin",
           "REDFLAG_OIDC_ROLE_MAP": json.dumps({"ops": {"role": "approver", "groups": ["web"]}})}
    result = manage("check", "--deploy", "--tag", "security", "--fail-level", "WARNING", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert manage("check", env=env, tmp_path=tmp_path).stderr.count("redflag.signin") == 0


@pytest.mark.parametrize("role_map, problem", [
    ({"ops": "approver"}, "must be an object"),
    ({"ops": {"role": "approver", "groups": "web"}}, "must be a list"),
    ({"ops": {"role": "approver", "scope": "web"}}, "unknown key(s) scope"),
])
def test_role_map_shapes_are_checked(role_map, problem):
    with pytest.raises(RoleMapError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        validate_role_map(role_map)


def test_claims_come_from_userinfo_then_the_id_token_and_only_strings_count():
    assert claim_values({"userinfo": {"groups": ["a", 3, {"x": 1}, "b"]}, "id_token": {"groups": ["c"]}},
                        "groups") == ["a", "b"]
    assert claim_values({"userinfo": {}, "id_token": {"groups": "single"}}, "groups") == ["single"]
    assert claim_values({"userinfo": {"roles": ["a"]}}, "groups") == []


def test_values_granting_one_role_add_up_and_a_fleet_wide_one_wins():
    role_map = {"web-approvers": {"role": "approver", "groups": ["web"]},
                "db-approvers": {"role": "approver", "groups": ["db"]},
                "all-operators": {"role": "operator"}, "ops-operators": {"role": "operator", "groups": ["ops"]}}
    assert grants_for(["db-approvers", "web-approvers", "unmapped"], role_map) == [("approver", ["db", "web"])]
    assert grants_for(["ops-operators", "all-operators"], role_map) == [("operator", [])]
    assert grants_for(["all-operators", "ops-operators"], role_map) == [("operator", [])]
    assert grants_for(["unmapped"], role_map) == []


@pytest.mark.parametrize("amr, counts", [
    (["pwd", "otp"], True), (["hwk"], True), (["mfa"], True), (["pwd"], False), ("mfa", False), (None, False),
])
def test_a_provider_second_factor_counts_only_when_amr_names_one(amr, counts):
    claims = {"id_token": {"amr": amr}} if amr is not None else {"id_token": {}}
    assert provider_did_second_factor(claims) is counts
