"""Off-site copies (REPLICA_TARGETS) with the real rclone: each backup is copied and verified on
every target, a target that is down keeps the local backups and is caught up by the next run,
cleanup prunes the targets with the local rules, and a restore works from a target alone.

Targets here: a local folder (NAME=/path) and an rclone remote that is a local folder too
(``:local:``); the SFTP and S3 servers of the fixtures come with the remotes fixtures.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.support import (
    BACKUP,
    KEY,
    RESTORE,
    TYPES,
    MakeEnv,
    RunScript,
    backups_of,
    flip_middle_byte,
    make_backup,
    run_ok,
    stamp,
    with_sidecars,
)


def target_env(env: dict[str, str], **targets: str) -> dict[str, str]:
    """``env`` with REPLICA_TARGETS set to ``NAME=DEST`` for each target."""
    return {**env, "REPLICA_TARGETS": ",".join(f"{n}={d}" for n, d in targets.items())}


def local_backups(backup_dir: Path) -> set[str]:
    return {p.name for kind in TYPES for p in backups_of(backup_dir, kind)}


def assert_copied(backup_dir: Path, target: Path, names: set[str]) -> None:
    """Each backup in ``names`` is on ``target`` with its sidecars, byte for byte."""
    for name in names:
        for file in with_sidecars(name):
            assert (target / file).read_bytes() == (backup_dir / file).read_bytes(), file


@pytest.mark.parametrize("kind", ["path", "rclone-local"])
def test_a_full_backup_is_copied_to_the_target_and_verified_there(
    kind: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    target = tmp_path / "offsite"
    dest = str(target) if kind == "path" else f":local:{target}"
    env = target_env(backup_env(tmp_path, encryption_key=KEY), usb=dest)

    result = run_ok(run_script, BACKUP, "full", env=env)

    backups = tmp_path / "backups"
    names = local_backups(backups)
    assert len(names) == 3
    assert_copied(backups, target, names)
    assert "verified: SHA-256 computed on the target" in result.stdout
    assert re.search(r"replica usb: copied \S+ \(.+ in [0-9.]+s, .+/s\)", result.stdout)
    assert "replica usb ok (copied 3 backup(s)" in result.stdout
    listed = run_ok(run_script, BACKUP, "list", "--replica", "usb", env=env).stdout
    for name in names:
        assert name in listed
    assert f"on usb ({dest})" in listed
    assert "0 backup(s) of" in listed
