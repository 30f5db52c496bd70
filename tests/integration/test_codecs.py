"""Both codecs side by side: COMPRESSION=zstd writes .zst backups, gzip stays the default, and
list, verify, info, restore and cleanup read both from the same folder. A backup is stored in one
pass: the stored bytes are hashed and decoded while they are written, and a failure of either
branch fails the backup."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, RedisServer, start_redis
from tests.support import (
    BACKUP,
    CODECS,
    KEY,
    RESTORE,
    TYPES,
    MakeEnv,
    RunScript,
    backups_of,
    decode,
    folder_state,
    kill_stage_when_writing,
    make_uploads,
    run_direct,
    run_ok,
    script_env,
    start_script,
    tree_state,
)

EXIT_VERIFY = 4


@dataclass
class Mixed:
    """One BACKUP_DIR holding a gzip and a zstd backup of each type (encrypted), made by two
    ``full`` runs of the same sources."""

    db: str
    redis: RedisServer
    files: Path
    env: dict[str, str]

    @property
    def backups(self) -> Path:
        return Path(self.env["BACKUP_DIR"])

    def backup(self, kind: str, codec: str) -> Path:
        (found,) = [
            p for p in backups_of(self.backups, kind) if p.name.split(".")[2] == CODECS[codec]
        ]
        return found


@pytest.fixture(scope="module")
def mixed(
    pg: PostgresServer, rendered_scripts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mixed]:
    base = tmp_path_factory.mktemp("codecs")
    db = f"codec_{uuid.uuid4().hex[:12]}"
    pg.createdb(db)
    pg.psql(
        "CREATE TABLE visits (id int PRIMARY KEY, member text, at timestamptz);"
        "INSERT INTO visits SELECT i, 'Socio ' || i || ' ñ', '2026-01-01'::timestamptz + i * "
        "interval '1 minute' FROM generate_series(1, 5000) i;",
        db,
        superuser=False,
    )
    files = make_uploads(base / "uploads")
    try:
        with start_redis(base / "redis") as redis:
            redis.pipe([["SET", f"member:{i}", f"Socio {i} " * 10] for i in range(2000)])
            env = script_env(base, pg, redis, files, encryption_key=KEY, POSTGRES_DB=db)
            for codec in ("gzip", "zstd"):
                result = run_direct(
                    rendered_scripts, BACKUP, "full", env={**env, "COMPRESSION": codec}
                )
                assert result.returncode == 0, result.stdout + result.stderr
            yield Mixed(db=db, redis=redis, files=files, env=env)
    finally:
        pg.dropdb(db)


@pytest.mark.parametrize("kind", TYPES)
def test_a_zstd_backup_is_named_for_zstd_and_decodes_with_the_zstd_tool(
    kind: str, mixed: Mixed, gpg_home: Path
) -> None:
    zstd_backup, gzip_backup = mixed.backup(kind, "zstd"), mixed.backup(kind, "gzip")

    assert zstd_backup.name.endswith(".zst.gpg")
    assert gzip_backup.name.endswith(".gz.gpg")
    manifest = json.loads(Path(f"{zstd_backup}.manifest.json").read_text())
    assert manifest["compression"] == {"format": "zstd", "tool": "zstd", "level": 3}
    gzip_manifest = json.loads(Path(f"{gzip_backup}.manifest.json").read_text())
    assert gzip_manifest["compression"]["format"] == "gzip"
    assert gzip_manifest["compression"]["level"] == 6
    raw = decode(zstd_backup, KEY, gpg_home)
    assert len(raw) == manifest["size_raw_bytes"]
    assert len(decode(gzip_backup, KEY, gpg_home)) == gzip_manifest["size_raw_bytes"]


def test_list_shows_the_backups_of_both_codecs(mixed: Mixed, run_script: RunScript) -> None:
    out = run_ok(run_script, BACKUP, "list", env=mixed.env).stdout

    for kind in TYPES:
        for codec in CODECS:
            assert mixed.backup(kind, codec).name in out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", TYPES)
def test_verify_and_info_read_each_backup_by_its_own_codec(
    kind: str, codec: str, mixed: Mixed, run_script: RunScript
) -> None:
    backup = mixed.backup(kind, codec)
    env = {**mixed.env, "COMPRESSION": "gzip" if codec == "zstd" else "zstd"}

    verified = run_ok(run_script, RESTORE, "verify", backup.name, env=env).stdout
    info = run_ok(run_script, RESTORE, "info", backup.name, env=env).stdout

    assert f"check decompress: ok ({codec}, " in verified
    assert f"verify {backup.name}: every check passed" in verified
    assert f"format {codec}, tool " in info


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.usefixtures("createdb")
def test_a_postgresql_backup_of_either_codec_restores_an_identical_database(
    codec: str, mixed: Mixed, pg: PostgresServer, run_script: RunScript
) -> None:
    target = f"restored_{uuid.uuid4().hex[:10]}"
    backup = mixed.backup("postgresql", codec)
    try:
        run_ok(run_script, RESTORE, "postgresql", backup.name, "--target-db", target,
               env={**mixed.env, "COMPRESSION": "gzip"})  # fmt: skip

        assert pg.dump(target).replace(target, "DB") == pg.dump(mixed.db).replace(mixed.db, "DB")
    finally:
        pg.dropdb(target)


@pytest.mark.parametrize("codec", CODECS)
def test_a_files_backup_of_either_codec_restores_the_same_tree(
    codec: str, mixed: Mixed, run_script: RunScript, tmp_path: Path
) -> None:
    dest = tmp_path / "restored"

    run_ok(run_script, RESTORE, "files", mixed.backup("files", codec).name, str(dest),
           env=mixed.env)  # fmt: skip

    assert tree_state(dest) == tree_state(mixed.files)


def test_cleanup_counts_backups_of_both_codecs_and_deletes_none_that_are_recent(
    mixed: Mixed, run_script: RunScript
) -> None:
    before = folder_state(mixed.backups)

    out = run_ok(run_script, BACKUP, "cleanup", "--dry-run", env=mixed.env).stdout

    assert folder_state(mixed.backups) == before
    assert "would delete" not in out
    zstd = [line for line in out.splitlines() if ".zst" in line]
    assert zstd, "the dry run names every backup it keeps"
    assert all("[INFO] keep " in line for line in zstd), "a zstd backup was not counted as one"


@pytest.mark.parametrize(
    ("codec", "level", "threads"), [("zstd", "19", "1"), ("gzip", "1", "1"), ("zstd", "1", "")]
)
def test_compression_level_and_threads_are_used_and_recorded(
    codec: str,
    level: str,
    threads: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    source = make_uploads(tmp_path / "uploads")
    env = backup_env(tmp_path, files_dir=source, COMPRESSION=codec, COMPRESSION_LEVEL=level,
                     COMPRESSION_THREADS=threads)  # fmt: skip

    run_ok(run_script, BACKUP, "files", env=env)

    (stored,) = backups_of(tmp_path / "backups", "files")
    manifest = json.loads(Path(f"{stored}.manifest.json").read_text())
    assert manifest["compression"]["format"] == codec
    assert manifest["compression"]["level"] == int(level)
    assert len(decode(stored, None, gpg_home)) == manifest["size_raw_bytes"]


@pytest.mark.parametrize("codec", CODECS)
def test_a_backup_whose_decoding_branch_is_killed_fails_and_publishes_nothing(
    codec: str,
    short_tmp: Path,
    rendered_scripts: Path,
    backup_env: MakeEnv,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    uploads = tmp_path / "big"
    uploads.mkdir()
    for i in range(4):  # ~100 MB of random bytes: the backup takes a while
        (uploads / f"video-{i}.bin").write_bytes(os.urandom(25 * 1024 * 1024))
    env = backup_env(tmp_path, encryption_key=KEY, files_dir=uploads, TMPDIR=str(short_tmp),
                     COMPRESSION=codec, COMPRESSION_THREADS="1")  # fmt: skip

    run = start_script(rendered_scripts, BACKUP, "files", env=env)
    err = kill_stage_when_writing(
        run, "--decrypt", backups / "files_backup_*.partial", 1 << 20,
        "the stored bytes to be decrypted as they are written",
    )  # fmt: skip

    assert run.returncode == EXIT_VERIFY, err
    assert "files: the new backup failed verification (decode exit " in err
    assert "nothing was written under a final name" in err
    assert not [p.name for p in backups.iterdir() if ".tar." in p.name]
    assert list(short_tmp.iterdir()) == [], "the run left its work folder behind"


def test_the_stored_file_is_written_once_and_never_read_back(
    backup_env: MakeEnv, rendered_scripts: Path, tmp_path: Path
) -> None:
    """One pass: no process but the writer and sync (which flushes it to disk before it gets its
    name) opens the backup's file (strace of the whole run)."""
    source = make_uploads(tmp_path / "uploads")
    env = backup_env(tmp_path, encryption_key=KEY, files_dir=source)
    trace = tmp_path / "trace"

    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat,execve", "-o", str(trace), "bash",
         str(rendered_scripts / BACKUP), "files"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    (stored,) = backups_of(tmp_path / "backups", "files")
    lines = trace.read_text().splitlines()
    programs = {ln.split()[0]: ln.split('"')[1] for ln in lines if " execve(" in ln}
    opens = [ln for ln in lines if f'{stored.name}.partial"' in ln and "openat(" in ln]
    writes = [ln for ln in opens if "O_WRONLY" in ln]
    readers = {programs.get(ln.split()[0], "?") for ln in opens if "O_RDONLY" in ln}
    assert len(writes) == 1, opens
    assert readers <= {"/usr/bin/sync", "/bin/sync"}, readers
