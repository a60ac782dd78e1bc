"""Feed files → plain records. No database here: advisories_app.services stores what these return.

Every parser raises FeedFormatError with a sentence naming the problem, so a bad file is refused
before anything is written.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from cvss import CVSS3, CVSS4, CVSSError

from advisories_app.choices import FeedFormat
from advisories_app.platforms import debian_platform, osv_platform

CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,}$")
EPSS_SCORE_DATE = re.compile(r"score_date:(\d{4}-\d{2}-\d{2})")
UNKNOWN_FEED = "not a feed RedFlag knows (OSV, Debian Security Tracker JSON, CISA KEV or EPSS CSV)"


class FeedFormatError(ValueError):
    """The file is not the feed it claims to be, or not one we know."""


@dataclass(frozen=True)
class Fix:
    advisory_id: str
    cve_id: str
    distro: str
    release: str
    package: str
    fixed_version: str  # "" = affected, no fix yet


@dataclass
class CveFacts:
    summary: str = ""
    cvss_score: float | None = None
    cvss_vector: str = ""


@dataclass
class Advisories:
    """What an OSV or Debian tracker file says: fixes, and facts about the CVEs they name."""

    fixes: set[Fix] = field(default_factory=set)
    cves: dict[str, CveFacts] = field(default_factory=dict)
    records: int = 0


@dataclass(frozen=True)
class KevEntry:
    cve_id: str
    date_added: date | None
    due_date: date | None
    ransomware: bool


@dataclass(frozen=True)
class EpssScore:
    cve_id: str
    score: float
    percentile: float | None


@dataclass
class EpssScores:
    score_date: date | None
    scores: list[EpssScore]


# --- detection -----------------------------------------------------------------------------------


def read_source(path: Path) -> bytes | dict[str, bytes]:
    """A file's bytes (gunzipped), or a directory's *.json files by name (an unpacked OSV dump)."""
    if path.is_dir():
        files = {item.name: item.read_bytes() for item in sorted(path.rglob("*.json")) if item.is_file()}
        if not files:
            raise FeedFormatError(f"{path} holds no .json files")
        return files
    return gunzipped(path.read_bytes())


def gunzipped(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise FeedFormatError(f"a damaged gzip file: {exc}") from None
    return data


def detect_format(content: bytes | dict[str, bytes]) -> str:
    """Which feed a file is, from its content alone (file names vary between mirrors)."""
    if isinstance(content, dict) or content[:2] == b"PK":
        return FeedFormat.OSV
    head = content.lstrip()[:200]
    if head.startswith((b"#model_version", b"cve,epss")):
        return FeedFormat.EPSS
    if not head.startswith((b"{", b"[", b"\xef\xbb\xbf")):
        raise FeedFormatError(UNKNOWN_FEED)
    document = _json_or_lines(content)
    if isinstance(document, dict) and "vulnerabilities" in document and "catalogVersion" in document:
        return FeedFormat.KEV
    if isinstance(document, list) or (isinstance(document, dict) and "affected" in document):
        return FeedFormat.OSV
    if isinstance(document, dict) and all(isinstance(value, dict) for value in document.values()):
        return FeedFormat.DEBIAN_TRACKER
    raise FeedFormatError(UNKNOWN_FEED)


def _json_or_lines(content: bytes):
    """A JSON document, or the list of objects of a JSON Lines file."""
    text = _text(content)
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole_error:
        error = FeedFormatError(f"not valid JSON: {whole_error}")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise error
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        raise error from None


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedFormatError(f"not UTF-8 text: {exc}") from None


# --- OSV -----------------------------------------------------------------------------------------


def osv_records(content: bytes | dict[str, bytes]) -> Iterator[dict]:
    """OSV records from a directory's files, an osv.dev all.zip, one record, a JSON array or JSON Lines."""
    if isinstance(content, dict):
        documents: Iterable = (_json_or_lines(data) for data in content.values())
    elif content[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                documents = [_json_or_lines(archive.read(name)) for name in archive.namelist()
                             if name.endswith(".json")]
        except zipfile.BadZipFile as exc:
            raise FeedFormatError(f"a damaged zip file: {exc}") from None
    else:
        documents = [_json_or_lines(content)]
    for document in documents:
        for record in document if isinstance(document, list) else [document]:
            if not isinstance(record, dict) or not isinstance(record.get("id"), str) \
                    or not isinstance(record.get("affected", []), list):
                raise FeedFormatError("an OSV record needs an 'id' and an 'affected' list")
            yield record


def record_cves(record: dict) -> list[str]:
    """The CVE ids an OSV record fixes: its own id, aliases, upstream and related ids that are CVEs."""
    candidates = [record["id"], *(record.get("aliases") or []), *(record.get("upstream") or []),
                  *(record.get("related") or [])]
    return sorted({value for value in candidates if isinstance(value, str) and CVE_ID.match(value)})


def cvss_of(record: dict) -> tuple[float | None, str]:
    """The highest CVSS base score among the record's CVSS_V3/V4 vectors (computed by the cvss library)."""
    best: tuple[float | None, str] = (None, "")
    for severity in record.get("severity") or []:
        vector, kind = str(severity.get("score", "")), severity.get("type")
        try:
            score = float(CVSS3(vector).base_score) if kind == "CVSS_V3" else \
                float(CVSS4(vector).base_score) if kind == "CVSS_V4" else None
        except CVSSError:
            continue
        if score is not None and (best[0] is None or score > best[0]):
            best = (score, vector)
    return best


def _fixed_versions(affected: dict) -> list[str]:
    """The 'fixed' events of an affected entry's ECOSYSTEM ranges; [""] when it is affected with none."""
    fixed = [str(event["fixed"]) for version_range in affected.get("ranges") or []
             if version_range.get("type") == "ECOSYSTEM" for event in version_range.get("events") or []
             if "fixed" in event]
    return fixed or [""]


def _package_names(affected: dict) -> set[str]:
    """The package name plus, for Ubuntu, the binary packages built from it (what apt reports)."""
    names = {affected["package"]["name"]}
    specific = affected.get("ecosystem_specific") or {}
    for binary in specific.get("binaries") or [] if isinstance(specific, dict) else []:
        if isinstance(binary, dict) and binary.get("binary_name"):
            names.add(str(binary["binary_name"]))
    return names


def parse_osv(content: bytes | dict[str, bytes]) -> Advisories:
    result = Advisories()
    for record in osv_records(content):
        result.records += 1
        cves = record_cves(record)
        score, vector = cvss_of(record)
        for cve_id in cves:
            facts = result.cves.setdefault(cve_id, CveFacts())
            facts.summary = facts.summary or str(record.get("summary") or record.get("details") or "")[:2000]
            # An advisory's score covers each CVE only when it names one: a multi-CVE errata's
            # severity is its worst CVE's, not every CVE's.
            if len(cves) == 1 and score is not None and (facts.cvss_score is None or score > facts.cvss_score):
                facts.cvss_score, facts.cvss_vector = score, vector
        for affected in record.get("affected") or []:
            package = affected.get("package") or {}
            platform = osv_platform(str(package.get("ecosystem", "")))
            if platform is None or not package.get("name"):
                continue
            for name in _package_names(affected):
                for fixed in _fixed_versions(affected):
                    for cve_id in cves:
                        result.fixes.add(Fix(record["id"], cve_id, *platform, name, fixed))
    return result


# --- Debian Security Tracker ---------------------------------------------------------------------


def parse_debian_tracker(content: bytes) -> Advisories:
    """security-tracker.debian.org/tracker/data/json: {source package: {CVE: {releases: {name: {...}}}}}.

    "open" → affected with no fix yet; "resolved" with fixed_version "0" → never affected (skipped);
    "undetermined" → skipped (the tracker does not know yet).
    """
    document = _json_or_lines(content)
    if not isinstance(document, dict):
        raise FeedFormatError("the Debian tracker JSON is an object of source packages")
    result = Advisories()
    for package, entries in document.items():
        if not isinstance(entries, dict):
            raise FeedFormatError(f"package {package!r}: expected an object of CVE entries")
        for cve_id, entry in entries.items():
            result.records += 1
            if not CVE_ID.match(cve_id) or not isinstance(entry, dict):
                continue  # TEMP-… ids name issues that have no CVE yet
            result.cves.setdefault(cve_id, CveFacts(summary=str(entry.get("description") or "")[:2000]))
            for release_name, release in (entry.get("releases") or {}).items():
                platform = debian_platform(release_name)
                status = release.get("status") if isinstance(release, dict) else None
                fixed = str(release.get("fixed_version") or "") if isinstance(release, dict) else ""
                if platform is None or status not in ("open", "resolved") or fixed == "0":
                    continue
                result.fixes.add(Fix(f"debian-tracker:{package}", cve_id, *platform, package,
                                     fixed if status == "resolved" else ""))
    return result


# --- CISA KEV ------------------------------------------------------------------------------------


def _date(value) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def parse_kev(content: bytes) -> list[KevEntry]:
    document = _json_or_lines(content)
    entries = document.get("vulnerabilities") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FeedFormatError("a KEV catalogue has a 'vulnerabilities' list")
    result = []
    for entry in entries:
        cve_id = entry.get("cveID") if isinstance(entry, dict) else None
        if not isinstance(cve_id, str) or not CVE_ID.match(cve_id):
            raise FeedFormatError(f"a KEV entry without a valid cveID: {str(entry)[:120]}")
        result.append(KevEntry(cve_id, _date(entry.get("dateAdded")), _date(entry.get("dueDate")),
                               entry.get("knownRansomwareCampaignUse") == "Known"))
    return result


# --- FIRST EPSS ----------------------------------------------------------------------------------


def parse_epss(content: bytes) -> EpssScores:
    """epss_scores-YYYY-MM-DD.csv in every published shape: with or without the '#model_version' line
    and the percentile column."""
    lines = _text(content).splitlines()
    score_date = None
    if lines and lines[0].startswith("#"):
        match = EPSS_SCORE_DATE.search(lines[0])
        score_date = date.fromisoformat(match.group(1)) if match else None
        lines = lines[1:]
    reader = csv.DictReader(lines)
    if not reader.fieldnames or not {"cve", "epss"} <= set(reader.fieldnames):
        raise FeedFormatError("an EPSS file has a 'cve,epss[,percentile]' header")
    scores = []
    for number, row in enumerate(reader, start=2):
        try:
            score = float(row["epss"])
            percentile = float(row["percentile"]) if row.get("percentile") else None
        except (TypeError, ValueError):
            raise FeedFormatError(f"EPSS line {number}: not a number: {row}") from None
        if not CVE_ID.match(row["cve"] or "") or not 0 <= score <= 1:
            raise FeedFormatError(f"EPSS line {number}: not a CVE and a score between 0 and 1: {row}")
        scores.append(EpssScore(row["cve"], score, percentile))
    return EpssScores(score_date, scores)
