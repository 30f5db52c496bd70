"""An installed wheel carries the templates, so it renders without the checkout, and only the
product: the development tools (throwaway servers, the demo) stay in the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.support import ROOT


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The paths inside the wheel built from this checkout."""
    pytest.importorskip("hatchling")
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_ships_the_templates(wheel_names: list[str]) -> None:
    names = wheel_names
    root = ROOT / "templates"
    templates = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for name in templates:
        assert f"generator/templates/{name}" in names
    assert "generator/cli.py" in names


def test_the_wheel_ships_the_product_and_no_development_code(wheel_names: list[str]) -> None:
    code = sorted(name for name in wheel_names if name.endswith(".py"))
    assert code == sorted(f"generator/{p.name}" for p in (ROOT / "generator").glob("*.py"))
    assert "generator/cli.py" in code
    for name in wheel_names:
        assert not name.startswith(("devtools/", "tests/", "bench/")), name
        assert "sandbox" not in name, name
        assert "demo" not in name, name
