"""Flatpak scanner and installer, against the real flatpak and ostree.

The module builds a local repository (tests/agent/flatpak_fixtures/sandbox.py):
version 1 of a tiny runtime ``org.redflag.Platform//1`` and of ``org.redflag.App``
in two branches (``stable`` 1.0, ``beta`` 1.1b) and ``org.redflag.Steady``, all
installed into a private *template* installation; then version 2: a new commit of
``Platform//1``, a new runtime ``Platform//2``, ``App//stable`` 2.0 on that new
runtime and ``App//beta`` 1.2b. ``Steady`` does not change. Each test works on its
own copy of the template installation.

Installing runs flatpak's triggers (desktop database, icon cache, MIME) under
bubblewrap; as root here bwrap works. Were it refused, flatpak only skips the
triggers: the same update with ``FLATPAK_BWRAP=/bin/false`` still succeeds
(tried on flatpak 1.14.10), so nothing below depends on it.

No Django here: this file also runs under Python 3.9.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from agent_client.executor import CommandExecutor, ExecutedLedger
from agent_client.outbox import Outbox
from agent_client.scanners.base import ScanError
from agent_client.scanners.flatpak import (
    FlatpakScanner,
    answer_for,
    parse_plan,
    run_answering,
    size_in_bytes,
    table_rows,
)
from tests.agent.conftest import require_tools
from tests.agent.flatpak_fixtures.sandbox import APP_ID, REMOTE, RUNTIME_ID, STEADY_ID, FlatpakSandbox
from tests.agent.hostile import ToolShims, hostile_names, refuse_every_name
from tests.agent.test_executor import AGENT_ID, Signer

STABLE = f"{APP_ID}/x86_64/stable"
BETA = f"{APP_ID}/x86_64/beta"
RUNTIME_1 = f"{RUNTIME_ID}/x86_64/1"
RUNTIME_2 = f"{RUNTIME_ID}/x86_64/2"
STEADY = f"{STEADY_ID}/x86_64/stable"
# The machine's own installations, which no test may touch.
REAL_INSTALLATIONS = (Path("/var/lib/flatpak"), Path.home() / ".local" / "share" / "flatpak", Path("/etc/flatpak"))


# ---------------------------------------------------------------------------
# Parsers and the dry-run's answers (shapes flatpak 1.14 prints)


def test_sizes_are_read_as_flatpak_prints_them():
    assert size_in_bytes("714 bytes") == 714
    assert size_in_bytes("< 2.6 kB") == 2600
    assert size_in_bytes("1.0 GB") == 10**9
    assert size_in_bytes("-") is None
    assert size_in_bytes("") is None


def test_table_rows_pad_the_empty_cells_flatpak_leaves_out():
    assert table_rows("a\tb\tc\nd\n\n", 3) == [["a", "b", "c"], ["d", "", ""]]


def test_parse_plan_with_and_without_the_arch_column():
    recorded = (" 1.\t   \torg.redflag.Platform\t2\ti\ttest\t< 132 bytes\n"
                " 2.\t   \torg.redflag.App\tstable\tu\ttest\t< 714 bytes\n")
    assert parse_plan(recorded, "x86_64") == [
        {"name": RUNTIME_2, "action": "install", "remote": "test", "download": "< 132 bytes"},
        {"name": STABLE, "action": "update", "remote": "test", "download": "< 714 bytes"},
    ]
    # Not recorded: flatpak adds the Arch column when a step is not for the default arch.
    with_arch = " 1.\t   \torg.freedesktop.Platform.GL32.default\ti386\t23.08\tu\tflathub\t< 40 MB\n"
    assert parse_plan(with_arch, "x86_64")[0]["name"] == "org.freedesktop.Platform.GL32.default/i386/23.08"


def test_the_dry_run_declines_only_the_final_question():
    assert answer_for("Proceed with these changes to the user installation? [Y/n]: ") == "n"
    assert answer_for("Do you want to install it? [Y/n]: ") == "y"
    assert answer_for("Replace it with org.new.App? [Y/n]: ") == "y"
    # Anything else would change the installation before "Proceed?" (e.g. keep a new remote): no, or abort.
    assert answer_for("Should the remote be kept for future installations? [Y/n]: ") == "n"
    assert answer_for("Which do you want to use (0 to abort)? [0-2]: ") == "0"


def test_run_answering_answers_each_question_on_a_terminal_once():
    # A shell stands in for flatpak's questions; `read` takes each answer from the terminal.
    script = ('printf "Do you want to install it? [Y/n]: "; read first; echo "got $first"; '
              'printf "Proceed with these changes to the user installation? [Y/n]: "; read second; '
              'echo "got $second"; test -t 0 && echo "on a terminal"')
    result = run_answering(["sh", "-c", script], env={}, timeout=30)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()  # the terminal echoes each answer after its question
    assert [line for line in lines if line.startswith("got ")] == ["got y", "got n"]
    assert lines[-1] == "on a terminal"


def test_run_answering_stops_a_process_at_its_timeout():
    started = time.monotonic()
    with pytest.raises(ScanError, match="did not finish within"):
        run_answering(["sleep", "30"], env={}, timeout=0.5)
    assert time.monotonic() - started < 10


def test_an_installation_name_is_checked_before_it_becomes_an_option():
    assert FlatpakScanner("extra_disk").installation_options == ["--installation=extra_disk"]
    for bad in ("--user", "a b", "x;id", ""):
        with pytest.raises(ValueError):
            FlatpakScanner(bad)


# ---------------------------------------------------------------------------
# The real flatpak


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[FlatpakSandbox, Path]:
    """The sandbox with version 2 in the repository and the template installation still at version 1."""
    require_tools("flatpak", "ostree")
    sandbox = FlatpakSandbox(tmp_path_factory.mktemp("flatpak"))
    sandbox.export_runtime("1", "runtime 1, first build")
    for app_id, branch, version in ((APP_ID, "stable", "1.0"), (APP_ID, "beta", "1.1b"), (STEADY_ID, "stable", "1")):
        sandbox.export_app(app_id, branch, "1", version)
    sandbox.update_repo()
    template = sandbox.new_installation(sandbox.root / "template")
    sandbox.install(template, RUNTIME_1, STABLE, BETA, STEADY)

    sandbox.export_runtime("1", "runtime 1, second build")
    sandbox.export_runtime("2", "runtime 2")
    sandbox.export_app(APP_ID, "stable", "2", "2.0")
    sandbox.export_app(APP_ID, "beta", "1", "1.2b")
    sandbox.update_repo()
    return sandbox, template


@pytest.fixture
def installation(built, tmp_path) -> Path:
    """A copy of the template installation, for one test to change."""
    _, template = built
    return Path(shutil.copytree(template, tmp_path / "installation", symlinks=True))


@pytest.fixture
def sandbox(built) -> FlatpakSandbox:
    return built[0]


def scanner_for(sandbox: FlatpakSandbox, installation: Path) -> FlatpakScanner:
    return FlatpakScanner("user", env=sandbox.env(installation))


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``roots`` with its size and modification time (empty if absent)."""
    found = {}
    for root in roots:
        for directory, subdirectories, files in os.walk(root):
            for name in [*subdirectories, *files]:
                status = os.lstat(os.path.join(directory, name))
                found[os.path.join(directory, name)] = (status.st_size, status.st_mtime_ns)
    return found


def test_scan_finds_each_pending_update_and_agrees_with_flatpaks_own_listing(sandbox, installation):
    scanner = scanner_for(sandbox, installation)
    deployed = sandbox.deployed(installation)
    records = {record.name: record for record in scanner.scan()}

    # Two branches of one app are two names; the unchanged app is not an update.
    assert sorted(records) == [BETA, STABLE, RUNTIME_1]
    assert (records[STABLE].current_version, records[STABLE].available_version) == ("1.0", "2.0")
    assert (records[BETA].current_version, records[BETA].available_version) == ("1.1b", "1.2b")
    # A runtime without appdata: its versions are the commits.
    runtime_commit = sandbox.remote_commit(f"runtime/{RUNTIME_1}")
    assert (records[RUNTIME_1].current_version, records[RUNTIME_1].available_version) == (
        deployed[RUNTIME_1]["commit"], runtime_commit)
    for name, record in records.items():
        assert record.metadata["current_commit"] == deployed[name]["commit"]
        assert record.metadata["available_commit"] == sandbox.remote_commit(f"{record.metadata['kind']}/{name}")
        assert record.metadata["current_commit"] != record.metadata["available_commit"]
        assert (record.repository, record.severity, record.is_security) == (REMOTE, "unknown", False)
        assert record.metadata["installation"] == "user"
        assert record.size_bytes and record.size_bytes > 0
    assert [records[STABLE].metadata["kind"], records[RUNTIME_1].metadata["kind"]] == ["app", "runtime"]
    # The server takes every one of them: no name is refused or reported twice.
    kept, not_checked = scanner.sort_for_report(list(records.values()))
    assert (len(kept), not_checked, scanner.last_not_checked) == (3, [], [])

    # flatpak's own comparison, `flatpak remote-ls --updates`, read by hand and through native_listing.
    own = sandbox.flatpak(installation, "remote-ls", "--user", "--updates", "--columns=ref")
    assert sorted(line.split("/", 1)[1] for line in own.splitlines()) == sorted(records)
    assert scanner.native_listing() == {name: record.available_version for name, record in records.items()}


def test_dry_run_names_the_new_runtime_and_changes_nothing(sandbox, installation):
    scanner = scanner_for(sandbox, installation)
    before = snapshot(installation)
    result = scanner.dry_run([STABLE])
    assert result.succeeded, result.output_tail
    assert result.dependencies == [RUNTIME_2]
    assert [(step["name"], step["action"]) for step in result.packages] == [(RUNTIME_2, "install"), (STABLE, "update")]
    assert snapshot(installation) == before  # not one file of the installation written, not even a download
    assert RUNTIME_2 not in sandbox.deployed(installation)

    # The beta branch stays on runtime 1: its plan pulls in runtime 1's update, nothing new.
    beta = scanner.dry_run([BETA])
    assert beta.succeeded and beta.dependencies == [RUNTIME_1], beta.output_tail
    assert snapshot(installation) == before


def test_install_really_updates_and_the_real_installations_stay_untouched(sandbox, installation):
    scanner = scanner_for(sandbox, installation)
    real_before = snapshot(*REAL_INSTALLATIONS)
    before = sandbox.deployed(installation)
    result = scanner.install([STABLE])
    assert result.succeeded, result.output_tail
    after = sandbox.deployed(installation)
    assert after[STABLE]["commit"] == sandbox.remote_commit(f"app/{STABLE}") != before[STABLE]["commit"]
    assert after[STABLE]["version"] == "2.0"
    assert RUNTIME_2 in after  # the new runtime came with it
    assert after[BETA] == before[BETA] and after[STEADY] == before[STEADY]  # nothing else was updated
    assert {step["name"] for step in result.packages} == {STABLE, RUNTIME_2}
    assert sorted(record.name for record in scanner.scan()) == [BETA, RUNTIME_1]
    assert snapshot(*REAL_INSTALLATIONS) == real_before


def test_refs_of_a_disabled_remote_are_listed_as_not_checked(sandbox, installation):
    sandbox.flatpak(installation, "remote-add", "--user", "--no-gpg-verify", "other", f"file://{sandbox.repo}")
    sandbox.flatpak(installation, "remote-modify", "--user", "--disable", REMOTE)
    scanner = scanner_for(sandbox, installation)
    assert scanner.is_available()  # "other" is enabled
    assert scanner.scan() == []
    assert scanner.last_not_checked == [
        {"name": name, "reason": f"not checked: its remote '{REMOTE}' is disabled or removed"}
        for name in sorted(sandbox.deployed(installation))]


def test_a_ref_that_is_not_installed_fails_in_dry_run_and_install(sandbox, installation):
    scanner = scanner_for(sandbox, installation)
    before = sandbox.deployed(installation)
    for operation in (scanner.dry_run, scanner.install):
        result = operation(["org.redflag.Missing/x86_64/stable"])
        assert not result.succeeded
        assert "org.redflag.Missing/x86_64/stable not installed" in result.output_tail
    assert sandbox.deployed(installation) == before


def test_is_available_only_with_an_enabled_remote(sandbox, tmp_path):
    empty = tmp_path / "empty"
    scanner = scanner_for(sandbox, empty)
    assert not scanner.is_available()  # flatpak is here, but a scan could only fail
    sandbox.new_installation(empty)
    assert scanner.is_available()
    sandbox.flatpak(empty, "remote-modify", "--user", "--disable", REMOTE)
    assert not scanner.is_available()
    assert not FlatpakScanner("user", env=sandbox.env(empty), binary="redflag-no-such-flatpak").is_available()


def test_real_flatpak_never_sees_a_hostile_name(sandbox, installation, tmp_path, monkeypatch):
    """Through the executor (a signed command, as the server sends it) and the scanner itself."""
    before = sandbox.deployed(installation)
    shims = ToolShims(tmp_path / "shims", ["flatpak"], monkeypatch)
    marker = tmp_path / "pwned"
    signer = Signer()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    scanner = scanner_for(sandbox, installation)
    executor = CommandExecutor(agent_id=AGENT_ID, signing_keys=[signer.public], outbox=outbox,
                               ledger=ExecutedLedger(tmp_path / "executed.sqlite3"), scanners={"flatpak": scanner},
                               system_facts=dict, record=lambda event: None)
    bundle = tmp_path / "evil.flatpak"
    names = hostile_names(marker=marker, url=f"file://{sandbox.repo}", package_file=bundle)
    names += [f"{REMOTE}:{APP_ID}", f"app/{STABLE}", f"{APP_ID}//stable", "org.redflag.*", "--reinstall",
              "org.redflag.App/x86_64/stable --commit=0"]
    refuse_every_name(names=names, valid=BETA, package_type="flatpak", signer=signer, executor=executor,
                      scanner=scanner, outbox=outbox)
    # No flatpak process was given a name. The only one an executor may start is its availability probe
    # (`flatpak remotes`), which carries none; the executor being edited now no longer probes there.
    assert set(shims.started()) <= {"flatpak remotes --user --columns=name"}
    assert not marker.exists()

    # The same route with a valid name reaches the real flatpak, after "--".
    install = signer.command("install_updates", {"package_type": "flatpak", "packages": [BETA]})
    assert executor.handle(install) == "succeeded"
    # The update of BETA; the rescan after the install refreshes appstream with an "update" of its own.
    (started,) = [line for line in shims.started_by("flatpak") if " update " in line and " -- " in line]
    assert started.endswith(f" update --user -y --noninteractive -- {BETA}")
    after = sandbox.deployed(installation)
    assert after[BETA]["version"] == "1.2b"
    assert after[STABLE] == before[STABLE]  # only the valid name was acted on
