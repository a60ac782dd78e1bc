"""Facts about the host: its machine id, identity, live metrics, system and storage.

The machine id binds the agent's credentials to this host: the agent sends
the SHA-256 of it on every request and never the raw value.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import psutil

from agent_client.scanners.base import ScanError, run_command

MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id", "/sys/class/dmi/id/product_uuid")
WINDOWS_MACHINE_GUID_KEY = r"SOFTWARE\Microsoft\Cryptography"
REBOOT_REQUIRED_DIR = "/var/run"

# Mounts that are not storage an admin cares about.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devfs", "devpts",
        "devtmpfs", "efivarfs", "fuse.gvfsd-fuse", "fuse.lxcfs", "fusectl", "hugetlbfs", "mqueue", "nsfs",
        "overlay", "proc", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs",
        "tmpfs", "tracefs", "nullfs", "fdescfs", "linprocfs", "linsysfs",
    }
)

# Serializer limits on the server's register endpoint.
FACT_LIMITS = {"hostname": 255, "os_name": 128, "os_version": 128, "kernel": 128, "arch": 32}


class MachineIdError(Exception):
    """No usable machine id on this host."""


# --- machine id -----------------------------------------------------------------


def hash_machine_id(raw: str) -> str:
    """Lowercase hex SHA-256 of the normalized (stripped, lowercased) machine id."""
    return hashlib.sha256(raw.strip().lower().encode("utf-8")).hexdigest()


def _read_windows_machine_guid() -> Optional[str]:
    import winreg  # type: ignore[import-not-found]  # noqa: PLC0415  (Windows only)

    flags = winreg.KEY_READ | getattr(winreg, "KEY_WOW64_64KEY", 0)
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, WINDOWS_MACHINE_GUID_KEY, 0, flags) as key:
            value, _ = winreg.QueryValueEx(key, "MachineGuid")
    except OSError:
        return None
    return str(value).strip() or None


def read_machine_id(paths: Sequence[str] = MACHINE_ID_PATHS, *, windows: Optional[bool] = None) -> tuple[str, str]:
    """(raw machine id, where it came from). Raises MachineIdError when there is none."""
    if windows is None:
        windows = sys.platform == "win32"
    if windows:
        guid = _read_windows_machine_guid()
        if guid:
            return guid, r"HKLM\\" + WINDOWS_MACHINE_GUID_KEY + r"\MachineGuid"
        raise MachineIdError("cannot read MachineGuid from the Windows registry")
    problems = []
    for path in paths:
        try:
            value = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            continue
        if value and value.strip("0-") != "":
            return value, path
        problems.append(f"{path}: empty")
    raise MachineIdError("no machine id found (" + "; ".join(problems) + ")")


def machine_id_hash(paths: Sequence[str] = MACHINE_ID_PATHS) -> str:
    raw, _ = read_machine_id(paths)
    return hash_machine_id(raw)


# --- identity -------------------------------------------------------------------


def os_family(system: Optional[str] = None) -> str:
    system = (system or platform.system()).lower()
    if system in ("linux", "windows", "darwin", "freebsd"):
        return system
    return "other"


def read_os_release(path: str = "/etc/os-release") -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _os_name_version() -> tuple[str, str]:
    system = platform.system()
    if system == "Linux":
        release = read_os_release()
        if not release:
            release = read_os_release("/usr/lib/os-release")
        return release.get("NAME", "Linux"), release.get("VERSION_ID", release.get("VERSION", ""))
    if system == "Windows":
        return f"Windows {platform.release()}".strip(), platform.version()
    if system == "Darwin":
        return "macOS", platform.mac_ver()[0]
    return system, platform.release()


def host_facts() -> dict[str, str]:
    """What registration sends: hostname, OS family/name/version, kernel, arch."""
    os_name, os_version = _os_name_version()
    facts = {
        "hostname": socket.gethostname() or platform.node() or "unknown",
        "os_family": os_family(),
        "os_name": os_name,
        "os_version": os_version,
        "kernel": platform.release(),
        "arch": platform.machine(),
    }
    return {key: value[: FACT_LIMITS[key]] if key in FACT_LIMITS else value for key, value in facts.items()}


# --- metrics (every check-in) --------------------------------------------------------


def _root_mount() -> str:
    if sys.platform == "win32":
        return (os.environ.get("SystemDrive") or "C:") + "\\"
    return "/"


def collect_metrics() -> dict[str, Any]:
    """The check-in's metrics; each value is left out when this host cannot give it."""
    metrics: dict[str, Any] = {}
    try:
        metrics["cpu_percent"] = _clamp_percent(psutil.cpu_percent(interval=0.2))
    except Exception:  # psutil raises platform-specific errors; a metric is never worth a failed check-in
        pass
    try:
        memory = psutil.virtual_memory()
        metrics["memory_percent"] = _clamp_percent(memory.percent)
        metrics["memory_used_bytes"] = int(memory.total - memory.available)
        metrics["memory_total_bytes"] = int(memory.total)
    except Exception:
        pass
    try:
        metrics["disk_percent"] = _clamp_percent(psutil.disk_usage(_root_mount()).percent)
    except Exception:
        pass
    try:
        metrics["load_average"] = [round(max(0.0, value), 2) for value in psutil.getloadavg()][:3]
    except Exception:
        pass
    try:
        metrics["uptime_seconds"] = max(0, int(time.time() - psutil.boot_time()))
    except Exception:
        pass
    return metrics


def _clamp_percent(value: float) -> float:
    return round(min(100.0, max(0.0, float(value))), 1)


# --- system and storage facts (for reports/system) ----------------------------------


def disks(partitions: Optional[list[Any]] = None) -> list[dict[str, Any]]:
    """Per-mount usage of real file systems; pseudo and duplicate mounts skipped."""
    if partitions is None:
        partitions = psutil.disk_partitions(all=False)
    seen = set()
    result = []
    for partition in partitions:
        fstype = (partition.fstype or "").lower()
        if not fstype or fstype in PSEUDO_FILESYSTEMS or partition.mountpoint in seen:
            continue
        if sys.platform != "win32" and partition.mountpoint.startswith(("/proc/", "/sys/", "/dev/")):
            continue
        try:
            usage = psutil.disk_usage(partition.mountpoint)
        except (OSError, PermissionError):
            continue  # a CD-ROM drive with no medium, an unreachable network mount
        seen.add(partition.mountpoint)
        result.append(
            {
                "mountpoint": partition.mountpoint,
                "device": partition.device,
                "fstype": fstype,
                "total_bytes": int(usage.total),
                "used_bytes": int(usage.used),
                "free_bytes": int(usage.free),
                "percent": _clamp_percent(usage.percent),
            }
        )
    return result


def ip_addresses() -> list[dict[str, str]]:
    """Non-loopback, non-link-local addresses per interface."""
    families = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
    result = []
    for interface, addresses in sorted(psutil.net_if_addrs().items()):
        for address in addresses:
            family = families.get(address.family)
            if family is None:
                continue
            text = address.address.split("%", 1)[0]
            try:
                parsed = ipaddress.ip_address(text)
            except ValueError:
                continue
            if parsed.is_loopback or parsed.is_link_local:
                continue
            result.append({"interface": interface, "family": family, "address": text})
    return result


def reboot_required(run_dir: str = REBOOT_REQUIRED_DIR) -> dict[str, Any]:
    """{required, reason, packages}: Debian's flag file, else ``needs-restarting -r``, else Windows keys."""
    flag = Path(run_dir) / "reboot-required"
    if flag.exists():
        packages: list[str] = []
        try:
            listed = (Path(run_dir) / "reboot-required.pkgs").read_text().splitlines()
            packages = sorted({line.strip() for line in listed if line.strip()})
        except OSError:
            pass
        reason = "reboot-required flag set"
        if packages:
            reason += " by " + ", ".join(packages[:10])
        return {"required": True, "reason": reason[:255], "packages": packages}
    if sys.platform == "win32":
        return _windows_reboot_required()
    if shutil.which("needs-restarting"):
        try:
            result = run_command(["needs-restarting", "-r"], timeout=60)
        except ScanError:
            return {"required": False, "reason": "", "packages": []}
        # needs-restarting -r: exit 1 means a reboot is needed, 0 means not.
        if result.exit_code == 1:
            return {"required": True, "reason": "needs-restarting -r reports a reboot is needed", "packages": []}
    return {"required": False, "reason": "", "packages": []}


def _windows_reboot_required() -> dict[str, Any]:
    import winreg  # type: ignore[import-not-found]  # noqa: PLC0415  (Windows only)

    keys = (
        r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
        r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired",
    )
    for key_path in keys:
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key_path):
                return {"required": True, "reason": f"registry key {key_path} present", "packages": []}
        except OSError:
            continue
    return {"required": False, "reason": "", "packages": []}


def system_facts() -> dict[str, Any]:
    """OS, kernel, CPU, memory, disks, uptime, IPs and reboot state, for the system report."""
    os_name, os_version = _os_name_version()
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    boot_time = psutil.boot_time()
    frequency = None
    try:
        current = psutil.cpu_freq()
        frequency = round(current.max or current.current) if current else None
    except Exception:  # not available in some containers and VMs
        pass
    return {
        "hostname": socket.gethostname(),
        "os": {"family": os_family(), "name": os_name, "version": os_version, "kernel": platform.release(),
               "arch": platform.machine()},
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": psutil.cpu_count(logical=True) or 0,
            "physical_cores": psutil.cpu_count(logical=False) or 0,
            "max_mhz": frequency,
        },
        "memory": {"total_bytes": int(memory.total), "available_bytes": int(memory.available),
                   "swap_total_bytes": int(swap.total)},
        "disks": disks(),
        "boot_time": boot_time,
        "uptime_seconds": max(0, int(time.time() - boot_time)),
        "ip_addresses": ip_addresses(),
        "reboot": reboot_required(),
    }


def _cpu_model() -> str:
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()
