"""Off-site copies (REPLICA_TARGETS) with the real rclone: each backup is copied and verified on
every target, a target that is down keeps the local backups and is caught up by the next run,
cleanup prunes the targets with the local rules, and a restore works from a target alone.

The targets: a local folder (``NAME=/path``), an rclone ``:local:`` remote, and the real servers
of the fixtures: SFTP with a login shell (the server computes MD5), SFTP over internal-sftp only
(no remote hash: a copy is read back) and S3 (moto_server; MD5 ETags), S3 with keys that cannot
delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, start_postgres, start_redis
from tests.support import (
    BACKUP,
    KEY,
    PG_DB,
    PG_PASSWORD,
    PG_USER,
    REDIS_PASSWORD,
    RESTORE,
    TYPES,
    Entry,
    MakeEnv,
    RedisState,
    Remotes,
    RunScript,
    alert_state,
    backups_of,
    descendants,
    load_redis_dataset,
    make_backup,
    make_uploads,
    only_backup,
    redis_state,
    restamped_copy,
    run_ok,
    stamp,
    start_script,
    tree_state,
    wait_for,
    with_sidecars,
    write_files,
)

# How each kind of target verifies a copy (the log's words).
VERIFIED = {
    "path": "SHA-256 computed on the target",
    "sftpfull": "MD5 computed by the target",
    "sftponly": "read back and hashed here",
    "s3": "MD5 computed by the target",
}
KINDS = list(VERIFIED)


@dataclass
class Offsite:
    """One target of a test: its name in REPLICA_TARGETS, the settings that reach it, what it
    holds (read behind rclone's back), a way to change a file there, and to take it down."""

    kind: str
    name: str
    settings: dict[str, str]
    files: Callable[[], dict[str, bytes]]
    write: Callable[[str, bytes], None]
    down: Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def folder_gone(folder: Path) -> Iterator[None]:
    """A local folder target is unusable for the block: a file stands in its place."""
    moved = folder.with_name(folder.name + ".away")
    folder.rename(moved)
    folder.write_bytes(b"not a folder\n")
    try:
        yield
    finally:
        folder.unlink()
        moved.rename(folder)


def offsite(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Offsite:
    """The target of ``kind`` for this test (the remotes fixture only for the servers)."""
    if kind == "path":
        folder = tmp_path / "usb"
        folder.mkdir()

        def files() -> dict[str, bytes]:
            return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

        def write(name: str, data: bytes) -> None:
            (folder / name).write_bytes(data)

        return Offsite(
            kind,
            "usb",
            {"REPLICA_TARGETS": f"usb={folder}"},
            files,
            write,
            lambda: folder_gone(folder),
        )
    remotes: Remotes = request.getfixturevalue("remotes")
    target = remotes[kind]
    return Offsite(kind, kind, remotes.env(kind), target.files, target.write, target.server.down)


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Offsite:
    """The target of the kind the test is parametrized with (indirect)."""
    kind = request.param
    assert isinstance(kind, str)
    return offsite(kind, tmp_path, request)


def local_backups(backup_dir: Path) -> set[str]:
    return {p.name for kind in TYPES for p in backups_of(backup_dir, kind)}


def assert_copied(backup_dir: Path, held: dict[str, bytes], names: set[str]) -> None:
    """Each backup in ``names`` is held by the target with its sidecars, byte for byte."""
    for name in names:
        for file in with_sidecars(name):
            assert held.get(file) == (backup_dir / file).read_bytes(), file


def status_json(backup_dir: Path) -> dict[str, object]:
    data = json.loads((backup_dir / "status.json").read_text())
    assert isinstance(data, dict)
    return data


def attention(backup_dir: Path) -> dict[str, str]:
    facts = status_json(backup_dir)["attention"]
    assert isinstance(facts, list)
    return {item["alert"]: item["message"] for item in facts}


def metric(backup_dir: Path, line_start: str) -> float:
    text = (backup_dir / "metrics" / "gym_backup.prom").read_text()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {line_start} in:\n{text}")


# ------------------------------------------------------------------------------ copies


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_full_backup_is_copied_to_the_target_and_verified_there(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = {**backup_env(tmp_path, encryption_key=KEY), **target.settings}

    result = run_ok(run_script, BACKUP, "full", env=env)

    backups = tmp_path / "backups"
    names = local_backups(backups)
    assert len(names) == 3
    assert_copied(backups, target.files(), names)
    assert result.stdout.count(f"verified: {VERIFIED[target.kind]}") == 3
    assert re.search(rf"replica {target.name}: copied \S+ \(.+ in [0-9.]+s, .+/s\)", result.stdout)
    assert f"replica {target.name} ok (copied 3 backup(s)" in result.stdout
    assert (
        metric(
            backups, f'gym_backup_replica_last_success_timestamp_seconds{{target="{target.name}"}}'
        )
        > 0
    )
    listed = run_ok(run_script, BACKUP, "list", "--replica", target.name, env=env).stdout
    for name in names:
        assert name in listed
    assert "3 backup(s) (postgresql 1, redis 1, files 1)" in listed
    assert "0 backup(s) of" in listed
    # the rclone config's keys are in no output and no log (rclone read them from the file)
    config = env.get("REPLICA_RCLONE_CONFIG_FILE")
    if config:
        keys = re.findall(
            r"^(?:secret_access_key|access_key_id) = (\S+)$", Path(config).read_text(), re.M
        )
        logs = result.stdout + result.stderr + listed + (backups / "backup.log").read_text()
        assert keys or target.kind != "s3"
        assert all(key not in logs for key in keys)


def test_an_rclone_local_remote_is_a_target_too(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    folder = tmp_path / "elsewhere"
    env = backup_env(tmp_path, encryption_key=KEY, REPLICA_TARGETS=f"nas=:local:{folder}")

    run_ok(run_script, BACKUP, "postgresql", env=env)

    (name,) = local_backups(tmp_path / "backups")
    held = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert_copied(tmp_path / "backups", held, {name})


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_changed_copy_on_the_target_is_found_by_verify_from(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
    short_tmp: Path,
) -> None:
    env = {
        **backup_env(tmp_path, encryption_key=KEY, TMPDIR=str(short_tmp)),
        **target.settings,
    }
    run_ok(run_script, BACKUP, "redis", env=env)
    (name,) = local_backups(tmp_path / "backups")
    run_ok(run_script, RESTORE, "verify", name, "--from", target.name, env=env)
    shown = run_ok(run_script, RESTORE, "info", name, "--from", target.name, env=env).stdout
    assert f"checksum:     ok (matches {name}.sha256)" in shown
    assert "type:         redis" in shown
    data = bytearray(target.files()[name])
    data[len(data) // 2] ^= 0x10
    target.write(name, bytes(data))

    result = run_script(RESTORE, "verify", name, "--from", target.name, env=env)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "the file was changed or damaged" in result.stdout + result.stderr
    # the fetched copy lived in the run's private folder only, which is gone
    assert local_backups(tmp_path / "backups") == {name}
    assert [p for p in short_tmp.rglob("*") if "_backup_" in p.name] == []


def test_from_refuses_what_is_not_a_backup_name(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, REPLICA_TARGETS=f"usb={tmp_path / 'usb'}")
    for bad in ("../etc/passwd", "sub/redis_backup_20240101_000000.rdb.gz", "notes.txt"):
        result = run_script(RESTORE, "verify", bad, "--from", "usb", env=env)
        assert result.returncode == 6, result.stdout + result.stderr
        assert "is not a backup's name" in result.stderr
    result = run_script(
        RESTORE, "info", "redis_backup_20240101_000000.rdb.gz", "--from", "nas", env=env
    )
    assert result.returncode == 2
    assert "no target 'nas' in REPLICA_TARGETS" in result.stderr


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_target_that_is_down_keeps_the_local_backups_alerts_and_is_caught_up_next_run(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = {**backup_env(tmp_path, encryption_key=KEY), **target.settings}
    # the script's own limits, not the fixtures' quicker rclone settings
    env = {name: value for name, value in env.items() if not name.startswith("RCLONE_")}
    backups = tmp_path / "backups"
    with target.down():
        started = time.monotonic()
        failed = run_script(BACKUP, "full", env=env)
        took = time.monotonic() - started

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert took < 45, f"a dead target held the run for {took:.0f} s"
    first = local_backups(backups)
    assert len(first) == 3, "the local backups were not kept"
    assert f"replica {target.name} FAILED (exit 1" in failed.stderr
    assert f"replica:{target.name}" in attention(backups)
    assert "the local backups are kept" in attention(backups)[f"replica:{target.name}"]
    assert f"replica:{target.name}" in alert_state(backups)
    gauge = f'gym_backup_replica_last_success_timestamp_seconds{{target="{target.name}"}}'
    assert metric(backups, gauge) == 0
    assert not any(name.endswith(".sha256") for name in target.files())
    status = run_script(BACKUP, "status", env=env)
    assert status.returncode == 7
    assert f"off-site copies: {target.name} failed" in status.stdout

    time.sleep(1.1)  # the next run's backups get another timestamp
    caught_up = run_ok(run_script, BACKUP, "full", env=env)

    names = local_backups(backups)
    assert len(names) == 6
    assert_copied(backups, target.files(), names)
    assert f"replica {target.name} ok (copied 6 backup(s)" in caught_up.stdout
    # newest first: this run's own backups, then the three it missed
    copied = re.findall(rf"replica {target.name}: copied (\S+_backup_\S+) ", caught_up.stdout)
    assert set(copied[:3]) == names - first
    assert set(copied[3:]) == first
    assert f"replica:{target.name}" not in attention(backups)
    assert f"alert resolved: replica:{target.name}" in caught_up.stdout
    assert metric(backups, gauge) > 0


@pytest.mark.parametrize("target", ["sftponly", "s3"], indirect=True)
def test_unencrypted_backups_are_not_copied_to_an_rclone_remote(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = {**backup_env(tmp_path), **target.settings}

    result = run_script(BACKUP, "files", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert "refusing to copy 1 unencrypted backup(s)" in result.stderr
    assert "set ENCRYPTION_KEY" in result.stderr
    assert "REPLICA_ALLOW_PLAINTEXT=true" in result.stderr
    assert len(local_backups(tmp_path / "backups")) == 1
    assert target.files() == {}

    allowed = run_ok(run_script, BACKUP, "sync", env={**env, "REPLICA_ALLOW_PLAINTEXT": "true"})
    assert "copied 1 backup(s)" in allowed.stdout
    assert_copied(tmp_path / "backups", target.files(), local_backups(tmp_path / "backups"))


def test_a_local_folder_target_takes_unencrypted_backups(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = offsite("path", tmp_path, request)
    env = {**backup_env(tmp_path), **target.settings}
    run_ok(run_script, BACKUP, "files", env=env)
    assert_copied(tmp_path / "backups", target.files(), local_backups(tmp_path / "backups"))
    # rclone, with no config file to read, says nothing about it
    assert "not found - using defaults" not in (tmp_path / "backups/backup.log").read_text()


# ------------------------------------------------------------------------------ retention


def old_backups(backup_dir: Path) -> dict[str, str]:
    """Five backups of each type, 1 to 200 days old, as backup_script.sh names them."""
    made = {}
    for kind in TYPES:
        for days in (1, 2, 100, 150, 200):
            made[make_backup(backup_dir, kind, stamp(days))] = kind
    return made


@pytest.mark.parametrize("target", ["path", "sftpfull", "s3"], indirect=True)
def test_cleanup_prunes_the_target_with_the_local_rules(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = {**backup_env(tmp_path, REPLICA_ALLOW_PLAINTEXT="true", KEEP_MIN="1"), **target.settings}
    backups = tmp_path / "backups"
    made = old_backups(backups)
    run_ok(run_script, BACKUP, "sync", env=env)
    assert_copied(backups, target.files(), set(made))
    # an unverifiable copy on the target (no .sha256) is never deleted, as in BACKUP_DIR
    stray = "redis_backup_20200101_000000.rdb.gz"
    target.write(stray, b"half a copy")

    dry = run_ok(run_script, BACKUP, "cleanup", "--dry-run", env=env)
    assert f"replica {target.name}: would prune 9 of 15 backup(s)" in dry.stdout
    assert len(target.files()) == 46
    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    kept = local_backups(backups)
    assert len(kept) == 6  # within BACKUP_RETENTION_DAYS=90: 1 and 2 days old, of each type
    held = target.files()
    assert {n for n in held if not n.endswith((".sha256", ".manifest.json"))} == kept | {stray}
    assert_copied(backups, held, kept)
    assert f"replica {target.name}: pruned 9 of 15 backup(s)" in result.stdout
    assert status_json(backups)["replicas"][target.name]["last_prune"]["result"] == "ok"  # type: ignore[index]


@pytest.mark.parametrize("target", ["path"], indirect=True)
def test_a_copy_cut_short_on_the_target_is_damaged_there_takes_no_keep_min_slot_and_is_copied_again(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = {
        **backup_env(tmp_path, BACKUP_RETENTION_DAYS="1", KEEP_MIN="1"),
        **target.settings,
    }
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "redis", env=env)
    newest = only_backup(backups, "redis", encrypted=False)
    old = restamped_copy(newest, stamp(300)).name
    run_ok(run_script, BACKUP, "sync", env=env)
    whole = newest.read_bytes()
    target.write(newest.name, whole[: len(whole) // 2])  # its sidecars as they were copied

    listed = run_ok(run_script, BACKUP, "list", "--replica", target.name, env=env).stdout
    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    assert f"{newest.name}  (damaged ({len(whole) // 2} bytes, but its manifest says " in listed
    assert f"replica {target.name}: pruned 0 of 1 backup(s)" in result.stdout
    assert set(with_sidecars(old)) <= set(target.files())  # the only whole copy there stays
    assert not (backups / old).exists()  # here the newest is whole: the old one went
    synced = run_ok(run_script, BACKUP, "sync", env=env)
    assert f"replica {target.name}: copied {newest.name} " in synced.stdout
    assert target.files()[newest.name] == whole


def test_with_replica_prune_false_credentials_that_cannot_delete_are_enough(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, remotes: Remotes
) -> None:
    target = remotes["s3nodelete"]
    env = {
        **backup_env(tmp_path, REPLICA_ALLOW_PLAINTEXT="true", KEEP_MIN="1"),
        **remotes.env("s3nodelete"),
    }
    backups = tmp_path / "backups"
    made = old_backups(backups)
    run_ok(run_script, BACKUP, "sync", env=env)
    assert_copied(backups, target.files(), set(made))

    pruned = run_script(BACKUP, "cleanup", env=env)
    assert pruned.returncode == 1, pruned.stdout + pruned.stderr
    assert "do its credentials allow deleting?" in pruned.stderr
    assert "replica_prune:s3nodelete" in attention(backups)
    assert len(target.files()) == 45  # nothing went

    result = run_ok(run_script, BACKUP, "cleanup", env={**env, "REPLICA_PRUNE": "false"})
    assert "REPLICA_PRUNE=false: the targets (s3nodelete) are not pruned" in result.stdout
    assert len(local_backups(backups)) == 6
    assert len(target.files()) == 45
    # the next backups still go there: adding needs no delete right
    key_env = {**env, "ENCRYPTION_KEY": KEY, "REPLICA_PRUNE": "false"}
    run_ok(run_script, BACKUP, "redis", env=key_env)
    assert_copied(backups, target.files(), local_backups(backups))


# ------------------------------------------------------------------------------ disaster


@pytest.fixture(scope="module")
def fresh_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own, never the source of a backup: where a lost host's
    database is restored to."""
    with start_postgres(
        tmp_path_factory.mktemp("fresh-pg"), db=PG_DB, user=PG_USER, password=PG_PASSWORD
    ) as server:
        yield server


SOURCE_SQL = """
CREATE TABLE members (id int PRIMARY KEY, name text NOT NULL, joined date);
INSERT INTO members SELECT i, 'Socio ' || i || ' ñandú', date '2024-01-01' + i
FROM generate_series(1, 500) i;
CREATE TABLE payments (id serial PRIMARY KEY, member int REFERENCES members, amount numeric(8, 2));
INSERT INTO payments (member, amount) SELECT 1 + i % 500, i * 1.25 FROM generate_series(1, 800) i;
"""


@dataclass
class LostHost:
    """What remains of a host whose disk was lost (its settings and key) and what its backups
    were taken from."""

    env: dict[str, str]
    names: dict[str, str]  # the full backup's file of each type
    db: str  # pg_dump of the source database
    redis: RedisState
    files: dict[str, Entry]


@pytest.fixture
def lost_host(
    target: Offsite,
    pg: PostgresServer,
    fresh_pg: PostgresServer,
    new_db: Callable[..., str],
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> Callable[..., LostHost]:
    """lost_host(*LATER): a full backup of data of each type, copied to the target, then a run of
    each type of LATER; then the host's disk is gone: no BACKUP_DIR, no source servers, and the
    fresh PostgreSQL has an empty POSTGRES_DB."""

    def lose(*later: str) -> LostHost:
        source_db = new_db()
        pg.psql(SOURCE_SQL, source_db, superuser=False)
        uploads = make_uploads(tmp_path / "uploads")
        with start_redis(tmp_path / "src-redis", password=REDIS_PASSWORD) as source_redis:
            load_redis_dataset(source_redis)
            written_redis = redis_state(source_redis)
            env = {
                **backup_env(
                    tmp_path,
                    encryption_key=KEY,
                    redis=source_redis,
                    files_dir=uploads,
                    POSTGRES_DB=source_db,
                ),
                **target.settings,
            }
            run_ok(run_script, BACKUP, "full", env=env)
            names = {
                kind_: next(n for n in local_backups(tmp_path / "backups") if n.startswith(kind_))
                for kind_ in TYPES
            }
            for part in later:
                time.sleep(1.1)  # a later run: a later timestamp
                run_ok(run_script, BACKUP, part, env=env)
        lost = LostHost(env, names, pg.dump(source_db), written_redis, tree_state(uploads))
        shutil.rmtree(tmp_path / "backups")
        fresh_pg.dropdb(PG_DB)
        fresh_pg.createdb(PG_DB)
        return lost

    return lose


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_after_losing_backup_dir_everything_is_restored_from_the_target_onto_fresh_servers(
    target: Offsite,
    fresh_pg: PostgresServer,
    lost_host: Callable[..., LostHost],
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    lost = lost_host()
    listed = run_ok(run_script, BACKUP, "list", "--replica", target.name, env=lost.env).stdout
    assert all(name in listed for name in lost.names.values())

    with start_redis(tmp_path / "new-redis", password=REDIS_PASSWORD) as new_redis:
        new_env = {
            **lost.env,
            **fresh_pg.env(),
            **new_redis.env(),
            "FILES_DIR": str(tmp_path / "new-uploads"),
        }
        (tmp_path / "new-uploads").mkdir()
        for part in TYPES:
            result = run_ok(
                run_script, RESTORE, part, lost.names[part], "--from", target.name, env=new_env
            )
            assert f"fetched {lost.names[part]} from {target.name}" in result.stdout
        restored_redis = redis_state(new_redis)

    assert fresh_pg.dump(PG_DB) == lost.db
    assert restored_redis.digest == lost.redis.digest
    assert restored_redis.keys == lost.redis.keys
    assert tree_state(tmp_path / "new-uploads") == lost.files


@pytest.mark.parametrize("target", ["sftponly"], indirect=True)
def test_restore_all_from_the_target_fetches_the_newest_complete_run_onto_fresh_servers(
    target: Offsite,
    fresh_pg: PostgresServer,
    lost_host: Callable[..., LostHost],
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    # a newer run that is not complete (PostgreSQL only) is not the one all picks
    lost = lost_host("postgresql")
    with start_redis(tmp_path / "new-redis", password=REDIS_PASSWORD) as new_redis:
        new_env = {**lost.env, **fresh_pg.env(), **new_redis.env()}
        dest = tmp_path / "new-uploads"
        result = run_ok(run_script, RESTORE, "all", str(dest), "--from", target.name, env=new_env)
        restored_redis = redis_state(new_redis)

    for name in lost.names.values():
        assert f"fetched {name} from {target.name}" in result.stdout
    assert "the newest with a complete backup of every type" in result.stdout
    assert fresh_pg.dump(PG_DB) == lost.db
    assert restored_redis.digest == lost.redis.digest
    assert tree_state(dest) == lost.files


def test_uploads_log_their_progress_and_keep_to_replica_bwlimit(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = write_files(tmp_path / "uploads", {"photo.raw": os.urandom(1_500_000)})
    folder = tmp_path / "usb"
    env = backup_env(
        tmp_path,
        encryption_key=KEY,
        files_dir=uploads,
        REPLICA_TARGETS=f"usb={folder}",
        REPLICA_BWLIMIT="500k",
    )
    result = run_ok(run_script, BACKUP, "files", env=env)

    (name,) = local_backups(tmp_path / "backups")
    size = (tmp_path / "backups" / name).stat().st_size
    seconds = float(re.search(rf"copied {name} \(.+ in ([0-9.]+)s", result.stdout)[1])  # type: ignore[index]
    assert seconds >= size / (500 * 1024) - 1.5, "REPLICA_BWLIMIT was not applied"
    log = (tmp_path / "backups" / "backup.log").read_text()
    assert re.search(
        r"replica usb: rclone: NOTICE: +[0-9.]+ \S+ / [0-9.]+ \S+, 100%, [0-9.]+ \S+/s", log
    )


def kill_while_rclone_copies(run: subprocess.Popen[str], name_end: str) -> None:
    """A second after rclone starts copying a file whose name ends with ``name_end`` (part of it
    is there), SIGKILL the run's whole process group, as docker kill does: no trap runs."""

    def copying() -> bool:
        return any(
            "copyto" in argv and any(arg.endswith(name_end) for arg in argv)
            for _, argv in descendants(run.pid)
        )

    wait_for(copying, f"rclone copying ...{name_end}", timeout=60)
    time.sleep(1)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL


@pytest.mark.parametrize("target", ["path", "sftpfull"], indirect=True)
def test_a_run_killed_while_copying_leaves_no_copy_that_looks_whole_and_the_next_run_makes_it(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    uploads = write_files(tmp_path / "uploads", {"photo.raw": os.urandom(1_500_000)})
    env = {
        **backup_env(tmp_path, encryption_key=KEY, files_dir=uploads, REPLICA_BWLIMIT="100k"),
        **target.settings,
    }
    backups = tmp_path / "backups"
    run = start_script(rendered_scripts, BACKUP, "files", env=env, new_session=True)
    kill_while_rclone_copies(run, ".tar.gz.gpg")

    (name,) = local_backups(backups)
    held = target.files()
    # the checksum goes last: a target without it holds no copy of that backup yet
    assert f"{name}.sha256" not in held
    assert held.get(name) != (backups / name).read_bytes()

    env.pop("REPLICA_BWLIMIT")
    synced = run_ok(run_script, BACKUP, "sync", env=env)

    assert "cleaned up after a run that did not finish" in synced.stderr
    assert f"replica {target.name}: copied {name} " in synced.stdout
    assert_copied(backups, target.files(), {name})


@pytest.mark.parametrize("target", ["path", "sftpfull"], indirect=True)
def test_a_restore_killed_while_fetching_from_the_target_changes_nothing_and_the_next_one_restores(
    target: Offsite,
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    uploads = write_files(tmp_path / "uploads", {"photo.raw": os.urandom(1_500_000)})
    env = {**backup_env(tmp_path, encryption_key=KEY, files_dir=uploads), **target.settings}
    run_ok(run_script, BACKUP, "files", env=env)
    backups = tmp_path / "backups"
    (name,) = local_backups(backups)
    backed_up = tree_state(uploads)
    (backups / name).unlink()  # only the target has it now
    (uploads / "photo.raw").write_bytes(b"changed since the backup\n")
    changed = tree_state(uploads)
    backup_files = {p.name for p in backups.glob("*_backup_*")}

    slow = {**env, "REPLICA_BWLIMIT": "100k"}
    run = start_script(
        rendered_scripts,
        RESTORE,
        "files",
        name,
        "--force",
        "--from",
        target.name,
        env=slow,
        new_session=True,
    )
    kill_while_rclone_copies(run, name)

    assert tree_state(uploads) == changed
    assert {p.name for p in backups.glob("*_backup_*")} == backup_files

    restored = run_ok(run_script, RESTORE, "files", name, "--force", "--from", target.name, env=env)

    assert "cleaned up after a run that did not finish" in restored.stderr
    assert f"fetched {name} from {target.name}" in restored.stdout
    assert tree_state(uploads) == backed_up
    assert not (backups / name).exists(), "a fetched backup stays in the run's private folder"
