"""A local Flatpak repository with a tiny runtime and apps, and private installations of it.

Everything is built with the real flatpak and ostree, with no network:

* the runtime is a directory with a ``metadata`` file and one file under ``files/``,
  exported with ``flatpak build-export --runtime``;
* each app is made by ``flatpak build-init`` (which needs its runtime installed: a
  separate *builder* installation holds it, so the installation under test only ever
  gets what the test installs), a shell script, appdata carrying its version (the
  ``app-info`` file ``build-update-repo`` puts in the remote's appstream, and the
  ``metainfo`` file flatpak reads the installed version from), ``build-finish`` and
  ``build-export``; ``build-update-repo`` then writes the summary and appstream.

Installations are user installations in directories of their own (``FLATPAK_USER_DIR``);
``FLATPAK_SYSTEM_DIR`` and ``FLATPAK_CONFIG_DIR`` point into the sandbox too, so no
flatpak started here can read or write the machine's real installations.

The remote is added with ``--no-gpg-verify``. That is for the test only: the repository
is a directory the test has just written, and signing it would prove nothing about the
scanner, which never adds a remote (a real remote's signing key is its admin's business).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

RUNTIME_ID = "org.redflag.Platform"
APP_ID = "org.redflag.App"
STEADY_ID = "org.redflag.Steady"
REMOTE = "redflag-test"


def _run(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C", **env})
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def _component(app_id: str, version: str) -> str:
    """The appdata of one app: its id, a name and one release, the version flatpak shows."""
    return (f'<component type="desktop-application"><id>{app_id}</id>'
            f"<name>RedFlag test app</name><summary>A test app</summary>"
            f'<releases><release version="{version}" timestamp="1700000000"/></releases></component>')


class FlatpakSandbox:
    """The repository under ``root/repo``, a builder installation, and installations for the tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.builder = root / "builder"
        self.system_dir = root / "system"
        self.config_dir = root / "config"
        _run(["ostree", "init", "--mode=archive-z2", f"--repo={self.repo}"], {})
        self.update_repo()  # a remote needs the summary file, even of an empty repository
        self.flatpak(self.builder, "remote-add", "--user", "--no-gpg-verify", "builder", f"file://{self.repo}")

    def env(self, installation: Path) -> dict[str, str]:
        """What confines flatpak to ``installation`` (as its user installation) and this sandbox."""
        return {"FLATPAK_USER_DIR": str(installation), "FLATPAK_SYSTEM_DIR": str(self.system_dir),
                "FLATPAK_CONFIG_DIR": str(self.config_dir)}

    def flatpak(self, installation: Path, *args: str) -> str:
        return _run(["flatpak", *args], self.env(installation))

    def export_runtime(self, branch: str, content: str) -> None:
        tree = self.root / "build" / f"runtime-{branch}"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "files").mkdir(parents=True)
        (tree / "metadata").write_text(f"[Runtime]\nname={RUNTIME_ID}\nruntime={RUNTIME_ID}/x86_64/{branch}\n"
                                       f"sdk={RUNTIME_ID}/x86_64/{branch}\n")
        (tree / "files" / "content").write_text(content + "\n")
        self.flatpak(self.builder, "build-export", "--runtime", "--files=files", "--no-update-summary",
                     str(self.repo), str(tree), branch)
        self.update_repo()
        # build-init needs the runtime (as SDK) installed: the builder installation has it, at its newest.
        self.flatpak(self.builder, "install", "--user", "-y", "--noninteractive", "--or-update", "builder",
                     f"runtime/{RUNTIME_ID}/x86_64/{branch}")

    def export_app(self, app_id: str, branch: str, runtime_branch: str, version: str) -> None:
        tree = self.root / "build" / f"{app_id}-{branch}"
        shutil.rmtree(tree, ignore_errors=True)
        self.flatpak(self.builder, "build-init", str(tree), app_id, RUNTIME_ID, RUNTIME_ID, runtime_branch)
        files = tree / "files"
        (files / "bin").mkdir(parents=True)
        (files / "bin" / "hello").write_text(f"#!/bin/sh\necho {app_id} {version}\n")
        (files / "bin" / "hello").chmod(0o755)
        (files / "share" / "metainfo").mkdir(parents=True)
        metainfo = '<?xml version="1.0"?>' + _component(app_id, version)
        (files / "share" / "metainfo" / f"{app_id}.metainfo.xml").write_text(metainfo)
        (files / "share" / "app-info" / "xmls").mkdir(parents=True)
        catalogue = f'<components version="0.8" origin="flatpak">{_component(app_id, version)}</components>'
        (files / "share" / "app-info" / "xmls" / f"{app_id}.xml.gz").write_bytes(gzip.compress(catalogue.encode()))
        self.flatpak(self.builder, "build-finish", "--command=hello", str(tree))
        self.flatpak(self.builder, "build-export", "--no-update-summary", str(self.repo), str(tree), branch)

    def update_repo(self) -> None:
        self.flatpak(self.builder, "build-update-repo", str(self.repo))

    def new_installation(self, path: Path) -> Path:
        """An installation with the test remote added (--no-gpg-verify: see the module docstring)."""
        self.flatpak(path, "remote-add", "--user", "--no-gpg-verify", REMOTE, f"file://{self.repo}")
        return path

    def install(self, installation: Path, *refs: str) -> None:
        self.flatpak(installation, "install", "--user", "-y", "--noninteractive", REMOTE, *refs)

    def deployed(self, installation: Path) -> dict[str, dict[str, str]]:
        """``flatpak list``, read here without the scanner: {ID/ARCH/BRANCH: {"commit", "version"}}."""
        listed = self.flatpak(installation, "list", "--user", "--columns=ref,active,version")
        rows = [(line.split("\t") + ["", ""])[:3] for line in listed.splitlines() if line.strip()]
        return {ref: {"commit": commit, "version": version} for ref, commit, version in rows}

    def remote_commit(self, ref: str) -> str:
        """The repository's commit of ``ref`` (ostree's own answer), as flatpak shortens it."""
        return _run(["ostree", "rev-parse", f"--repo={self.repo}", ref], {}).strip()[:12]
