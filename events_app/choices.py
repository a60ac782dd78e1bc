"""The SystemEvent taxonomy: the only place event vocabulary is defined."""

from django.db import models


class EventType(models.TextChoices):
    AGENT_STARTUP = "agent_startup"
    AGENT_REGISTRATION = "agent_registration"
    AGENT_CHECKIN = "agent_checkin"
    AGENT_SCAN = "agent_scan"
    AGENT_UPDATE = "agent_update"
    AGENT_INSTALL = "agent_install"
    AGENT_REBOOT = "agent_reboot"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_RENEWAL = "token_renewal"
    COMMAND_CREATED = "command_created"
    COMMAND_COMPLETED = "command_completed"
    CONFIG_CHANGED = "config_changed"
    AUTH_FAILURE = "auth_failure"
    SECURITY_VIOLATION = "security_violation"
    SERVER_STARTUP = "server_startup"
    MIGRATION = "migration"
    BULK_OPERATION = "bulk_operation"
    # Extension: a person logging in to the admin (failures are auth_failure).
    USER_LOGIN = "user_login"
    # Extensions for the audit trail itself: an auditor exported history; retention removed rows.
    AUDIT_EXPORT = "audit_export"
    EVENTS_PURGED = "events_purged"
    # Unattended patching (policies_app): groups, windows, a policy's decisions, rollouts and their stages.
    GROUP_CHANGED = "group_changed"
    MAINTENANCE_WINDOW = "maintenance_window"
    POLICY_DECISION = "policy_decision"
    ROLLOUT = "rollout"
    # Telling people (notifications_app, reports_app): a destination marked failing, a report produced.
    NOTIFICATION = "notification"
    REPORT = "report"
    # People and access (accounts_app): roles and scopes granted or removed, lock-outs, second factors.
    ROLE_CHANGED = "role_changed"
    USER_LOCKOUT = "user_lockout"
    MFA_CHANGED = "mfa_changed"


class Origin(models.TextChoices):
    """Who recorded an event: the server itself, or an agent reporting about itself (its own account,
    shown as such wherever the event is shown or exported)."""

    SERVER = "server", "Recorded by the server"
    AGENT = "agent", "Reported by the agent"
    # Events stored before origins were recorded (migration 0007): either may be true.
    UNKNOWN = "unknown", "Not known (recorded before origins were kept)"


class EventSubtype(models.TextChoices):
    INITIATED = "initiated"
    SUCCESS = "success"
    FAILED = "failed"
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Component(models.TextChoices):
    AGENT = "agent"
    SERVER = "server"
    BUILD = "build"
    DOWNLOAD = "download"
    CONFIG = "config"
    MIGRATION = "migration"
    SECURITY = "security"
    SCHEDULER = "scheduler"
    POLICY = "policy"
    NOTIFICATION = "notification"
    REPORTS = "reports"
    ACCOUNTS = "accounts"


# What an agent may report about itself through POST /agents/{id}/events.
# Server-side facts (tokens, auth, commands created) are never taken from an agent.
AGENT_REPORTABLE_TYPES = (
    EventType.AGENT_STARTUP,
    EventType.AGENT_REGISTRATION,
    EventType.AGENT_CHECKIN,
    EventType.AGENT_SCAN,
    EventType.AGENT_UPDATE,
    EventType.AGENT_INSTALL,
    EventType.AGENT_REBOOT,
    EventType.TOKEN_RENEWAL,
    EventType.CONFIG_CHANGED,
    EventType.SECURITY_VIOLATION,
    EventType.MIGRATION,
)
