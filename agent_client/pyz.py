"""Build the agent as one file: ``python -m agent_client.pyz [OUTPUT]`` writes redflag-agent.pyz.

The zipapp holds only the ``agent_client`` package; it runs on the system
Python 3.9+ with requests, psutil and cryptography installed from the OS.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = Path("redflag-agent.pyz")
INTERPRETER = "/usr/bin/env python3"


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the zipapp atomically and return its path. Byte-for-byte reproducible for the same sources."""
    output = Path(output)
    with tempfile.TemporaryDirectory() as staging:
        shutil.copytree(PACKAGE, Path(staging) / "agent_client",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        temporary = output.with_name(f".{output.name}.tmp")
        zipapp.create_archive(staging, target=temporary, interpreter=INTERPRETER, main="agent_client.cli:main",
                              filter=lambda path: True)
    _normalize_timestamps(temporary)
    temporary.replace(output)
    return output


def _normalize_timestamps(path: Path) -> None:
    """Rewrite the archive with fixed member times and order, so the same sources give the same SHA-256."""
    import zipfile

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
    args = parser.parse_args(argv)
    path = build(Path(args.output))
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
