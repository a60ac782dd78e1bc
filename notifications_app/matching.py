"""Which rules an event matches: a pure function of the event's fields, and the event types each
trigger can match at all (so the dispatcher reads only those rows, and the post-save hook stays
silent for types no rule wants)."""

from __future__ import annotations

from advisories_app.mapping import KEV_EXPOSURE_KIND
from events_app.choices import EventSubtype, EventType, Origin, Severity
from notifications_app.choices import Trigger

SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}
FAILED_SUBTYPES = {EventSubtype.FAILED, EventSubtype.CRITICAL}

TRIGGER_EVENT_TYPES: dict[str, frozenset[str]] = {
    Trigger.INSTALL_FAILED: frozenset({EventType.AGENT_INSTALL, EventType.AGENT_UPDATE, EventType.POLICY_DECISION}),
    Trigger.ROLLOUT_HALTED: frozenset({EventType.ROLLOUT}),
    Trigger.SECURITY_VIOLATION: frozenset({EventType.SECURITY_VIOLATION}),
    Trigger.KEV_EXPOSURE: frozenset({EventType.AGENT_SCAN}),  # advisories_app.mapping records it
    Trigger.AGENT_OFFLINE: frozenset(),  # a state, checked by offline_alerts_check, not an event
}
# Never matched: a destination's failing notice is sent directly (notification_failing_report), and
# routing NOTIFICATION events through rules could send a failing destination's news to itself.
UNROUTED_TYPES = frozenset({EventType.NOTIFICATION})
EVERY_TYPE = None  # the wanted-types answer for a rule with no type chosen


def wanted_types(rules) -> frozenset[str] | None:
    """The event types any of ``rules`` could match; None means every type."""
    wanted: set[str] = set()
    for rule in rules:
        if rule.trigger == Trigger.EVENT:
            if not rule.event_types:
                return EVERY_TYPE
            wanted.update(rule.event_types)
        else:
            wanted.update(TRIGGER_EVENT_TYPES.get(rule.trigger, ()))
    return frozenset(wanted - UNROUTED_TYPES)


def severity_at_least(severity: str, minimum: str) -> bool:
    return SEVERITY_ORDER.get(severity, 0) >= SEVERITY_ORDER.get(minimum, 0)


def trigger_matches(rule, event) -> bool:
    """The rule's trigger and minimum severity against one SystemEvent (group checked by the caller)."""
    if event.event_type in UNROUTED_TYPES or not severity_at_least(event.severity, rule.min_severity):
        return False
    metadata = event.metadata if isinstance(event.metadata, dict) else {}  # an agent's claim may be anything
    kind, subtype = event.event_type, event.event_subtype
    if kind == EventType.REPORT and subtype not in FAILED_SUBTYPES:
        # A report reaches the rules taking reports as itself, with its files (notification_send); its
        # "requested" and "generated" events would only repeat it. A failed report is news.
        return False
    if rule.trigger == Trigger.EVENT:
        return not rule.event_types or kind in rule.event_types
    if rule.trigger == Trigger.INSTALL_FAILED:
        # An install (or update) an agent reports failed, or a patching policy's turn that failed
        # (policies_app: POLICY_DECISION, subtype failed, metadata decision "failed").
        return kind in (EventType.AGENT_INSTALL, EventType.AGENT_UPDATE, EventType.POLICY_DECISION) \
            and subtype in FAILED_SUBTYPES
    if rule.trigger == Trigger.ROLLOUT_HALTED:
        # policies_app records a halt as ROLLOUT/failed and an admin's abort as ROLLOUT/warning.
        return kind == EventType.ROLLOUT and subtype in (*FAILED_SUBTYPES, EventSubtype.WARNING)
    if rule.trigger == Trigger.SECURITY_VIOLATION:
        return kind == EventType.SECURITY_VIOLATION
    if rule.trigger == Trigger.KEV_EXPOSURE:
        # The server's own finding only: an agent may report agent_scan events with any metadata.
        return event.origin == Origin.SERVER and metadata.get("kind") == KEV_EXPOSURE_KIND
    return False
