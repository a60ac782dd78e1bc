"""Facts about the host: its machine id, identity, live metrics, system and storage.

The machine id binds the agent's credentials to this host: the agent sends
the SHA-256 of it on every request and never the raw value.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import platform
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import psutil

from agent_client.scanners.base import ScanError, run_command

MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id", "/sys/class/dmi/id/product_uuid")
WINDOWS_MACHINE_GUID_KEY = r"SOFTWARE\Microsoft\Cryptography"
REBOOT_REQUIRED_DIR = "/run"
BOOT_DIR = "/boot"
MODULES_DIRS = ("/lib/modules", "/usr/lib/modules")
# A reboot reason names at most this many packages (the server keeps 255 characters of it).
MAX_REASON_PACKAGES = 5

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
    """The check-in's metrics; each value is left out when this host cannot give it.

    ``cpu_percent`` is the host's average since the previous check-in (the first: since the agent
    started), not a sample of its own: sampling a fifth of a second took as much of the agent's
    CPU as the rest of the metrics, and an average over the interval says more than a snapshot.
    """
    metrics: dict[str, Any] = {}
    try:
        metrics["cpu_percent"] = _clamp_percent(psutil.cpu_percent(interval=None))
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


def release_freed_memory() -> None:
    """Give the pages the C heap no longer uses back to the system (glibc's ``malloc_trim``).

    Start-up and commands parse tools' output and build reports; Python frees those objects
    afterwards, but glibc keeps the freed pages inside the process, and an agent would idle for
    hours with the peak of its last command in its resident memory (about 0.7 MiB after the first
    system and storage scans, bench/agent.py). The runner calls this after every cycle: it takes
    about 20 µs. Elsewhere (musl, macOS, Windows) it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


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


def reboot_required(
    run_dir: str = REBOOT_REQUIRED_DIR,
    *,
    boot_dir: str = BOOT_DIR,
    modules_dirs: Sequence[str] = MODULES_DIRS,
    running_kernel: Optional[str] = None,
    dnf_options: Sequence[str] = (),
    windows: Optional[bool] = None,
    registry: Optional[Callable[[str, Optional[str]], bool]] = None,
) -> dict[str, Any]:
    """{required, reason, reasons, packages}: every reason this host has to reboot, each found by its own rule.

    Linux: Debian/Ubuntu's flag file (with the packages that set it), an RPM system's
    ``needs-restarting -r``, and a running kernel older than the newest installed one. Windows:
    the pending-reboot registry entries. ``reason`` joins the reasons in the 255 characters the
    server keeps. The server clears its flag only when this report says no reason is left, so the
    flag outlives everything but the reboot itself. The keyword arguments point the checks at a
    test's private tree, root or recorded registry.
    """
    if windows if windows is not None else sys.platform == "win32":
        reasons = windows_reboot_reasons(registry or _windows_registry_has)
        packages: list[str] = []
    else:
        packages = debian_reboot_packages(run_dir) or []
        reasons = [reason for reason in (
            debian_reboot_reason(run_dir),
            rpm_reboot_reason(dnf_options),
            kernel_reboot_reason(running_kernel or platform.release(), boot_dir, modules_dirs),
        ) if reason]
    return {"required": bool(reasons), "reason": "; ".join(reasons)[:255], "reasons": reasons,
            "packages": packages}


def debian_reboot_packages(run_dir: str) -> Optional[list[str]]:
    """The packages that asked for a reboot (``reboot-required.pkgs``); None when no reboot was asked for."""
    if not (Path(run_dir) / "reboot-required").exists():
        return None
    try:
        listed = (Path(run_dir) / "reboot-required.pkgs").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return sorted({line.strip() for line in listed if line.strip()})


def debian_reboot_reason(run_dir: str) -> str:
    packages = debian_reboot_packages(run_dir)
    if packages is None:
        return ""
    if not packages:
        return f"{Path(run_dir) / 'reboot-required'} is set"
    shown = ", ".join(packages[:MAX_REASON_PACKAGES])
    more = f" and {len(packages) - MAX_REASON_PACKAGES} more" if len(packages) > MAX_REASON_PACKAGES else ""
    return f"{Path(run_dir) / 'reboot-required'} set by {shown}{more}"


def rpm_reboot_reason(dnf_options: Sequence[str] = ()) -> str:
    """``dnf needs-restarting -r`` (dnf-plugins-core), else a ``needs-restarting`` command (yum-utils,
    or zypper's on SUSE). Both exit 1 when a reboot is needed - and dnf also exits 1 when the plugin is
    missing, so a reboot counts only when the output says "Reboot is required" too."""
    dnf = shutil.which("dnf")
    commands = [[dnf, *dnf_options, "needs-restarting", "-r"]] if dnf else []
    if shutil.which("needs-restarting"):
        commands.append(["needs-restarting", "-r"])
    for argv in commands:
        try:
            result = run_command(argv, timeout=120)
        except ScanError:
            continue
        if result.exit_code == 0 and "reboot" in result.stdout.lower():
            return ""  # this tool answered: nothing core changed since boot
        if result.exit_code == 1 and "reboot is required" in result.stdout.lower():
            updated = sorted({line.strip()[2:].strip() for line in result.stdout.splitlines()
                              if line.strip().startswith("* ")})
            shown = ", ".join(updated[:MAX_REASON_PACKAGES])
            return "needs-restarting: core packages updated since boot" + (f" ({shown})" if shown else "")
    return ""


def kernel_version_key(release: str) -> tuple[tuple[int, Any], ...]:
    """Order kernel releases as their numbers read: 6.1.0-21 after 6.1.0-9, 5.14.0-427.el9 after 5.14.0-70.

    Runs of digits compare as numbers, other runs as text, and a number sorts after text
    (rpmvercmp's rule), so 6.1.0-21-amd64 > 6.1.0-18-amd64 and 5.10 > 5.9.
    """
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in re.findall(r"\d+|[A-Za-z]+", release))


def kernel_flavour(release: str) -> str:
    """Debian/Ubuntu's flavour (``amd64``, ``cloud-amd64``, ``generic``): only kernels of the running
    flavour count as its successors. Other distributions have one flavour per architecture."""
    match = re.fullmatch(r"[0-9.]+-[0-9]+-([a-z][a-z0-9-]*)", release)
    return match.group(1) if match else ""


def installed_kernels(boot_dir: str = BOOT_DIR, modules_dirs: Sequence[str] = MODULES_DIRS) -> set[str]:
    """Kernel releases with an image on disk: /boot/vmlinuz-<release> (Debian, Ubuntu, SUSE, EL) or
    <modules>/<release>/vmlinuz (Fedora, Arch). A modules directory alone (a leftover of a removed
    kernel, DKMS builds) is not a kernel; neither is a rescue image."""
    releases = {path.name[len("vmlinuz-"):] for path in _listed(Path(boot_dir), "vmlinuz-*")}
    for modules_dir in modules_dirs:
        releases |= {path.parent.name for path in _listed(Path(modules_dir), "*/vmlinuz")}
    return {release for release in releases if release and "rescue" not in release}


def _listed(directory: Path, pattern: str) -> list[Path]:
    try:
        return list(directory.glob(pattern))
    except OSError:
        return []


def kernel_reboot_reason(running: str, boot_dir: str = BOOT_DIR, modules_dirs: Sequence[str] = MODULES_DIRS) -> str:
    """Why the running kernel is not the newest installed one of its flavour; "" when it is."""
    flavour = kernel_flavour(running)
    newer = [release for release in installed_kernels(boot_dir, modules_dirs)
             if kernel_flavour(release) == flavour and kernel_version_key(release) > kernel_version_key(running)]
    if not newer:
        return ""
    return f"running kernel {running} is older than the installed {max(newer, key=kernel_version_key)}"


# Where Windows records that a reboot is pending: (key under HKLM, value name or None for the key itself, why).
WINDOWS_PENDING_REBOOT = (
    (r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending", None,
     "component servicing (CBS) has a reboot pending"),
    (r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired", None,
     "Windows Update installed updates that need a reboot"),
    (r"SYSTEM\CurrentControlSet\Control\Session Manager", "PendingFileRenameOperations",
     "files are waiting to be replaced at the next boot (PendingFileRenameOperations)"),
)


def windows_reboot_reasons(registry: Callable[[str, Optional[str]], bool]) -> list[str]:
    """The pending-reboot entries ``registry(key, value_name)`` finds under HKLM."""
    return [why for key, value, why in WINDOWS_PENDING_REBOOT if registry(key, value)]


def _windows_registry_has(key_path: str, value_name: Optional[str]) -> bool:
    import winreg  # type: ignore[import-not-found]  # noqa: PLC0415  (Windows only)

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key_path) as key:
            if value_name is not None:
                value, _ = winreg.QueryValueEx(key, value_name)
                return bool(value)
    except OSError:
        return False
    return True


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
