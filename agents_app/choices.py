"""Fleet vocabulary: the only place these strings are defined."""

from django.db import models


class PackageType(models.TextChoices):
    APT = "apt", "APT"
    DNF = "dnf", "DNF"
    DOCKER = "docker", "Docker images"
    WINDOWS_UPDATE = "windows_update", "Windows Update"
    WINGET = "winget", "winget"
    PACMAN = "pacman", "pacman"
    ZYPPER = "zypper", "zypper"
    FLATPAK = "flatpak", "Flatpak"


class SubsystemName(models.TextChoices):
    APT = "apt", "APT updates"
    DNF = "dnf", "DNF updates"
    DOCKER = "docker", "Docker image updates"
    WINDOWS_UPDATE = "windows_update", "Windows Update"
    WINGET = "winget", "winget updates"
    PACMAN = "pacman", "pacman updates"
    ZYPPER = "zypper", "zypper updates"
    FLATPAK = "flatpak", "Flatpak updates"
    STORAGE = "storage", "Storage"
    SYSTEM = "system", "System facts"


class SubsystemStatus(models.TextChoices):
    NEVER_RUN = "never_run", "Never run"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class CommandType(models.TextChoices):
    SCAN_UPDATES = "scan_updates"
    SCAN_STORAGE = "scan_storage"
    SCAN_SYSTEM = "scan_system"
    SCAN_DOCKER = "scan_docker"
    DRY_RUN_UPDATE = "dry_run_update"
    INSTALL_UPDATES = "install_updates"
    CONFIRM_DEPENDENCIES = "confirm_dependencies"
    ENABLE_HEARTBEAT = "enable_heartbeat"
    DISABLE_HEARTBEAT = "disable_heartbeat"
    REBOOT = "reboot"
    UPDATE_AGENT = "update_agent"


class CommandStatus(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


# Not finished: counts against max_pending_commands, blocks a duplicate.
OPEN_COMMAND_STATUSES = (CommandStatus.PENDING, CommandStatus.SENT, CommandStatus.RUNNING)


class CommandSource(models.TextChoices):
    SCHEDULER = "scheduler"
    HEARTBEAT = "heartbeat"
    WEB_UI = "web_ui"
    WEB_UI_BULK = "web_ui_bulk"
    API = "api"
    SYSTEM = "system"
    # Unattended patching: a policy's decision in a maintenance window (policies_app).
    POLICY = "policy"


class UpdateSeverity(models.TextChoices):
    """One vocabulary for every scanner (the agent's scanners/base.py SEVERITIES)."""

    CRITICAL = "critical"
    IMPORTANT = "important"
    MODERATE = "moderate"
    LOW = "low"
    UNKNOWN = "unknown"


class UpdateStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    PENDING_DEPENDENCIES = "pending_dependencies", "Pending dependencies"
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"
    IGNORED = "ignored"
    CLOSED = "closed", "No longer reported"


# Which scan command each subsystem schedules (params added for package managers).
SUBSYSTEM_SCAN = {
    SubsystemName.APT: (CommandType.SCAN_UPDATES, {"package_type": PackageType.APT}),
    SubsystemName.DNF: (CommandType.SCAN_UPDATES, {"package_type": PackageType.DNF}),
    SubsystemName.WINDOWS_UPDATE: (CommandType.SCAN_UPDATES, {"package_type": PackageType.WINDOWS_UPDATE}),
    SubsystemName.WINGET: (CommandType.SCAN_UPDATES, {"package_type": PackageType.WINGET}),
    SubsystemName.PACMAN: (CommandType.SCAN_UPDATES, {"package_type": PackageType.PACMAN}),
    SubsystemName.ZYPPER: (CommandType.SCAN_UPDATES, {"package_type": PackageType.ZYPPER}),
    SubsystemName.FLATPAK: (CommandType.SCAN_UPDATES, {"package_type": PackageType.FLATPAK}),
    SubsystemName.DOCKER: (CommandType.SCAN_DOCKER, {"package_type": PackageType.DOCKER}),
    SubsystemName.STORAGE: (CommandType.SCAN_STORAGE, {}),
    SubsystemName.SYSTEM: (CommandType.SCAN_SYSTEM, {}),
}


def names_in_words(names, limit: int = 3) -> str:
    """'openssl, curl, zlib1g and 4 more': a list of names short enough for a message or a list row."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def command_title(command_type: str, params: dict) -> str:
    """A command in words, naming its package manager and packages: 'Install updates (APT): openssl, curl'."""
    title = CommandType(command_type).label.capitalize() if command_type in CommandType.values else command_type
    package_type = params.get("package_type")
    if package_type in PackageType.values:
        title += f" ({PackageType(package_type).label})"
    packages = params.get("packages") or []
    return f"{title}: {names_in_words(packages)}" if packages else title
