"""Machine id, host facts, metrics and system facts from the real host (psutil, /proc, /etc)."""

from __future__ import annotations

import collections
import hashlib
import os
import re
from pathlib import Path

import pytest

from agent_client import machine

Partition = collections.namedtuple("Partition", "device mountpoint fstype opts")


def test_machine_id_uses_the_first_usable_source(tmp_path):
    missing = tmp_path / "machine-id"
    empty = tmp_path / "dbus-machine-id"
    empty.write_text("\n")
    product_uuid = tmp_path / "product_uuid"
    product_uuid.write_text("4C4C4544-0042-3510-8052-B4C04F384D32\n")

    raw, source = machine.read_machine_id([str(missing), str(empty), str(product_uuid)], windows=False)
    assert source == str(product_uuid)
    # Normalized: a DMI UUID in upper case hashes like its lower-case form.
    expected = hashlib.sha256(b"4c4c4544-0042-3510-8052-b4c04f384d32").hexdigest()
    assert machine.machine_id_hash([str(missing), str(empty), str(product_uuid)]) == expected
    assert re.match(r"^[0-9a-f]{64}$", expected)


def test_machine_id_prefers_etc_machine_id_order(tmp_path):
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    second.write_text("ffffffffffffffffffffffffffffffff\n")
    assert machine.read_machine_id([str(first), str(second)], windows=False)[1] == str(first)


def test_an_all_zero_uuid_is_not_a_machine_id(tmp_path):
    zero = tmp_path / "product_uuid"
    zero.write_text("00000000-0000-0000-0000-000000000000\n")
    with pytest.raises(machine.MachineIdError, match="empty"):
        machine.read_machine_id([str(zero)], windows=False)


def test_no_machine_id_names_every_source(tmp_path):
    paths = [str(tmp_path / "one"), str(tmp_path / "two")]
    with pytest.raises(machine.MachineIdError) as raised:
        machine.read_machine_id(paths, windows=False)
    assert all(path in str(raised.value) for path in paths)


def test_this_hosts_machine_id_hash():
    try:
        raw, source = machine.read_machine_id()
    except machine.MachineIdError:
        pytest.skip("this host has no machine id")
    assert source in machine.MACHINE_ID_PATHS
    assert machine.machine_id_hash() == hashlib.sha256(raw.strip().lower().encode()).hexdigest()


def test_host_facts_fit_the_registration_contract():
    facts = machine.host_facts()
    assert set(facts) == {"hostname", "os_family", "os_name", "os_version", "kernel", "arch"}
    assert facts["os_family"] in ("linux", "windows", "darwin", "freebsd", "other")
    assert facts["hostname"]
    for key, limit in machine.FACT_LIMITS.items():
        assert len(facts[key]) <= limit
    if Path("/etc/os-release").exists():
        release = machine.read_os_release()
        assert facts["os_name"] == release.get("NAME")


def test_os_family_mapping():
    assert machine.os_family("Linux") == "linux"
    assert machine.os_family("Windows") == "windows"
    assert machine.os_family("Darwin") == "darwin"
    assert machine.os_family("SunOS") == "other"


def test_os_release_parsing(tmp_path):
    path = tmp_path / "os-release"
    path.write_text('# comment\nNAME="Debian GNU/Linux"\nVERSION_ID=\'12\'\nID=debian\n\nbroken line\n')
    assert machine.read_os_release(str(path)) == {"NAME": "Debian GNU/Linux", "VERSION_ID": "12", "ID": "debian"}
    assert machine.read_os_release(str(tmp_path / "absent")) == {}


def test_metrics_fit_the_checkin_contract():
    metrics = machine.collect_metrics()
    assert set(metrics) <= {"cpu_percent", "memory_percent", "memory_used_bytes", "memory_total_bytes",
                            "disk_percent", "load_average", "uptime_seconds"}
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0 <= metrics[key] <= 100
    assert 0 < metrics["memory_used_bytes"] <= metrics["memory_total_bytes"]
    assert len(metrics["load_average"]) <= 3 and all(value >= 0 for value in metrics["load_average"])
    assert metrics["uptime_seconds"] >= 0


def test_disks_skip_pseudo_and_duplicate_mounts():
    partitions = [
        Partition("/dev/root", "/", "ext4", "rw"),
        Partition("proc", "/proc", "proc", "rw"),
        Partition("tmpfs", "/run", "tmpfs", "rw"),
        Partition("overlay", "/var/lib/docker/overlay2/x/merged", "overlay", "rw"),
        Partition("/dev/loop3", "/snap/core/1", "squashfs", "ro"),
        Partition("/dev/root", "/", "ext4", "rw"),
        Partition("/dev/sdz1", "/definitely/not/mounted/here", "ext4", "rw"),
    ]
    disks = machine.disks(partitions)
    assert [disk["mountpoint"] for disk in disks] == ["/"]
    root = disks[0]
    assert root["total_bytes"] > 0 and root["used_bytes"] + root["free_bytes"] <= root["total_bytes"]
    assert 0 <= root["percent"] <= 100


def test_reboot_required_flag_and_packages(tmp_path):
    (tmp_path / "reboot-required").write_text("*** System restart required ***\n")
    (tmp_path / "reboot-required.pkgs").write_text("linux-image-6.1.0-13-amd64\nlibc6\nlibc6\n")
    state = machine.reboot_required(str(tmp_path))
    assert state["required"] is True
    assert state["packages"] == ["libc6", "linux-image-6.1.0-13-amd64"]
    assert "libc6" in state["reason"]


def test_no_reboot_required_without_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no needs-restarting on this PATH
    assert machine.reboot_required(str(tmp_path), boot_dir=str(tmp_path), modules_dirs=()) == {
        "required": False, "reason": "", "reasons": [], "packages": []}


def test_system_facts_describe_the_host():
    facts = machine.system_facts()
    assert facts["os"]["family"] == machine.os_family()
    assert facts["cpu"]["logical_cores"] >= 1
    assert facts["memory"]["total_bytes"] > 0
    assert any(disk["mountpoint"] == "/" for disk in facts["disks"]) or os.name == "nt"
    assert all(entry["address"] not in ("127.0.0.1", "::1") for entry in facts["ip_addresses"])
    assert facts["uptime_seconds"] >= 0
    assert set(facts["reboot"]) == {"required", "reason", "reasons", "packages"}
