"""`make run`'s closing words: what to do next with the demo's backups."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.demo import next_steps

STAMP = "20261127_020000"
BACKUPS = [
    f"postgresql_backup_{STAMP}.sql.gz.gpg",
    f"redis_backup_{STAMP}.rdb.gz.gpg",
    f"files_backup_{STAMP}.tar.gz.gpg",
]


@pytest.fixture
def demo_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A demo-output folder as `make run` leaves it, in the current folder."""
    monkeypatch.chdir(tmp_path)
    backups = tmp_path / "demo-output" / "backups"
    backups.mkdir(parents=True)
    for name in BACKUPS:
        (backups / name).write_bytes(b"x")
        (backups / f"{name}.sha256").write_text("sidecar\n")
        (backups / f"{name}.manifest.json").write_text("{}\n")
    (backups / "backup.log").write_text("log\n")
    return tmp_path / "demo-output"


def test_next_steps_list_verify_restore_and_decrypt_the_demo_backups(demo_output: Path) -> None:
    lines = next_steps(demo_output / ".env", demo_output / "backups")
    text = "\n".join(lines)
    commands = [ln.split("gym-backup ", 1)[1] for ln in lines if "gym-backup " in ln]
    assert commands == [
        "list --local --env demo-output/.env",
        f"verify --local --env demo-output/.env {BACKUPS[0]}",
        f"info --local --env demo-output/.env {BACKUPS[0]}",
        f"restore files --local --env demo-output/.env {BACKUPS[2]} demo-output/restored",
    ]
    assert f"gpg --decrypt demo-output/backups/{BACKUPS[0]} | gunzip" in text
    # Where the key is, so that a newcomer keeps it.
    assert "demo-output/.env" in lines[0]
    assert "ENCRYPTION_KEY" in text
