"""Build a private RPM world for the DNF scanner tests.

Everything lives under one directory (pytest's tmp_path): noarch RPMs built
with rpmbuild from generated spec files, a createrepo_c repository with an
updateinfo.xml added by modifyrepo_c, and an install root whose rpmdb holds
the "old" versions.

The agent installs only signed packages (DnfScanner forces gpgcheck on every
repository), so the repository is signed the honest way: a throwaway GnuPG key
(:class:`SigningKey`, in its own GNUPGHOME) signs the RPMs with rpmsign, the
repository definition says ``gpgcheck=1`` with that key as ``gpgkey``, and the
key is imported into the install root's rpmdb, as a distribution's release
package does on a real host. Nothing is switched off to make the tests pass.

The machine's own rpm and dnf state is never touched:
rpmbuild gets a private ``--dbpath`` (Debian's rpm would otherwise create
``~/.rpmdb``) and every rpm/dnf call is confined with ``--root`` /
``--installroot``.

Used by tests/agent/test_dnf.py and by capture_outputs.py (which recorded the
parser fixtures in this directory).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import escape, quoteattr

C_LOCALE = {"LC_ALL": "C", "LANG": "C"}


@dataclasses.dataclass
class RpmSpec:
    name: str
    version: str
    release: str = "1"
    epoch: Optional[int] = None
    requires: tuple[str, ...] = ()
    # An arch-specific build (x86_64) beside a noarch one is how a repository offers one version twice.
    arch: str = "noarch"
    # "Obsoletes: old < 2" and "Provides: old = 2" are how a package is renamed.
    obsoletes: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"


@dataclasses.dataclass
class Advisory:
    advisory_id: str
    advisory_type: str  # security / bugfix / enhancement
    severity: str  # as written in updateinfo.xml: Critical, Important, ..., None
    title: str
    packages: tuple[RpmSpec, ...]
    cves: tuple[str, ...] = ()
    bugs: tuple[tuple[str, str], ...] = ()  # (id, title)
    description: str = "Test advisory."


def _run(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(C_LOCALE)
    completed = subprocess.run(list(argv), capture_output=True, text=True, env=env, **kwargs)
    if completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {completed.returncode}\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return completed


class SigningKey:
    """A passphrase-less RSA key in a private GNUPGHOME, for rpmsign; ``close`` stops its gpg-agent."""

    uid = "RedFlag Test Packages <packages@redflag.invalid>"

    def __init__(self, workdir: Path) -> None:
        # gpg-agent's socket lives in the home when /run/user/<uid> does not exist: keep the path short.
        self.home = Path(tempfile.mkdtemp(prefix="rf-gpg-"))
        self.public_key = workdir / "RPM-GPG-KEY-redflag-test"
        self._gpg("--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", self.uid, "rsa2048", "sign",
                  "never")
        self.public_key.write_text(self._gpg("--armor", "--export", self.uid).stdout)

    def _gpg(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["gpg", "--batch", "--homedir", str(self.home), *args])

    def sign(self, rpm_path: Path) -> None:
        _run(["rpmsign", "--addsign", "--define", f"__gpg {shutil.which('gpg')}", "--define", f"_gpg_name {self.uid}",
              "--define", f"_gpg_path {self.home}", str(rpm_path)], stdin=subprocess.DEVNULL)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def _spec_text(spec: RpmSpec) -> str:
    lines = [
        f"Name: {spec.name}",
        f"Version: {spec.version}",
        f"Release: {spec.release}",
        f"Summary: RedFlag test package {spec.name}",
        "License: MIT",
        f"BuildArch: {spec.arch}",
    ]
    if spec.epoch is not None:
        lines.append(f"Epoch: {spec.epoch}")
    lines.extend(f"Requires: {requirement}" for requirement in spec.requires)
    lines.extend(f"Obsoletes: {obsoleted}" for obsoleted in spec.obsoletes)
    lines.extend(f"Provides: {provided}" for provided in spec.provides)
    lines += [
        "",
        "%description",
        f"RedFlag test package {spec.name} {spec.version}.",
        "",
        "%install",
        f"mkdir -p %{{buildroot}}/usr/share/{spec.name}",
        f"echo {spec.version}-{spec.release} > %{{buildroot}}/usr/share/{spec.name}/version",
        "",
        "%files",
        f"/usr/share/{spec.name}/version",
        "",
    ]
    return "\n".join(lines)


def build_rpms(workdir: Path, specs: Sequence[RpmSpec], signing_key: Optional[SigningKey] = None) -> dict[str, Path]:
    """Build each spec into an RPM of its arch, signed when a key is given; returns {filename: path}.

    A spec has no compiled code, so an x86_64 build is the same files under another arch; rpmbuild's
    ``--target`` lets Debian's rpm build it whatever the build machine's arch.
    """
    topdir = workdir / "rpmbuild"
    for sub in ("SPECS", "SOURCES", "BUILD", "RPMS", "SRPMS"):
        (topdir / sub).mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for spec in specs:
        spec_path = topdir / "SPECS" / f"{spec.name}-{spec.version}-{spec.release}.spec"
        spec_path.write_text(_spec_text(spec))
        _run(
            [
                "rpmbuild",
                "--dbpath", str(workdir / "rpmbuild-db"),
                "--define", f"_topdir {topdir}",
                "--target", spec.arch,
                "-bb", str(spec_path),
            ]
        )
        path = topdir / "RPMS" / spec.arch / spec.filename
        assert path.is_file(), f"rpmbuild did not produce {path}"
        if signing_key is not None:
            signing_key.sign(path)
        built[spec.filename] = path
    return built


def updateinfo_xml(advisories: Sequence[Advisory]) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', "<updates>"]
    for adv in advisories:
        parts.append(
            f'  <update from="test@redflag.invalid" status="stable" '
            f"type={quoteattr(adv.advisory_type)} version=\"2.0\">"
        )
        parts.append(f"    <id>{escape(adv.advisory_id)}</id>")
        parts.append(f"    <title>{escape(adv.title)}</title>")
        parts.append('    <issued date="2024-01-15 00:00:00"/>')
        parts.append('    <updated date="2024-01-15 00:00:00"/>')
        parts.append(f"    <severity>{escape(adv.severity)}</severity>")
        parts.append(f"    <summary>{escape(adv.title)}</summary>")
        parts.append(f"    <description>{escape(adv.description)}</description>")
        parts.append("    <references>")
        for cve in adv.cves:
            parts.append(
                f"      <reference href={quoteattr('https://www.cve.org/CVERecord?id=' + cve)} "
                f"id={quoteattr(cve)} type=\"cve\" title={quoteattr(cve)}/>"
            )
        for bug_id, bug_title in adv.bugs:
            parts.append(
                f"      <reference href={quoteattr('https://bugs.redflag.invalid/' + bug_id)} "
                f"id={quoteattr(bug_id)} type=\"bugzilla\" title={quoteattr(bug_title)}/>"
            )
        parts.append("    </references>")
        parts.append("    <pkglist>")
        parts.append('      <collection short="redflag-test">')
        parts.append("        <name>RedFlag test</name>")
        for pkg in adv.packages:
            parts.append(
                f"        <package name={quoteattr(pkg.name)} version={quoteattr(pkg.version)} "
                f"release={quoteattr(pkg.release)} epoch=\"{pkg.epoch or 0}\" arch={quoteattr(pkg.arch)} "
                f"src={quoteattr(f'{pkg.name}-{pkg.version}-{pkg.release}.src.rpm')}>"
            )
            parts.append(f"          <filename>{escape(pkg.filename)}</filename>")
            parts.append("        </package>")
        parts.append("      </collection>")
        parts.append("    </pkglist>")
        parts.append("  </update>")
    parts.append("</updates>")
    return "\n".join(parts) + "\n"


def make_repository(repo_dir: Path, rpm_paths: Sequence[Path], advisories: Sequence[Advisory]) -> None:
    """createrepo_c a directory of RPMs, then add updateinfo with modifyrepo_c."""
    repo_dir.mkdir(parents=True, exist_ok=True)
    for path in rpm_paths:
        shutil.copy2(path, repo_dir / path.name)
    _run(["createrepo_c", "--quiet", str(repo_dir)])
    if advisories:
        updateinfo = repo_dir.parent / "updateinfo.xml"
        updateinfo.write_text(updateinfo_xml(advisories))
        _run(["modifyrepo_c", "--mdtype=updateinfo", str(updateinfo), str(repo_dir / "repodata")])


class DnfSandbox:
    """An install root, a private repository definition and dnf options for both.

    With a ``signing_key`` the repository is checked like a distribution's (gpgcheck=1, its key
    imported into the root); without one it is unsigned (gpgcheck=0), which only the output
    recorder uses: the agent's own installs refuse unsigned packages.
    """

    repo_id = "redflag-test"

    def __init__(self, base: Path, signing_key: Optional[SigningKey] = None) -> None:
        self.base = base
        self.root = base / "installroot"
        self.repo_dir = base / "repo"
        self.reposdir = base / "repos.d"
        self.config = base / "dnf.conf"
        self.root.mkdir(parents=True, exist_ok=True)
        self.reposdir.mkdir(parents=True, exist_ok=True)
        gpgcheck = "1" if signing_key is not None else "0"
        self.config.write_text(f"[main]\ngpgcheck={gpgcheck}\nbest=False\nskip_if_unavailable=False\n")
        (self.reposdir / f"{self.repo_id}.repo").write_text(
            f"[{self.repo_id}]\n"
            "name=RedFlag test repository\n"
            f"baseurl=file://{self.repo_dir}\n"
            "enabled=1\n"
            f"gpgcheck={gpgcheck}\n"
            + (f"gpgkey=file://{signing_key.public_key}\n" if signing_key is not None else "")
            + "metadata_expire=0\n"
        )
        _run(["rpm", "--root", str(self.root), "--initdb"])
        if signing_key is not None:
            _run(["rpm", "--root", str(self.root), "--import", str(signing_key.public_key)])

    def dnf_options(self) -> list[str]:
        # With --installroot, dnf 4 puts logs and persistdir inside the root
        # and prefixes cachedir with it; either way the cache stays under base.
        return [
            f"--config={self.config}",
            f"--installroot={self.root}",
            f"--setopt=reposdir={self.reposdir}",
            f"--setopt=cachedir={self.base / 'cache'}",
            "--releasever=12",
            "--noplugins",
        ]

    def rpm_install(self, rpm_paths: Sequence[Path]) -> None:
        _run(["rpm", "--root", str(self.root), "-i", *[str(p) for p in rpm_paths]])

    def installed(self, *names: str) -> dict[str, str]:
        """{name: version-release} for the named packages installed in the root."""
        completed = subprocess.run(
            ["rpm", "--root", str(self.root), "-q", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\\n", *names],
            capture_output=True,
            text=True,
        )
        found: dict[str, str] = {}
        for line in completed.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                found[parts[0]] = parts[1]
        return found


# The hard cases (issue 14), shared by test_dnf.py and capture_outputs.py: a renamed package whose
# new name obsoletes the installed one and carries a security advisory, and one version offered as
# noarch and as x86_64, once over an installed noarch package and once over an installed x86_64 one.
OBSOLETED = RpmSpec("redflag-test-old", "1.0")
OBSOLETING = RpmSpec("redflag-test-new", "2.0", obsoletes=("redflag-test-old < 2.0",),
                     provides=("redflag-test-old = 2.0",))
HARD_OLD = [OBSOLETED, RpmSpec("redflag-test-multi", "1.0"), RpmSpec("redflag-test-multix", "1.0", arch="x86_64")]
HARD_NEW = [
    OBSOLETING,
    RpmSpec("redflag-test-multi", "1.1"),
    RpmSpec("redflag-test-multi", "1.1", arch="x86_64"),
    RpmSpec("redflag-test-multix", "1.1"),
    RpmSpec("redflag-test-multix", "1.1", arch="x86_64"),
]
HARD_ADVISORIES = [
    Advisory("RFSA-2024:0101", "security", "Critical", "Critical: redflag-test-old renamed redflag-test-new",
             (OBSOLETING,), cves=("CVE-2024-1111",)),
]
