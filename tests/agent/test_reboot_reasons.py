"""Why a host needs a reboot (machine.reboot_required), each rule against what it really reads.

* Debian/Ubuntu: ``reboot-required`` and ``.pkgs`` in a private run directory, as
  update-notifier-common's hooks write them.
* A running kernel older than the newest installed one: a private /boot and modules tree laid
  out as Debian (``/boot/vmlinuz-<release>``) and Fedora/Arch (``<modules>/<release>/vmlinuz``)
  lay them out, compared with the real comparison.
* RPM systems: the real ``dnf needs-restarting -r`` (Debian's dnf-plugins-core) in a private
  install root where a core package (dbus) was installed after this machine booted.
* Windows: the pending-reboot registry entries, read through the same lookup the agent uses on
  Windows, over a recorded list of the entries present (no Windows machine here: the key and value
  names are Windows' documented ones, the presence lists are written by hand).

No Django here: this file also runs under Python 3.9.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import pytest

from agent_client import machine
from tests.agent.conftest import REQUIRE_SYSTEM_TOOLS, require_root, require_tools
from tests.agent.dnf_fixtures.sandbox import DnfSandbox, RpmSpec, build_rpms

NO_KERNELS: dict = {"boot_dir": "/nonexistent/boot", "modules_dirs": ()}


def kernel_tree(tmp_path: Path, boot: tuple[str, ...] = (), modules: tuple[str, ...] = (),
                bare_modules: tuple[str, ...] = ()) -> dict:
    """/boot/vmlinuz-<release> for ``boot``, <modules>/<release>/vmlinuz for ``modules``, and module
    directories without a kernel image (leftovers of a removed kernel) for ``bare_modules``."""
    boot_dir, modules_dir = tmp_path / "boot", tmp_path / "lib" / "modules"
    boot_dir.mkdir(parents=True)
    for release in boot:
        (boot_dir / f"vmlinuz-{release}").write_bytes(b"kernel")
        (modules_dir / release).mkdir(parents=True)
    for release in modules:
        (modules_dir / release).mkdir(parents=True)
        (modules_dir / release / "vmlinuz").write_bytes(b"kernel")
    for release in bare_modules:
        (modules_dir / release / "kernel").mkdir(parents=True)
    return {"boot_dir": str(boot_dir), "modules_dirs": (str(modules_dir),)}


# --- Debian's flag file ---------------------------------------------------------------------------------


def test_debian_flag_names_the_packages_that_set_it(tmp_path):
    (tmp_path / "reboot-required").write_text("*** System restart required ***\n")
    (tmp_path / "reboot-required.pkgs").write_text("linux-image-6.1.0-21-amd64\nlibc6\nlibc6\n")
    state = machine.reboot_required(str(tmp_path), running_kernel="6.1.0-21-amd64", **NO_KERNELS)
    assert state["required"] is True
    assert state["packages"] == ["libc6", "linux-image-6.1.0-21-amd64"]
    assert state["reasons"][0] == f"{tmp_path / 'reboot-required'} set by libc6, linux-image-6.1.0-21-amd64"


def test_debian_flag_without_a_package_list(tmp_path):
    (tmp_path / "reboot-required").write_text("*** System restart required ***\n")
    state = machine.reboot_required(str(tmp_path), running_kernel="6.1.0-21-amd64", **NO_KERNELS)
    assert state["required"] is True and state["packages"] == []
    assert state["reasons"][0] == f"{tmp_path / 'reboot-required'} is set"


def test_a_long_package_list_is_cut_to_fit_the_servers_column(tmp_path):
    (tmp_path / "reboot-required").write_text("")
    (tmp_path / "reboot-required.pkgs").write_text("".join(f"linux-image-6.1.0-{n}-amd64-with-a-long-name\n"
                                                          for n in range(40)))
    state = machine.reboot_required(str(tmp_path), running_kernel="6.1.0-1-amd64", **NO_KERNELS)
    assert len(state["packages"]) == 40 and "and 35 more" in state["reasons"][0]
    assert len(state["reason"]) <= 255


# --- the running kernel ------------------------------------------------------------------------------------


def test_kernel_order_reads_numbers_as_numbers():
    key = machine.kernel_version_key
    assert key("6.1.0-21-amd64") > key("6.1.0-9-amd64")
    assert key("5.10.0-28-amd64") > key("5.9.0-1-amd64")
    assert key("5.14.0-427.13.1.el9_4.x86_64") > key("5.14.0-70.13.1.el9_0.x86_64")
    assert key("6.8.9-300.fc40.x86_64") > key("6.8.5-301.fc40.x86_64")
    assert key("6.1.0-21-amd64") == key("6.1.0-21-amd64")


def test_debian_a_newer_kernel_of_the_running_flavour_needs_a_reboot(tmp_path):
    tree = kernel_tree(tmp_path, boot=("6.1.0-18-amd64", "6.1.0-21-amd64", "6.1.0-9-amd64"))
    reason = machine.kernel_reboot_reason("6.1.0-18-amd64", **tree)
    assert reason == "running kernel 6.1.0-18-amd64 is older than the installed 6.1.0-21-amd64"
    assert machine.kernel_reboot_reason("6.1.0-21-amd64", **tree) == ""


def test_another_flavour_or_a_leftover_modules_directory_is_not_a_newer_kernel(tmp_path):
    tree = kernel_tree(tmp_path, boot=("6.1.0-18-amd64", "6.1.0-25-cloud-amd64", "0-rescue-abc123"),
                       bare_modules=("6.1.0-30-amd64",))
    assert machine.installed_kernels(**tree) == {"6.1.0-18-amd64", "6.1.0-25-cloud-amd64"}
    assert machine.kernel_reboot_reason("6.1.0-18-amd64", **tree) == ""


def test_fedora_kernels_live_in_the_modules_tree(tmp_path):
    tree = kernel_tree(tmp_path, modules=("6.8.5-301.fc40.x86_64", "6.8.9-300.fc40.x86_64"))
    state = machine.reboot_required(str(tmp_path / "run"), running_kernel="6.8.5-301.fc40.x86_64", **tree)
    assert state["required"] is True
    assert "running kernel 6.8.5-301.fc40.x86_64 is older than the installed 6.8.9-300.fc40.x86_64" in state["reasons"]


def test_every_reason_is_reported_together(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "reboot-required").write_text("")
    (tmp_path / "run" / "reboot-required.pkgs").write_text("linux-image-6.1.0-21-amd64\n")
    tree = kernel_tree(tmp_path, boot=("6.1.0-18-amd64", "6.1.0-21-amd64"))
    state = machine.reboot_required(str(tmp_path / "run"), running_kernel="6.1.0-18-amd64", **tree)
    assert len(state["reasons"]) == 2
    assert state["reason"] == "; ".join(state["reasons"])


# --- RPM systems: the real dnf needs-restarting -------------------------------------------------------------


def require_needs_restarting() -> None:
    require_tools("dnf", "rpm", "rpmbuild")
    require_root()
    probe = subprocess.run(["dnf", "needs-restarting", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        message = "dnf needs-restarting is not installed (Debian package dnf-plugins-core)"
        if REQUIRE_SYSTEM_TOOLS:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def core_and_plain_rpms(tmp_path_factory) -> dict:
    require_needs_restarting()
    base = tmp_path_factory.mktemp("needs-restarting")
    return build_rpms(base, [RpmSpec("dbus", "1.14.10"), RpmSpec("redflag-test-plain", "1.0")])


def rpm_root(tmp_path: Path, rpms: list[Path]) -> list[str]:
    """dnf options for a private install root holding ``rpms`` (installed now, so after this machine booted).
    Plugins stay on: needs-restarting is one."""
    sandbox = DnfSandbox(tmp_path)
    if rpms:
        sandbox.rpm_install(rpms)
    return [option for option in sandbox.dnf_options() if option != "--noplugins"]


def test_a_core_package_updated_since_boot_needs_a_reboot(tmp_path, core_and_plain_rpms):
    options = rpm_root(tmp_path, [core_and_plain_rpms["dbus-1.14.10-1.noarch.rpm"]])
    assert machine.rpm_reboot_reason(options) == "needs-restarting: core packages updated since boot (dbus)"
    state = machine.reboot_required(str(tmp_path / "run"), dnf_options=options, running_kernel="6.1.0-21-amd64",
                                    **NO_KERNELS)
    assert state["required"] is True and state["reasons"] == [
        "needs-restarting: core packages updated since boot (dbus)"]


def test_an_ordinary_package_does_not(tmp_path, core_and_plain_rpms):
    options = rpm_root(tmp_path, [core_and_plain_rpms["redflag-test-plain-1.0-1.noarch.rpm"]])
    assert machine.rpm_reboot_reason(options) == ""


def test_dnf_without_the_plugin_is_not_read_as_a_reboot(tmp_path, core_and_plain_rpms):
    """``dnf needs-restarting`` without the plugin also exits 1 ("No such command"): not a reboot."""
    options = rpm_root(tmp_path, [core_and_plain_rpms["dbus-1.14.10-1.noarch.rpm"]]) + ["--noplugins"]
    assert machine.rpm_reboot_reason(options) == ""


# --- Windows: the pending-reboot registry entries (recorded presence lists) ------------------------------------

CBS = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending"
WINDOWS_UPDATE = r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired"
SESSION_MANAGER = r"SYSTEM\CurrentControlSet\Control\Session Manager"


def registry(*present: tuple) -> Callable[[str, Optional[str]], bool]:
    """The agent's registry lookup over a recorded list of (key, value name or None) entries present."""
    return lambda key, value: (key, value) in present


@pytest.mark.parametrize("present, expected", [
    ((), []),
    (((WINDOWS_UPDATE, None),), ["Windows Update installed updates that need a reboot"]),
    (((CBS, None), (SESSION_MANAGER, "PendingFileRenameOperations")), [
        "component servicing (CBS) has a reboot pending",
        "files are waiting to be replaced at the next boot (PendingFileRenameOperations)"]),
    # The Session Manager key always exists; only its PendingFileRenameOperations value means a reboot.
    (((SESSION_MANAGER, None),), []),
])
def test_windows_pending_reboot_entries(present, expected):
    state = machine.reboot_required(windows=True, registry=registry(*present))
    assert state["reasons"] == expected and state["required"] is bool(expected)
    assert state["packages"] == []
