"""``scan --verify``: a scanner's answer beside the package tool's own plain listing.

A scanner parses tool output that changes between versions and distributions; a parser that
silently drops a row, or invents one, looks exactly like a correct scan. ``Scanner.native_listing``
asks the tool the simplest "what would upgrade" question by another route. Where the two
disagree, one of them is wrong, and that is shown (the CLI prints it) or recorded as a warning
event (the agent, after a scan the server asked to verify), never hidden.

Only names and available versions are compared: they are what both routes can say. Severity,
security flags and repositories come from the scanner alone and are not checked here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from agent_client.events import AGENT_SCAN, make_event
from agent_client.scanners.base import ScanError, Scanner, UpdateRecord

# A warning event names at most this many disagreements (each field cut to FIELD_CHARS), so that
# its metadata stays inside the server's caps (protocol.event_metadata_problem).
MAX_REPORTED = 20
FIELD_CHARS = 80


@dataclasses.dataclass(frozen=True)
class Disagreement:
    """One package the two routes see differently; None: that route does not list it at all."""

    name: str
    scanned: Optional[str]
    native: Optional[str]

    def describe(self) -> str:
        if self.scanned is None:
            return f"{self.name}: the tool lists {self.native}, the scan missed it"
        if self.native is None:
            return f"{self.name}: the scan reports {self.scanned}, the tool does not list it"
        return f"{self.name}: the scan reports {self.scanned}, the tool lists {self.native}"

    def to_dict(self) -> dict[str, Optional[str]]:
        return {key: None if value is None else value[:FIELD_CHARS]
                for key, value in (("name", self.name), ("scanned", self.scanned), ("native", self.native))}


def compare(records: Sequence[UpdateRecord], listing: Mapping[str, str]) -> list[Disagreement]:
    """Every name on which the scan's records and the tool's listing differ, by name."""
    scanned = {record.name: record.available_version for record in records}
    return [
        Disagreement(name, scanned.get(name), listing.get(name))
        for name in sorted(set(scanned) | set(listing))
        if scanned.get(name) != listing.get(name)
    ]


@dataclasses.dataclass
class Verification:
    package_type: str
    disagreements: list[Disagreement] = dataclasses.field(default_factory=list)
    # Why no comparison could be made ("" when one was).
    unverified: str = ""

    def summary(self) -> str:
        if self.unverified:
            return f"not verified: {self.unverified}"
        if self.disagreements:
            return f"disagrees with the tool's own listing on {len(self.disagreements)} package(s)"
        return "agrees with the tool's own listing"

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "unverified": self.unverified,
                "disagreements": [item.to_dict() for item in self.disagreements]}


def verify_scan(scanner: Scanner, records: Sequence[UpdateRecord]) -> Verification:
    """Compare ``records`` (what ``scanner.scan()`` just returned) with the tool's own listing."""
    try:
        listing = scanner.native_listing()
    except NotImplementedError:
        return Verification(scanner.package_type, unverified=f"{scanner.package_type} has no native listing")
    except ScanError as exc:
        return Verification(scanner.package_type, unverified=f"the native listing failed: {exc}")
    return Verification(scanner.package_type, compare(records, listing))


def disagreement_event(verification: Verification) -> dict[str, Any]:
    """The warning an agent records when a scan it was asked to verify disagrees with its tool."""
    shown = verification.disagreements[:MAX_REPORTED]
    message = (f"{verification.package_type} scan {verification.summary()}: "
               + "; ".join(item.describe() for item in shown[:3]))
    return make_event(
        AGENT_SCAN, "warning", message, severity="warning",
        metadata={"reason": "scan_verify_disagreement", "package_type": verification.package_type,
                  "disagreements": len(verification.disagreements),
                  "packages": [item.to_dict() for item in shown]},
    )
