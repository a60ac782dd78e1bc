"""Reports (services/reports.py): update reports (full snapshots, constant statements, idempotent, validated),
system reports and the agent's own events."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents_app.choices import UpdateStatus
from agents_app.models import Agent, IngestedReport, PackageUpdate
from agents_app.services.reports import updates_report_ingest
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import NOW, valid_body


def package(name: str, available: str = "2.0", **extra) -> dict:
    return {"name": name, "current_version": "1.0", "available_version": available, "severity": "unknown",
            "is_security": False, "repository": "bookworm/main", "size_bytes": 1024, "cve_ids": [], "kb_ids": [],
            "metadata": {"arch": "amd64"}, **extra}


def report(agent, packages, package_type="apt", report_id=None):
    return agent.post("reports/updates", {"report_id": report_id or uuid.uuid4().hex, "package_type": package_type,
                                          "updates": packages})


def statuses(agent) -> dict[str, str]:
    return dict(PackageUpdate.objects.filter(agent_id=agent.id).values_list("name", "status"))


def test_report_is_stored_with_every_field(agent):
    response = report(agent, [package("openssl", severity="important", is_security=True, cve_ids=["CVE-2026-1"])])
    assert response.status_code == 200
    assert response.json() == {"duplicate": False, "updates": 1, "closed": 0, "installed": 0, "reopened": 0}
    row = PackageUpdate.objects.get()
    assert (row.name, row.current_version, row.available_version, row.severity, row.is_security) == (
        "openssl", "1.0", "2.0", "important", True)
    assert row.cve_ids == ["CVE-2026-1"] and row.metadata == {"arch": "amd64"} and row.size_bytes == 1024
    assert row.status == UpdateStatus.PENDING and row.repository == "bookworm/main" and row.source_name == ""
    assert SystemEvent.objects.filter(event_type="agent_scan", metadata__security=1).exists()


@pytest.mark.parametrize("bogus", ["-oDpkg::Options::=--force-all", "openssl;id", "OpenSSL", "a" * 300, "", 42,
                                   None, ["openssl"], {"name": "openssl"}])
def test_the_source_package_is_kept_only_when_it_is_a_package_name(agent, bogus):
    """metadata.source (apt: libssl3 is built from openssl) fills source_name when the grammar admits it;
    anything else is stored in the metadata as sent, unused, and the report still succeeds."""
    response = report(agent, [package("libssl3", metadata={"arch": "amd64", "source": "openssl"}),
                              package("libc6", metadata={"arch": "amd64", "source": bogus}),
                              package("bash", metadata={"arch": "amd64", "source": "bash"}),
                              package("curl")])
    assert response.status_code == 200, response.content
    rows = {row.name: row for row in PackageUpdate.objects.filter(agent_id=agent.id)}
    assert {name: row.source_name for name, row in rows.items()} == {
        "libssl3": "openssl", "libc6": "", "bash": "", "curl": ""}
    assert rows["libc6"].metadata == {"arch": "amd64", "source": bogus}
    # Every report refreshes it, as it does the versions: a source the agent no longer reports goes.
    assert report(agent, [package("libssl3", metadata={"arch": "amd64"})]).status_code == 200
    assert PackageUpdate.objects.get(agent_id=agent.id, name="libssl3").source_name == ""


def test_snapshot_closes_absent_packages_and_keeps_approved_and_ignored(agent):
    report(agent, [package("aa"), package("bb"), package("cc"), package("dd")])
    PackageUpdate.objects.filter(name="bb").update(status=UpdateStatus.APPROVED)
    PackageUpdate.objects.filter(name="cc").update(status=UpdateStatus.IGNORED)
    report(agent, [package("bb", "2.1"), package("cc"), package("ee")])
    assert statuses(agent) == {"aa": "closed", "bb": "approved", "cc": "ignored", "dd": "closed", "ee": "pending"}
    assert PackageUpdate.objects.get(name="bb").available_version == "2.1"
    # bb gone while approved: the version moved on, it is installed. aa comes back: pending again.
    report(agent, [package("aa", "3.0"), package("cc")])
    assert statuses(agent) == {"aa": "pending", "bb": "installed", "cc": "ignored", "dd": "closed", "ee": "closed"}


def test_reports_of_other_package_types_do_not_close_each_other(agent):
    report(agent, [package("curl")], "apt")
    report(agent, [package("nginx:latest")], "docker")
    assert statuses(agent) == {"curl": "pending", "nginx:latest": "pending"}


def test_same_report_id_twice_changes_nothing(agent):
    report_id = uuid.uuid4().hex
    report(agent, [package("aa")], report_id=report_id)
    PackageUpdate.objects.update(status=UpdateStatus.APPROVED)
    response = report(agent, [package("bb")], report_id=report_id)
    assert response.status_code == 200 and response.json()["duplicate"] is True
    assert statuses(agent) == {"aa": "approved"}


def _ingest_queries(agent, count: int) -> int:
    # Half of them name a source package: checking it costs no statement either.
    packages = [package(f"pkg-{index}", metadata={"source": f"src-{index // 2}"} if index % 2 else {})
                for index in range(count)]
    with CaptureQueriesContext(connection) as context:
        assert report(agent, packages).status_code == 200
    return len(context.captured_queries)


def test_statement_count_does_not_grow_with_the_package_count(enroll):
    small, large = enroll(hostname="small"), enroll(hostname="large")
    _ingest_queries(small, 1)  # warm the settings cache
    assert _ingest_queries(small, 10) == _ingest_queries(large, 2000)
    assert PackageUpdate.objects.filter(agent_id=large.id).count() == 2000
    # The second, same-size report (all rows conflict) costs the same too.
    assert _ingest_queries(large, 2000) == _ingest_queries(small, 10)


# What updates_report_ingest sends, savepoints aside. PostgreSQL: claim + upsert in one statement, then reopen,
# install and close in one, then the scan event. SQLite (no data-modifying WITH): claim, upsert, reopen,
# install, close, event.
INGEST_STATEMENTS = {"postgresql": 3, "sqlite": 6}


def _statements(context) -> list[str]:
    return [query["sql"] for query in context.captured_queries
            if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT"))]


@pytest.mark.parametrize("count", [1, 2000])
def test_ingestion_sends_a_fixed_number_of_statements(agent, count):
    packages = [package(f"pkg-{index}", metadata={"source": f"src-{index // 2}"} if index % 2 else {})
                for index in range(count)]
    model = agent.model
    for report_id in (uuid.uuid4().hex, uuid.uuid4().hex):  # new rows, then every row conflicting
        with CaptureQueriesContext(connection) as context:
            outcome = updates_report_ingest(agent=model, report_id=report_id, package_type="apt",
                                            updates=packages, not_checked=[])
        assert outcome["updates"] == count
        assert len(_statements(context)) == INGEST_STATEMENTS[connection.vendor], _statements(context)
    with CaptureQueriesContext(connection) as context:  # a report id applied before: the claim alone
        assert updates_report_ingest(agent=model, report_id=report_id, package_type="apt",
                                     updates=packages, not_checked=[]) is None
    assert len(_statements(context)) == 1, _statements(context)


def test_the_counts_say_what_each_report_reopened_installed_and_closed(agent):
    def counts(response) -> tuple[int, int, int, int]:
        body = response.json()
        event = SystemEvent.objects.filter(event_type="agent_scan").latest("seq").metadata
        assert {key: event[key] for key in ("updates", "closed", "installed", "reopened")} == {
            key: body[key] for key in ("updates", "closed", "installed", "reopened")}
        return body["updates"], body["reopened"], body["installed"], body["closed"]

    assert counts(report(agent, [package("aa"), package("bb"), package("cc"), package("dd"), package("ff")])) == (
        5, 0, 0, 0)
    PackageUpdate.objects.filter(name="bb").update(status=UpdateStatus.APPROVED, dependencies=["libx"])
    PackageUpdate.objects.filter(name="cc").update(status=UpdateStatus.IGNORED)
    PackageUpdate.objects.filter(name="ff").update(status=UpdateStatus.FAILED)
    assert counts(report(agent, [package("bb"), package("cc"), package("ee")])) == (3, 0, 0, 3)  # aa, dd, ff
    assert counts(report(agent, [package("aa"), package("cc")])) == (2, 1, 1, 1)  # aa back; bb gone; ee gone
    assert statuses(agent) == {"aa": "pending", "bb": "installed", "cc": "ignored", "dd": "closed",
                               "ee": "closed", "ff": "closed"}
    assert counts(report(agent, [package("bb"), package("dd")])) == (2, 2, 0, 1)  # bb, dd back; aa gone
    bb = PackageUpdate.objects.get(name="bb")
    assert (bb.status, bb.dependencies) == (UpdateStatus.PENDING, [])  # reopened: the old dry-run's list goes
    assert counts(report(agent, [package("bb"), package("dd")])) == (2, 0, 0, 0)  # the same again: no change
    assert PackageUpdate.objects.get(name="cc").status == UpdateStatus.IGNORED  # ignored stays ignored, even gone


@pytest.mark.parametrize("change, field", [
    ({"severity": "urgent"}, "updates[1].severity"),
    ({"name": ""}, "updates[1].name"),
    ({"size_bytes": -1}, "updates[1].size_bytes"),
    ({"is_security": "maybe"}, "updates[1].is_security"),
    ({"size_bytes": 2**64}, "updates[1].size_bytes"),  # past PostgreSQL's bigint: 400, not a 500
])
def test_bad_package_is_a_400_naming_it(agent, change, field):
    response = report(agent, [package("ok"), {**package("bad"), **change}])
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"], response.json()
    assert not PackageUpdate.objects.exists()


@pytest.mark.parametrize(("package_type", "good", "hostile"), [
    ("apt", "libc6:amd64", "-oDpkg::Options::=--force-all"),
    ("apt", "g++-12", "openssh-server-"),
    ("dnf", "kernel.x86_64", "https://127.0.0.1/unsigned.rpm"),
    ("dnf", "libstdc++", "/tmp/x.rpm"),
    ("dnf", "python3.11", "@core"),
    ("dnf", "bash", "nodejs:18"),
    ("docker", "ghcr.io/owner/app:1.2", "nginx;id"),
    ("winget", "Microsoft.VisualStudioCode", "--source=evil"),
    ("windows_update", "0b6f5a4e-3a9c-4d2b-9e6f-1234567890ab", "$(calc)"),
])
def test_a_reported_name_that_is_no_package_name_is_a_400_naming_it(agent, package_type, good, hostile):
    response = report(agent, [package(good), package(hostile)], package_type=package_type)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == ["updates[1].name"]
    assert repr(hostile) in error["fields"]["updates[1].name"][0] and "updates[1].name" in error["message"]
    assert not PackageUpdate.objects.exists()
    assert report(agent, [package(good)], package_type=package_type).status_code == 200  # the report id was not spent


def test_unknown_severity_is_named_in_the_message(agent):
    response = report(agent, [package("xz-utils", severity="urgent")])
    assert '"urgent" is not a valid choice' in response.json()["error"]["message"]


def test_duplicate_names_are_400(agent):
    response = report(agent, [package("xz-utils"), package("xz-utils")])
    assert response.status_code == 400 and "appear twice: x" in response.json()["error"]["message"]


def test_unknown_package_type_and_bad_report_id_are_400(agent):
    response = agent.post("reports/updates", {"report_id": "short", "package_type": "pip", "updates": []})
    assert response.status_code == 400
    assert {"report_id", "package_type"} <= set(response.json()["error"]["fields"])


def test_oversized_report_is_413(agent, settings):
    settings.REDFLAG_MAX_BODY_BYTES = 64 * 1024
    response = report(agent, [package(f"p{index}", metadata={"pad": "x" * 100}) for index in range(1000)])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not PackageUpdate.objects.exists() and not IngestedReport.objects.exists()
    assert not SystemEvent.objects.filter(event_type="agent_scan").exists()


def test_system_report_and_the_reboot_flag(agent):
    facts = {"os_name": "Debian GNU/Linux", "os_version": "12", "kernel": "6.1.0-18-amd64", "cpu_count": 4,
             "memory_total_bytes": 8 * 2**30, "memory_used_bytes": 2**30, "uptime_seconds": 3600,
             "disks": [{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4", "total_bytes": 100,
                        "used_bytes": 40, "percent": 40.0}],
             "ip_addresses": ["192.0.2.10", "2001:db8::1"], "reboot_required": True,
             "reboot_reason": "linux-image-6.1.0-18-amd64", "boot_time": "2026-01-15T08:00:00Z"}
    assert agent.post("reports/system", facts).status_code == 204
    model = agent.model
    assert model.reboot_required and model.reboot_reason == "linux-image-6.1.0-18-amd64"
    assert model.kernel == "6.1.0-18-amd64" and model.system_info["disks"][0]["mountpoint"] == "/"
    assert model.last_boot_at.isoformat().startswith("2026-01-15T08:00")
    # A reboot command does not clear the flag; the agent's report does.
    assert agent.post("reports/system", {**facts, "reboot_required": False}).status_code == 204
    assert Agent.objects.get(pk=agent.id).reboot_required is False
    assert SystemEvent.objects.filter(event_type="agent_reboot", event_subtype="success").count() == 1


def test_system_report_bad_input(agent):
    response = agent.post("reports/system", {"reboot_required": True, "ip_addresses": ["not-an-ip"],
                                             "disks": [{"mountpoint": "/"}]})
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "ip_addresses[0]" in fields and "disks[0].total_bytes" in fields


def test_events_are_ingested_idempotently(agent):
    body = valid_body("events")
    body["events"].append({**body["events"][0], "id": str(uuid.uuid4()), "event_type": "agent_scan",
                           "event_subtype": "failed", "severity": "error", "message": "apt failed",
                           "metadata": {"exit_code": 100}})
    first = agent.post("events", body)
    assert first.status_code == 200 and first.json() == {"received": 2, "stored": 2}
    again = agent.post("events", body)
    assert again.json() == {"received": 2, "stored": 0}
    stored = SystemEvent.objects.filter(agent_id=agent.id, event_type__in=["agent_startup", "agent_scan"])
    assert stored.count() == 2
    scan = stored.get(event_type="agent_scan")
    assert scan.actor == "agent:web-01" and scan.metadata == {"exit_code": 100}
    # The agent's claimed time is kept as its claim; the history orders by when the server got it.
    assert scan.origin == "agent" and scan.reported_at == NOW
    assert timezone.now() - timedelta(minutes=1) < scan.created_at <= timezone.now()


def test_agents_cannot_send_server_side_event_types(agent):
    body = valid_body("events")
    body["events"][0]["event_type"] = "token_created"
    response = agent.post("events", body)
    assert response.status_code == 400
    assert "events[0].event_type" in response.json()["error"]["fields"]


def test_an_agents_claimed_time_never_moves_its_event_in_the_history(agent):
    """A year ahead or ten years back: the event is filed at the time the server received it."""
    claims = [timezone.now() + timedelta(days=365), timezone.now() - timedelta(days=3650)]
    for claim in claims:
        body = valid_body("events")
        body["events"][0]["occurred_at"] = claim.isoformat()
        assert agent.post("events", body).status_code == 200
    stored = SystemEvent.objects.filter(event_type="agent_startup").order_by("seq")
    assert [event.reported_at for event in stored] == claims
    assert all(timezone.now() - timedelta(minutes=1) < event.created_at <= timezone.now() for event in stored)


def test_what_an_agent_reports_is_marked_as_its_report_wherever_it_is_shown(agent, admin_client):
    body = valid_body("events")
    body["events"][0].update(event_type="config_changed", component="security", event_subtype="success",
                             message="Rate limits switched off by admin")
    assert agent.post("events", body).status_code == 200
    forged = SystemEvent.objects.get(event_type="config_changed", agent_id=agent.id)
    assert (forged.origin, forged.actor) == ("agent", "agent:web-01")
    page = admin_client.get("/audit/events/").content.decode()
    assert "the agent (its report)" in page
    detail = admin_client.get(f"/audit/events/{forged.pk}/").content.decode()
    assert "its own account, not checked by the server" in detail and "as the agent claims" in detail
    export = b"".join(admin_client.get("/audit/events/export.csv").streaming_content).decode()
    header, *rows = [line for line in export.splitlines() if line]
    assert "origin" in header.split(",") and any(str(forged.pk) in row and ",agent," in row for row in rows)
    only_server = admin_client.get("/audit/events/", {"origin": "server"}).content.decode()
    assert "Rate limits switched off by admin" not in only_server
    assert SystemEvent.objects.filter(origin="server").exists()  # the registration, recorded by the server


@pytest.mark.parametrize(("metadata", "problem"), [
    ({"blob": "x" * 9000}, "bytes as JSON"),
    ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "deeper than 4"),
    ({"list": [[[[1]]]]}, "deeper than 4"),
    ({f"k{index}": {"x": 1} for index in range(60)}, "more than 100 keys"),
])
def test_event_metadata_over_the_caps_is_refused_and_nothing_is_stored(agent, metadata, problem):
    body = valid_body("events")
    body["events"].append({**body["events"][0], "id": str(uuid.uuid4()), "metadata": metadata})
    before = SystemEvent.objects.count()
    response = agent.post("events", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and problem in " ".join(error["fields"]["events[1].metadata"])
    assert SystemEvent.objects.count() == before


def test_agent_events_get_an_insertion_seq_for_the_live_stream(agent):
    agent.post("events", valid_body("events"))
    newest = SystemEvent.objects.order_by("-seq").first()
    assert newest.event_type == "agent_startup"  # the last row inserted has the highest seq
    assert not SystemEvent.objects.filter(seq__isnull=True).exists()


def test_past_its_event_budget_an_agent_gets_429_with_retry_after_and_one_warning(agent, enroll):
    row = ServerSettings.current()
    row.rate_agent_events = "3/hour"
    row.save()
    two = valid_body("events")
    two["events"].append({**two["events"][0], "id": str(uuid.uuid4())})
    assert agent.post("events", two).json() == {"received": 2, "stored": 2}
    refused = [agent.post("events", {"events": [{**two["events"][0], "id": str(uuid.uuid4())} for _ in range(2)]})
               for _ in range(2)]
    for response in refused:
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(response["Retry-After"]) <= 3600
    assert SystemEvent.objects.filter(agent_id=agent.id, origin="agent").count() == 2  # nothing of the refused
    warning = SystemEvent.objects.get(metadata__reason="event_budget_exhausted")  # one, not one per refusal
    assert warning.agent_id == agent.model.pk and warning.origin == "server" and warning.metadata["budget"] == "3/hour"
    # One event still fits this window; another agent has a budget of its own.
    assert agent.post("events", valid_body("events")).status_code == 200
    assert enroll().post("events", two).status_code == 200
