"""An installed wheel carries the templates, so it renders without the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_templates(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("gym_backup-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    root = ROOT / "templates"
    templates = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for name in templates:
        assert f"generator/templates/{name}" in names
    assert "generator/cli.py" in names
