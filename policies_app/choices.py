"""Patching-policy vocabulary: the only place these strings are defined."""

from django.db import models

from agents_app.choices import UpdateSeverity

# Month-day value meaning "the last day of the month, whatever its length".
LAST_DAY_OF_MONTH = -1


class ApprovalScope(models.TextChoices):
    SECURITY = "security", "Security updates only"
    ALL = "all", "All updates"


class PolicyAction(models.TextChoices):
    DRY_RUN = "dry_run", "Dry-run only (an admin installs)"
    INSTALL_NO_EXTRA = "install_no_extra", "Install when nothing extra is pulled in"
    INSTALL_WITH_EXTRA = "install_with_extra", "Install, also with extra dependencies"


class RebootRule(models.TextChoices):
    NEVER = "never", "Never"
    WHEN_REQUIRED = "when_required", "When the machine says it is required"
    ALWAYS = "always", "Always after an install"


class MissedWindowRule(models.TextChoices):
    NEXT_WINDOW = "next_window", "Catch up in the next window"
    AS_SOON_AS_BACK = "as_soon_as_back", "Catch up as soon as the machine is back"


class RolloutStatus(models.TextChoices):
    RUNNING = "running", "Running"
    HALTED = "halted", "Halted (waits for an admin)"
    ABORTED = "aborted", "Aborted"
    COMPLETED = "completed", "Completed"


# A rollout that still decides who gets a turn: at most one per policy.
OPEN_ROLLOUT_STATUSES = (RolloutStatus.RUNNING, RolloutStatus.HALTED)


class TurnState(models.TextChoices):
    """One machine's turn in one window occurrence of a policy."""

    OPENED = "opened", "Opened"  # claimed by a sweep, decided in the same transaction
    MISSED = "missed", "Missed (machine offline)"
    DRY_RUN = "dry_run", "Dry-run sent"
    INSTALLING = "installing", "Installing"
    WAITING_ADMIN = "waiting_admin", "Waits for an admin"
    REBOOT_WAITING = "reboot_waiting", "Installed, reboot queued"
    REBOOTING = "rebooting", "Rebooting"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    NOTHING_TO_DO = "nothing_to_do", "Nothing to do"


# Still moving: the sweep follows these.
ACTIVE_TURN_STATES = (TurnState.DRY_RUN, TurnState.INSTALLING, TurnState.REBOOT_WAITING, TurnState.REBOOTING)
# A turn that counts as a success or a failure of its rollout stage.
SUCCEEDED_TURN_STATES = (TurnState.DONE, TurnState.NOTHING_TO_DO)
FAILED_TURN_STATES = (TurnState.FAILED,)

# Lowest to highest: a policy's minimum severity admits its own rank and above. Unknown counts as the lowest.
SEVERITY_RANK = {
    UpdateSeverity.UNKNOWN: 0,
    UpdateSeverity.LOW: 1,
    UpdateSeverity.MODERATE: 2,
    UpdateSeverity.IMPORTANT: 3,
    UpdateSeverity.CRITICAL: 4,
}
