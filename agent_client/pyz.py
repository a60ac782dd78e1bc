"""Build the agent as one file: ``python -m agent_client.pyz [OUTPUT]`` writes redflag-agent.pyz.

The zipapp holds only the ``agent_client`` package; it runs on the system
Python 3.9+ with requests, psutil and cryptography installed from the OS.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import zipapp
import zipfile
from pathlib import Path
from typing import Optional

PACKAGE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = Path("redflag-agent.pyz")
INTERPRETER = "/usr/bin/env python3"


def build(output: Path = DEFAULT_OUTPUT, *, version: Optional[str] = None) -> Path:
    """Write the zipapp atomically and return its path. Byte-for-byte reproducible for the same sources.

    ``version`` stamps ``agent_client.__version__`` inside the archive (a release build).
    """
    output = Path(output)
    with tempfile.TemporaryDirectory() as staging:
        shutil.copytree(PACKAGE, Path(staging) / "agent_client",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        if version is not None:
            _stamp_version(Path(staging) / "agent_client" / "__init__.py", version)
        # Our own __main__ (zipapp's main= would drop the exit code the service manager relies on).
        (Path(staging) / "__main__.py").write_text(
            "import sys\n\nfrom agent_client.cli import main\n\nsys.exit(main())\n", encoding="utf-8")
        temporary = output.with_name(f".{output.name}.tmp")
        zipapp.create_archive(staging, target=temporary, interpreter=INTERPRETER, filter=lambda path: True)
    _normalize_timestamps(temporary)
    temporary.replace(output)
    return output


def _stamp_version(init_file: Path, version: str) -> None:
    if not re.match(r"^\d+(\.\d+){1,3}$", version):
        raise ValueError(f"{version!r} is not a version like 0.1.23")
    text = init_file.read_text(encoding="utf-8")
    stamped, count = re.subn(r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', text, flags=re.M)
    if count != 1:
        raise ValueError(f"{init_file} has no __version__ line to stamp")
    init_file.write_text(stamped, encoding="utf-8")


def _normalize_timestamps(path: Path) -> None:
    """Rewrite the archive with fixed member times and order, so the same sources give the same SHA-256."""
    with zipfile.ZipFile(path) as archive:
        members = sorted((info.filename, archive.read(info)) for info in archive.infolist() if not info.is_dir())
    with open(path, "rb") as handle:
        shebang = handle.readline()
    rebuilt = path.with_name(path.name + ".norm")
    with open(rebuilt, "wb") as handle:
        handle.write(shebang)
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
    rebuilt.chmod(0o755)
    rebuilt.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_client.pyz", description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--version", default=None, help="stamp this agent version into the archive")
    args = parser.parse_args(argv)
    path = build(Path(args.output), version=args.version)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
