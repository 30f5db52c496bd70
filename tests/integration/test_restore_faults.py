"""restore_script.sh when something is wrong: each fault ends with its exit code and a clear
message, and the target is left as it was. That is checked, not assumed: the target's pg_dump,
DEBUG DIGEST or file tree is compared before and after.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.sandbox import (
    PostgresServer,
    RedisServer,
    SandboxError,
    redis_on,
    start_postgres,
    start_redis,
)
from tests.support import (
    BACKUP,
    KEY,
    PG_USER,
    RESTORE,
    TYPES,
    MakeEnv,
    NewDb,
    RunScript,
    Sources,
    copy_backup,
    createdb_privilege,
    evil_files_backup,
    flip_middle_byte,
    holding_the_lock,
    hostile_dump,
    only_backup,
    run_direct,
    run_ok,
    script_env,
    start_script,
    table_lock,
    tar_dir,
    tar_file,
    tar_node,
    tar_symlink,
    tree_state,
    truncate_half,
    wait_for,
    write_files,
    write_sidecar,
)


@dataclass
class Target:
    """One restore's target: the command line that restores into it, and how to read its state."""

    args: list[str]
    state: Callable[[], object]


def target_of(kind: str, sources: Sources, pg: PostgresServer, tmp_path: Path, name: str) -> Target:
    """The restore of backup ``name`` of ``kind`` over live data (it would change it)."""
    if kind == "postgresql":
        return Target([kind, name, "--clean"], lambda: pg.dump(sources.db))
    if kind == "redis":
        return Target([kind, name], sources.redis.digest)
    dest = tmp_path / "dest"
    shutil.copytree(sources.files, dest)
    (dest / "a/uno.txt").write_text("changed since the backup")
    return Target([kind, name, str(dest), "--force"], lambda: tree_state(dest))


@dataclass(frozen=True)
class Fault:
    name: str
    encrypted: bool
    damage: Callable[[Path], None]
    code: int
    check: str
    message: str


def no_damage(path: Path) -> None:
    del path


def truncated_with_new_sidecar(path: Path) -> None:
    truncate_half(path)
    write_sidecar(path)


def flipped_with_new_sidecar(path: Path) -> None:
    flip_middle_byte(path)
    write_sidecar(path)


def sidecar_removed(path: Path) -> None:
    Path(f"{path}.sha256").unlink()


CHANGED = "the file was changed or damaged"
FAULTS = [
    Fault("wrong-key", True, no_damage, 5, "decrypt", "wrong encryption key"),
    Fault("truncated", False, truncate_half, 4, "checksum", CHANGED),
    Fault("truncated-new-sidecar", False, truncated_with_new_sidecar, 4, "decompress", "truncated"),
    Fault("truncated-new-sidecar", True, truncated_with_new_sidecar, 4, "decrypt", "truncated"),
    Fault("flipped", False, flip_middle_byte, 4, "checksum", CHANGED),
    Fault("flipped", True, flip_middle_byte, 4, "checksum", CHANGED),
    Fault("flipped-new-sidecar", False, flipped_with_new_sidecar, 4, "decompress", "damaged"),
    Fault("flipped-new-sidecar", True, flipped_with_new_sidecar, 4, "decrypt", "damaged"),
    Fault("no-sidecar", False, sidecar_removed, 4, "checksum", "pass --no-checksum"),
]


# ------------------------------------------------------------------------ damaged backups


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize(
    "fault",
    [pytest.param(f, id=f"{f.name}-{'encrypted' if f.encrypted else 'plain'}") for f in FAULTS],
)
def test_a_damaged_backup_or_wrong_key_is_refused_before_the_target_is_touched(
    fault: Fault,
    kind: str,
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    key = "not the key it was made with" if fault.name == "wrong-key" else KEY
    env = backup_env(
        tmp_path,
        encryption_key=key,
        redis=sources.redis,
        files_dir=sources.files,
        POSTGRES_DB=sources.db,
    )
    backup = copy_backup(sources.backups[(kind, fault.encrypted)], tmp_path / "backups")
    fault.damage(backup)
    target = target_of(kind, sources, pg, tmp_path, backup.name)
    before = target.state()

    result = run_script(RESTORE, *target.args, env=env)

    assert result.returncode == fault.code, result.stdout + result.stderr
    assert f"check {fault.check}: FAILED" in result.stderr
    assert fault.message in result.stderr
    # the run's last error carries the reason (status and the alerts quote it)
    said = f"[ERROR] {backup.name} failed the {fault.check} check: "
    [final] = [line for line in result.stderr.splitlines() if said in line]
    assert fault.message in final
    assert final.endswith("; nothing was changed")
    if fault.name == "wrong-key":
        assert "damaged" not in result.stderr, "a wrong key was reported as damage"
    assert target.state() == before
    assert sorted(p.name for p in (tmp_path / "backups").glob(f"{kind}_backup_*")) == sorted(
        p.name for p in tmp_path.joinpath("backups").glob(f"{backup.name}*")
    ), "a safety backup was taken although nothing was restored"


# ------------------------------------------------------------------------------ PostgreSQL


def test_postgresql_restore_over_a_non_empty_database_without_clean_is_refused(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=sources.db)
    backup = copy_backup(sources.backups[("postgresql", False)], tmp_path / "backups")
    pg.psql("UPDATE members SET name = 'changed' WHERE id = 1", sources.db, superuser=False)
    before = pg.dump(sources.db)

    result = run_script(RESTORE, "postgresql", backup.name, env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert f"database {sources.db} already holds 1 tables" in result.stderr
    assert "pass --clean" in result.stderr
    assert pg.dump(sources.db) == before


def test_postgresql_restore_behind_an_applications_lock_gives_up_and_rolls_back(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=sources.db, LOCK_TIMEOUT="2")
    backup = copy_backup(sources.backups[("postgresql", False)], tmp_path / "backups")
    pg.psql("UPDATE members SET name = 'changed' WHERE id = 1", sources.db, superuser=False)
    before = pg.dump(sources.db)
    # an application session in an open transaction holds the lock a read of the table takes
    with table_lock(pg, sources.db, "members"):
        result = run_script(
            RESTORE, "postgresql", backup.name, "--clean", "--no-safety-backup", env=env
        )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "the restore failed and was rolled back" in result.stderr
    assert "held a lock for LOCK_TIMEOUT=2s" in result.stderr
    assert pg.dump(sources.db) == before


def test_postgresql_restore_is_refused_when_the_safety_backup_fails(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY, POSTGRES_DB=sources.db)
    backup = copy_backup(sources.backups[("postgresql", True)], tmp_path / "backups")
    # a table of another role that the restoring role may not read: pg_dump of the target fails
    pg.psql("CREATE TABLE admin_only (x int)", sources.db)
    try:
        before = pg.dump(sources.db)

        result = run_script(RESTORE, "postgresql", backup.name, "--clean", env=env)

        assert result.returncode == 1, result.stdout + result.stderr
        assert "permission denied for table admin_only" in result.stderr
        assert "the safety backup failed, so nothing was restored" in result.stderr
        assert "pass --no-safety-backup" in result.stderr
        assert pg.dump(sources.db) == before
        assert sorted(p.name for p in (tmp_path / "backups").glob("postgresql_backup_*")) == sorted(
            p.name for p in (tmp_path / "backups").glob(f"{backup.name}*")
        ), "the failed safety backup left a file"
    finally:
        pg.psql("DROP TABLE admin_only", sources.db)


def test_postgresql_target_db_that_cannot_be_created_is_not_reported_as_unreachable(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=sources.db)
    backup = copy_backup(sources.backups[("postgresql", False)], tmp_path / "backups")
    target = f"rf_new_{uuid.uuid4().hex[:8]}"
    # CREATE DATABASE copies template1, which must have no other session
    busy = subprocess.Popen(
        pg.client_argv("psql", "-X", "-c", "SELECT pg_sleep(60)", db="template1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=pg.client_env(),
    )
    try:
        wait_for(
            lambda: (
                pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'template1'") != "0"
            ),
            "the template1 session to start",
            timeout=10,
        )
        with createdb_privilege(pg, allowed=True):
            result = run_script(RESTORE, "postgresql", backup.name, "--target-db", target, env=env)
    finally:
        pg.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'template1'"
        )
        busy.wait(timeout=10)
        pg.dropdb(target)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "is being accessed by other users" in result.stderr
    assert "cannot connect" not in result.stderr
    assert "is PostgreSQL running and reachable" not in result.stderr


def test_postgresql_server_dying_mid_restore_leaves_the_database_as_it_was(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    with start_postgres(
        tmp_path / "pg", db="dying_db", user="gym_secure_user", password="dying 'pw'"
    ) as server:
        server.psql(
            "CREATE TABLE big (id int PRIMARY KEY, payload text);"
            "INSERT INTO big SELECT i, md5(i::text) || repeat(' ñ', 30) "
            "FROM generate_series(1, 300000) i;",
            superuser=False,
        )
        env = {**backup_env(tmp_path), **server.env()}
        run_ok(run_script, BACKUP, "postgresql", env=env)
        backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
        server.psql("UPDATE big SET payload = 'changed' WHERE id <= 10", superuser=False)
        server.psql("CREATE TABLE added_after (x int)", superuser=False)
        before = server.dump()
        stopped = threading.Event()

        def stop_when_the_restore_writes() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    writing = server.psql(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_xid IS NOT NULL AND datname = 'dying_db'",
                        "postgres",
                    )
                except SandboxError:
                    return
                if writing != "0":
                    server.stop()
                    stopped.set()
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=stop_when_the_restore_writes, daemon=True)
        killer.start()
        result = run_script(
            RESTORE, "postgresql", backup.name, "--clean", "--no-safety-backup", env=env
        )
        killer.join(timeout=60)

        assert stopped.is_set(), "the restore finished before the server could be stopped"
        assert result.returncode == 1, result.stdout + result.stderr
        assert "the restore failed and was rolled back: dying_db is as it was" in result.stderr
        assert "COMMIT" not in result.stderr
        assert "unknown" not in result.stderr
        server.start()
        assert server.dump() == before


# The SQL of a backup whose COMMIT takes 60 s: a deferred trigger sleeps then.
SLOW_COMMIT = (
    "CREATE TABLE public.slow (x int);\n"
    "CREATE FUNCTION public.sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
    "$f$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $f$;\n"
    "CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON public.slow DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION public.sleep_at_commit();\n"
    "INSERT INTO public.slow VALUES (1);"
)


@pytest.mark.parametrize("when", ["loading", "committing"])
def test_a_server_stopped_mid_restore_gets_one_truthful_message_and_its_new_database_goes(
    when: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    with start_postgres(tmp_path / "pg", db="app_db", user="app_user", password="app pw") as server:
        server.psql('ALTER ROLE "app_user" CREATEDB', "postgres")
        env = {**backup_env(tmp_path), **server.env()}
        payload = SLOW_COMMIT if when == "committing" else "SELECT pg_sleep(60);"
        backup = hostile_dump(tmp_path / "backups", payload)
        stopped = threading.Event()
        running = "query ILIKE 'COMMIT%'" if when == "committing" else "query LIKE '%pg_sleep%'"

        def stop_at_the_statement() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = server.psql(
                    "SELECT count(*) FROM pg_stat_activity "  # noqa: S608 - no input
                    f"WHERE datname = 'new_db' AND state = 'active' AND {running}",
                    "postgres",
                )
                if busy != "0":
                    server.stop()
                    stopped.set()
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=stop_at_the_statement, daemon=True)
        killer.start()
        result = run_script(RESTORE, "postgresql", backup.name, "--target-db", "new_db", env=env)
        killer.join(timeout=60)
        assert stopped.is_set(), result.stdout + result.stderr
        server.start()
        databases = server.psql("SELECT datname FROM pg_database", "postgres").split()
        again = run_ok(run_script, RESTORE, "verify", backup.name, env=env)

        assert result.returncode == 1, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, result.stderr
        if when == "committing":
            assert "whether new_db holds the backup or is as it was is unknown" in errors[0]
            assert "the database new_db this run created is kept" in errors[0]
            assert "rolled back" not in errors[0]
        else:
            assert "the restore failed and was rolled back" in errors[0]
            assert "could not be dropped: the next run drops it while it is empty" in errors[0]
            assert "is dropped again" not in result.stderr
        # the empty database stays until the next run, which drops it
        assert "new_db" in databases
        assert "dropped the empty database new_db" in again.stderr
        assert "new_db" not in server.psql("SELECT datname FROM pg_database", "postgres").split()


# ------------------------------------------------------------------------------------- Redis


def test_redis_online_restore_into_a_replica_is_refused(
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    with (
        start_redis(tmp_path / "master") as master,
        start_redis(tmp_path / "replica") as replica,
    ):
        master.pipe([["SET", f"m:{i}", str(i)] for i in range(100)])
        replica.cli("REPLICAOF", master.host, str(master.port))
        wait_for(
            lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
            "the replica to sync",
            timeout=30,
        )
        before = replica.digest()
        env = backup_env(tmp_path, redis=replica)
        backup = copy_backup(sources.backups[("redis", False)], tmp_path / "backups")

        result = run_script(RESTORE, "redis", backup.name, env=env)

        assert result.returncode == 6, result.stdout + result.stderr
        assert "is a replica" in result.stderr
        assert "Nothing was changed" in result.stderr
        assert replica.digest() == before == master.digest()
        assert replica.cli("ROLE").splitlines()[0] == "slave"
        assert list((tmp_path / "backups").glob("redis_backup_*.gz")) == [backup]


def test_redis_online_restore_without_config_is_refused_and_points_to_file_mode(
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    with redis_on(tmp_path / "no-config", extra=['rename-command CONFIG ""']) as live:
        live.pipe([["SET", f"k:{i}", str(i)] for i in range(100)])
        before = live.digest()
        env = backup_env(tmp_path, redis=live)
        backup = copy_backup(sources.backups[("redis", False)], tmp_path / "backups")

        result = run_script(RESTORE, "redis", backup.name, env=env)

        assert result.returncode == 6, result.stdout + result.stderr
        assert "does not allow CONFIG" in result.stderr
        assert "use --mode file" in result.stderr
        assert live.digest() == before
        assert live.cli("ROLE").splitlines()[0] == "master"
        assert list((tmp_path / "backups").glob("redis_backup_*.gz")) == [backup]


# ------------------------------------------------------------------------------------- files


def malicious_members(case: str, outside: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members of a hostile archive; ``outside`` is a folder next to DEST."""
    root = [tar_dir("."), tar_file("ok.txt", b"fine\n")]
    cases = {
        "dotdot-member": [*root, tar_file("../evil")],
        "absolute-member": [*root, tar_file("/etc/x"), tar_file(f"{outside}/abs-evil")],
        "absolute-symlink": [*root, tar_symlink("photos", str(outside))],
        "relative-symlink": [*root, tar_dir("a"), tar_symlink("a/up", "../../outside")],
        "write-through-absolute-symlink": [
            *root,
            tar_symlink("photos", str(outside)),
            tar_file("photos/pwned"),
        ],
        "write-through-relative-symlink": [
            *root,
            tar_symlink("up", "../outside"),
            tar_file("up/pwned"),
        ],
        "character-device": [*root, tar_dir("d"), tar_node("d/mem", tarfile.CHRTYPE)],
        "block-device": [*root, tar_node("disco", tarfile.BLKTYPE, 0o660)],
        "fifo": [*root, tar_node("cola", tarfile.FIFOTYPE)],
        "staging-folder": [
            *root,
            tar_dir(".gym-restore.ABCDEFGH"),
            tar_file(".gym-restore.ABCDEFGH/journal", b"junk"),
        ],
    }
    return cases[case]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param(case, message, id=case)
        for case, message in [
            ("dotdot-member", "unsafe paths"),
            ("absolute-member", "unsafe paths"),
            ("absolute-symlink", "links that point outside the destination"),
            ("relative-symlink", "links that point outside the destination"),
            ("write-through-absolute-symlink", "links that point outside the destination"),
            ("write-through-relative-symlink", "links that point outside the destination"),
            ("character-device", "1 device nodes, FIFOs or sockets (e.g. 'd/mem' (character"),
            ("block-device", "1 device nodes, FIFOs or sockets (e.g. 'disco' (block device))"),
            ("fifo", "1 device nodes, FIFOs or sockets (e.g. 'cola' (FIFO)); a files restore"),
            ("staging-folder", "entries named like a restore's staging folder (.gym-restore.*)"),
        ]
    ],
)
def test_a_malicious_files_backup_is_refused_and_nothing_is_written(
    case: str,
    message: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "existing.txt").write_text("already here")
    env = backup_env(tmp_path, files_dir=dest)
    backup = evil_files_backup(tmp_path / "backups", malicious_members(case, outside))
    outside_before, dest_before = tree_state(outside), tree_state(dest)
    etc_x_existed = Path("/etc/x").exists()

    result = run_script(RESTORE, "files", backup.name, str(dest), "--force", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert message in result.stderr
    assert "Nothing was changed" in result.stderr
    assert tree_state(outside) == outside_before
    assert tree_state(dest) == dest_before
    assert not (tmp_path / "evil").exists()
    assert Path("/etc/x").exists() == etc_x_existed


def test_a_files_backup_with_hard_links_to_outside_files_fails_and_writes_nothing(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the uploads folder")
    dest = tmp_path / "dest"
    dest.mkdir()
    env = backup_env(tmp_path, files_dir=dest)
    members = [tar_dir("."), tar_file("ok.txt")]
    for name, target in (("up", "../outside/secret.txt"), ("abs", f"{outside}/secret.txt")):
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE
        info.linkname = target
        members.append((info, b""))
    backup = evil_files_backup(tmp_path / "backups", members)
    outside_before, dest_before = tree_state(outside), tree_state(dest)

    result = run_script(RESTORE, "files", backup.name, str(dest), "--force", env=env)

    # tar itself strips '/' and '../' from hard link targets, then finds no such file
    assert result.returncode == 1, result.stdout + result.stderr
    assert "files: extracting failed" in result.stderr
    assert "nothing was changed" in result.stderr
    assert tree_state(outside) == outside_before
    assert tree_state(dest) == dest_before
    assert (outside / "secret.txt").stat().st_nlink == 1


def test_set_user_and_group_id_bits_of_files_are_dropped_with_a_warning_naming_them(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    env = backup_env(tmp_path, files_dir=dest)
    root_owned = tar_file("bin/shell", b"#!/bin/sh\n", 0o4755)
    root_owned[0].uid = root_owned[0].gid = 0
    shared = tar_dir("compartido")
    shared[0].mode = 0o2775
    backup = evil_files_backup(
        tmp_path / "backups",
        [
            tar_dir("."),
            tar_dir("bin"),
            root_owned,
            shared,
            tar_file("compartido/grupo.sh", b"#!/bin/sh\n", 0o2750),
            tar_file("ok.txt", b"fine\n", 0o644),
        ],
    )

    result = run_ok(run_script, RESTORE, "files", backup.name, str(dest), env=env)

    warning = next(line for line in result.stderr.splitlines() if "set-user-ID" in line)
    assert (
        "files: 2 files of the backup had the set-user-ID or set-group-ID bit: restored without it"
    ) in warning
    assert "'bin/shell' (mode 04755, owner 0)" in warning
    assert "'compartido/grupo.sh' (mode 02750, owner 0)" in warning
    modes = {rel: entry[1] for rel, entry in tree_state(dest).items()}
    assert modes == {
        "bin": 0o755,
        "bin/shell": 0o755,
        "compartido": 0o2775,  # a folder keeps it: new files there take its group
        "compartido/grupo.sh": 0o750,
        "ok.txt": 0o644,
    }
    assert (dest / "ok.txt").read_bytes() == b"fine\n"


def test_a_files_backup_replaced_after_its_verification_is_refused_and_nothing_is_written(
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    # 16 MB that do not compress: the verification reads them for a while before the extraction
    uploads = write_files(
        tmp_path / "uploads", {"grande.bin": os.urandom(16 << 20), "a/uno.txt": b"uno\n"}
    )
    env = backup_env(tmp_path, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=False)
    other = evil_files_backup(tmp_path / "other", [tar_dir("."), tar_file("pwned.txt")])
    swap = backup.with_name(f"{backup.name}.new")
    shutil.copyfile(other, swap)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "existing.txt").write_text("already here")
    before = tree_state(dest)

    restore = start_script(rendered_scripts, RESTORE, "files", backup.name, str(dest), env=env)
    assert restore.stdout is not None
    for line in restore.stdout:
        if "check checksum: ok" in line:
            # checked: from now on the file is replaced, as `cp other X.new && mv X.new X` does
            swap.replace(backup)
            break
    _, err = restore.communicate(timeout=120)

    assert not swap.exists(), "the restore never said that the checksum matched"
    assert restore.returncode == 4, err
    assert (
        f"files: {backup.name} changed while it was read: the bytes extracted are not the ones "
        f"verified"
    ) in err
    assert f"nothing was changed in {dest}" in err
    assert tree_state(dest) == before


def test_files_restore_never_writes_through_a_link_in_dest(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    uploads = tmp_path / "uploads"
    (uploads / "docs/sub").mkdir(parents=True)
    (uploads / "docs/a.txt").write_text("a")
    (uploads / "docs/sub/b.txt").write_text("b")
    env = backup_env(tmp_path, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "docs").symlink_to(outside)
    outside_before, dest_before = tree_state(outside), tree_state(dest)

    refused = run_script(RESTORE, "files", backup.name, str(dest), env=env)

    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "(e.g. 'docs')" in refused.stderr
    assert "pass --force" in refused.stderr
    assert tree_state(outside) == outside_before
    assert tree_state(dest) == dest_before

    run_ok(run_script, RESTORE, "files", backup.name, str(dest), "--force", env=env)

    assert tree_state(outside) == outside_before
    assert tree_state(dest) == tree_state(uploads)


def test_files_restore_into_a_folder_whose_parent_is_missing_is_refused(
    sources: Sources, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    backup = copy_backup(sources.backups[("files", False)], tmp_path / "backups")
    missing = tmp_path / "no such folder" / "uploads"

    result = run_script(RESTORE, "files", backup.name, str(missing), env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert (
        f"destination {missing} does not exist, and its parent folder {missing.parent} "
        "does not exist or is not writable"
    ) in result.stderr
    assert not missing.parent.exists()


def test_a_refused_files_restore_into_a_new_folder_leaves_no_folder_behind(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    backup = evil_files_backup(tmp_path / "backups", [tar_symlink("salida", "/etc")])
    new = tmp_path / "new place"

    result = run_script(RESTORE, "files", backup.name, str(new), env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert "links that point outside the destination" in result.stderr
    assert not new.exists()


# ------------------------------------------------- a files restore stopped while moving entries

MANY = 4000  # files: moved one by one, they take a restore seconds to put into place


@pytest.fixture(scope="module")
def many_files(
    pg: PostgresServer,
    redis_auth: RedisServer,
    rendered_scripts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """Uploads of MANY small files in 40 folders (varied modes, old times, a link and a hard
    link), and their files backup."""
    base = tmp_path_factory.mktemp("many")
    uploads = base / "uploads"
    for n in range(MANY):
        folder = uploads / f"carpeta {n % 40:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"foto {n:04d}.jpg").write_bytes(f"foto {n}\n".encode())
    (uploads / "carpeta 00/última.jpg").symlink_to("foto 0000.jpg")
    (uploads / "carpeta 01/dura.jpg").hardlink_to(uploads / "carpeta 01/foto 0001.jpg")
    for n, folder in enumerate(sorted(uploads.iterdir())):
        folder.chmod((0o755, 0o750, 0o2775, 0o555)[n % 4])
    for path in [*uploads.rglob("*"), uploads]:
        if not path.is_symlink():
            os.utime(path, (1_600_000_000, 1_600_000_000))
    env = script_env(base, pg, redis_auth, uploads)
    result = run_direct(rendered_scripts, BACKUP, "files", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return uploads, only_backup(base / "backups", "files", encrypted=False)


def staging_folders(dest: Path) -> list[Path]:
    return sorted(dest.glob(".gym-restore.*"))


def files_and_links(folder: Path) -> int:
    """Everything but folders under ``folder``, the staging folders of restores left out."""
    count = 0
    for parent, dirs, files in os.walk(folder):
        if Path(parent) == folder:
            dirs[:] = [d for d in dirs if not d.startswith(".gym-restore.")]
        count += len(files) + sum((Path(parent) / d).is_symlink() for d in dirs)
    return count


def restore_moving(
    made: Path, backup_env: MakeEnv, scripts: Path, tmp_path: Path
) -> tuple[Path, dict[str, str], Path, subprocess.Popen[str]]:
    """A files restore of the backup ``made`` (copied into BACKUP_DIR) into a new DEST, started
    and moving files into place: DEST, the run's environment, the backup, the running restore."""
    dest = tmp_path / "dest"
    dest.mkdir()
    env = backup_env(tmp_path, files_dir=dest)
    backup = copy_backup(made, tmp_path / "backups")
    restore = start_script(scripts, RESTORE, "files", backup.name, str(dest), env=env)
    wait_for_moves(dest, restore)
    return dest, env, backup, restore


def wait_for_moves(dest: Path, restore: subprocess.Popen[str]) -> None:
    """Until the restore has moved a file into ``dest`` (it is then in its move phase)."""
    deadline = time.monotonic() + 120
    while not any(
        next(os.scandir(folder), None) is not None
        for folder in dest.glob("carpeta *")
        if folder.is_dir()
    ):
        assert restore.poll() is None, restore.communicate()
        assert time.monotonic() < deadline, "the restore never began moving files into place"
        time.sleep(0.01)


def test_a_files_restore_terminated_while_moving_tells_how_far_it_got_and_a_rerun_completes_it(
    many_files: tuple[Path, Path],
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    uploads, made = many_files
    dest, env, backup, restore = restore_moving(made, backup_env, rendered_scripts, tmp_path)
    os.kill(restore.pid, signal.SIGTERM)
    _, err = restore.communicate(timeout=120)

    assert restore.returncode == 143, err
    said = re.search(
        rf"files: the restore of {re.escape(backup.name)} into {re.escape(str(dest))} did not "
        rf"finish: (\d+) of {MANY + 2} "
        rf"files and links were moved into place, (\d+) were not \(they wait in (\S+)\)",
        err,
    )
    assert said, err
    moved, left = int(said[1]), int(said[2])
    assert 0 < moved < MANY
    assert moved + left == MANY + 2
    assert staging_folders(dest) == [Path(said[3])]
    assert files_and_links(dest) == moved
    assert files_and_links(Path(said[3]) / "tree") == left
    assert (
        f"Run the same restore again to complete it: restore_script.sh files {backup.name} " in err
    )
    assert said[0] in (tmp_path / "backups/restore.log").read_text()

    # any other restore into DEST is refused, naming the folder and how to give it up
    other = evil_files_backup(tmp_path / "backups", [tar_dir("."), tar_file("otro.txt")])
    half_restored = tree_state(dest)
    refused = run_script(RESTORE, "files", other.name, str(dest), "--force", env=env)

    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert f"{dest} holds {said[3]}, left by the restore of {backup.name}" in refused.stderr
    assert f"run that restore again to complete it. {left} files and links" in refused.stderr
    assert f"rm -rf {said[3]}" in refused.stderr
    assert "Nothing was changed." in refused.stderr
    assert tree_state(dest) == half_restored

    # the same command again, without --force: what the stopped run moved is not in the way
    done = run_ok(run_script, RESTORE, "files", backup.name, str(dest), env=env, timeout=300)

    assert f"moved the remaining {left} of {MANY + 2} files and links" in done.stdout
    assert tree_state(dest) == tree_state(uploads)
    assert staging_folders(dest) == []


def test_a_files_restore_killed_while_moving_into_a_new_folder_is_completed_by_the_same_command(
    many_files: tuple[Path, Path],
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    uploads, made = many_files
    new = tmp_path / "new uploads"
    env = backup_env(tmp_path, files_dir=new)
    backup = copy_backup(made, tmp_path / "backups")

    restore = start_script(rendered_scripts, RESTORE, "files", backup.name, str(new), env=env)
    wait_for_moves(new, restore)
    os.kill(restore.pid, signal.SIGKILL)  # nothing of the script runs any more
    restore.communicate(timeout=60)
    # its last mv, if one was running, still holds the run's lock until it is done
    with holding_the_lock(tmp_path / "backups", "the test, after the kill"):
        moved = files_and_links(new)
    (staging,) = staging_folders(new)
    assert 0 < moved < MANY + 2
    assert files_and_links(staging / "tree") == MANY + 2 - moved

    # something new in the way of an entry the killed run had not moved is a conflict, as ever
    in_the_way = next((staging / "tree").rglob("foto *.jpg"))
    rel = in_the_way.relative_to(staging / "tree")
    (new / rel).parent.mkdir(exist_ok=True)
    (new / rel).write_text("written by the application since")
    refused = run_script(RESTORE, "files", backup.name, str(new), env=env, timeout=300)

    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert f"1 entries already exist in {new} (e.g. '{rel}'); pass --force" in refused.stderr
    assert f"{MANY + 2 - moved} were not (they wait in {staging})" in refused.stderr
    assert (new / rel).read_text() == "written by the application since"

    done = run_ok(
        run_script, RESTORE, "files", backup.name, str(new), "--force", env=env, timeout=300
    )

    assert f"files: found {staging}, left by this restore (started " in done.stdout
    assert f"with {MANY + 2 - moved} files and links not moved yet: completing it" in done.stdout
    assert f"moved the remaining {MANY + 2 - moved} of {MANY + 2} files and links; 1 entries" in (
        done.stdout
    )
    assert tree_state(new) == tree_state(uploads)
    assert (new.stat().st_mode, int(new.stat().st_mtime)) == (
        uploads.stat().st_mode,
        int(uploads.stat().st_mtime),
    )
    assert staging_folders(new) == []


@pytest.mark.parametrize("planted", ["link", "hard-link"])
def test_a_killed_files_restore_whose_staged_tree_was_changed_since_moves_nothing_more(
    planted: str,
    many_files: tuple[Path, Path],
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    uploads, made = many_files
    dest, env, backup, restore = restore_moving(made, backup_env, rendered_scripts, tmp_path)
    os.kill(restore.pid, signal.SIGKILL)
    restore.communicate(timeout=60)
    with holding_the_lock(tmp_path / "backups", "the test, after the kill"):
        (staging,) = staging_folders(dest)
    # someone with access to DEST puts a link to a secret in place of a file still staged
    staged = next((staging / "tree").rglob("foto *.jpg"))
    rel = staged.relative_to(staging / "tree")
    secret = write_files(tmp_path / "outside", {"secret.txt": b"not for DEST"}) / "secret.txt"
    staged.unlink()
    if planted == "link":
        staged.symlink_to("/etc/shadow")
        problem = f"links that point outside the destination: {rel} -> /etc/shadow"
    else:
        staged.hardlink_to(secret)
        problem = f"files hard-linked to files outside the destination: '{rel}'"
    before = tree_state(dest)

    refused = run_script(RESTORE, "files", backup.name, str(dest), env=env, timeout=300)

    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert (
        f"files: {staging}, the staging folder of this restore, was changed since it stopped: it "
        f"holds {problem}; refusing to move anything more of it into {dest}."
    ) in refused.stderr
    assert f"rm -rf {staging}. Nothing more was changed." in refused.stderr
    assert tree_state(dest) == before

    # the operator puts the file back: the same restore then completes
    staged.unlink()
    shutil.copy2(uploads / rel, staged)
    run_ok(run_script, RESTORE, "files", backup.name, str(dest), env=env, timeout=300)

    assert tree_state(dest) == tree_state(uploads)
    assert staging_folders(dest) == []
    assert secret.stat().st_nlink == 1


@pytest.mark.parametrize(
    ("leftover", "code", "message"),
    [
        pytest.param(
            {"tree/a/uno.txt": b"half extracted"},
            0,
            "removed {staging}, left by a restore that was stopped before it moved anything",
            id="killed-while-extracting-is-removed",
        ),
        pytest.param(
            {"tree/a/uno.txt": b"x", "notas.txt": b"someone's"},
            0,
            "left {staging} alone: it looks like the staging folder of a restore that was stopped",
            id="holding-more-is-left-alone",
        ),
        pytest.param(
            {"journal": b"not a journal\0", "tree/a/uno.txt": b"x"},
            6,
            "left by a files restore that did not finish (its journal is damaged",
            id="damaged-journal-is-refused",
        ),
    ],
)
def test_a_staging_folder_left_in_dest_without_a_sound_journal_never_blocks_or_loses_data(
    leftover: dict[str, bytes],
    code: int,
    message: str,
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    staging = dest / ".gym-restore.Ab12Cd34"
    for rel, data in leftover.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    env = backup_env(tmp_path, files_dir=dest)
    backup = copy_backup(sources.backups[("files", False)], tmp_path / "backups")
    before = tree_state(dest)

    result = run_script(RESTORE, "files", backup.name, str(dest), env=env)

    assert result.returncode == code, result.stdout + result.stderr
    assert message.format(staging=staging) in result.stderr
    restored = {k: v for k, v in tree_state(dest).items() if not k.startswith(staging.name)}
    if code == 0:
        assert restored == tree_state(sources.files)
    else:
        assert f"rm -rf {staging}. Nothing was changed." in result.stderr
        assert tree_state(dest) == before
    if "notas.txt" in leftover:
        assert {k: v for k, v in tree_state(dest).items() if k.startswith(staging.name)} == before
    else:
        assert staging.exists() == (code != 0)


# ------------------------------------------------------------------------------ lock, usage


def test_a_second_run_while_another_holds_the_lock_exits_3(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=sources.db, LOCK_TIMEOUT="1")
    backup = copy_backup(sources.backups[("postgresql", False)], tmp_path / "backups")
    pg.psql("UPDATE members SET name = 'locked out' WHERE id = 2", sources.db, superuser=False)
    before = pg.dump(sources.db)

    # the first run: what backup_script.sh does while it works (flock, then its note)
    with holding_the_lock(
        tmp_path / "backups", "backup full (pid 4242, started 2026-01-01T02:00:00+00:00)"
    ):
        result = run_script(RESTORE, "postgresql", backup.name, "--clean", env=env)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "another run holds the lock (backup full (pid 4242" in result.stderr
    assert "LOCK_TIMEOUT" in result.stderr
    assert pg.dump(sources.db) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "a command and a backup FILE are required", id="nothing"),
        pytest.param(["restore", "x.sql.gz"], "unknown command 'restore'", id="restore x.sql.gz"),
        pytest.param(
            ["verify", "x.sql.gz", "--bogus"],
            "unknown option '--bogus'",
            id="verify x.sql.gz --bogus",
        ),
        pytest.param(["verify"], "a command and a backup FILE are required", id="verify"),
        pytest.param(
            ["verify", "a.sql.gz", "b.sql.gz"],
            "verify takes one FILE",
            id="verify a.sql.gz b.sql.gz",
        ),
        pytest.param(
            ["files", "a.tar.gz", "dest", "extra"],
            "files takes FILE and an optional DEST",
            id="files a.tar.gz dest extra",
        ),
        pytest.param(
            ["redis", "x.rdb.gz", "--mode"],
            "--mode needs online or file",
            id="redis x.rdb.gz --mode",
        ),
        pytest.param(
            ["redis", "x.rdb.gz", "--mode", "bogus"],
            "--mode is online or file, not 'bogus'",
            id="redis x.rdb.gz --mode bogus",
        ),
        pytest.param(
            ["postgresql", "x.sql.gz", "--target-db"],
            "--target-db needs a database name",
            id="postgresql x.sql.gz --target-db",
        ),
        pytest.param(
            ["verify", "x.sql.gz", "--clean"],
            "verify does not take --clean",
            id="verify x.sql.gz --clean",
        ),
        pytest.param(
            ["files", "x.tar.gz", "--target-db=db"],
            "files does not take --target-db",
            id="files x.tar.gz --target-db=db",
        ),
        pytest.param(
            ["info", "x.sql.gz", "--no-checksum"],
            "info does not take --no-checksum",
            id="info x.sql.gz --no-checksum",
        ),
    ],
)
def test_usage_errors_exit_2_before_anything_is_done(
    args: list[str],
    message: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path)

    result = run_script(RESTORE, *args, env=env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"restore_script.sh: {message}" in result.stderr
    assert "Usage: restore_script.sh COMMAND FILE" in result.stderr
    assert list((tmp_path / "backups").iterdir()) == []


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_exits_0_and_shows_every_command(
    flag: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    result = run_script(RESTORE, "verify", flag, env=backup_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: restore_script.sh COMMAND FILE")
    for command in ("verify FILE", "info FILE", "postgresql FILE", "redis FILE", "files FILE"):
        assert command in result.stdout
    assert "Exit codes:" in result.stdout


@pytest.mark.parametrize("used", [False, True], ids=["unused", "used-since"])
def test_the_roles_a_killed_restore_created_on_a_new_server_are_dropped_by_the_next_run(
    used: bool,
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    db = new_db()
    # enough rows that the load outlasts the test's look at the new server's roles
    pg.psql(
        "CREATE TABLE members (id int, note text);"
        "INSERT INTO members SELECT i, repeat('socio ', 20) FROM generate_series(1, 400000) i",
        db,
        superuser=False,
    )
    env = backup_env(tmp_path, POSTGRES_DB=db)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    with start_postgres(
        tmp_path / "new-pg", db="admin_db", user="new_admin", password="admin pw"
    ) as new_pg:
        new_pg.psql('ALTER ROLE "new_admin" SUPERUSER', "postgres")
        new_env = {
            **env,
            "POSTGRES_HOST": new_pg.host,
            "POSTGRES_PORT": str(new_pg.port),
            "POSTGRES_ADMIN_USER": "new_admin",
            "POSTGRES_ADMIN_PASSWORD": "admin pw",
        }
        restore = start_script(
            rendered_scripts,
            RESTORE,
            "postgresql",
            backup.name,
            "--target-db",
            db,
            env=new_env,
            new_session=True,
        )

        def roles() -> list[str]:
            return new_pg.psql("SELECT rolname FROM pg_roles", "postgres").split()

        wait_for(lambda: PG_USER in roles(), "the role the restore creates")
        os.killpg(restore.pid, signal.SIGKILL)  # as docker kill: no trap runs
        restore.communicate(timeout=60)
        assert restore.returncode == -signal.SIGKILL
        if used:  # something on the server depends on the role since: it stays
            new_pg.psql(f'GRANT CONNECT ON DATABASE "admin_db" TO "{PG_USER}"', "postgres")

        result = run_ok(run_script, RESTORE, "verify", backup.name, env=new_env)

        assert "[ERROR]" not in result.stderr
        assert db not in new_pg.psql("SELECT datname FROM pg_database", "postgres").split()
        if used:
            assert (
                "left the roles that a killed restore had created and that are in use or gone "
                f"now: {PG_USER}"
            ) in result.stderr
            assert PG_USER in roles()
        else:
            assert f"dropped the roles that a killed restore had created: {PG_USER}" in (
                result.stderr
            )
            assert PG_USER not in roles()


def test_a_restore_loaded_by_a_superuser_warns_that_a_backup_could_run_programs(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    with start_postgres(
        tmp_path / "pg", db="su_db", user="gym_secure_user", password="su pw"
    ) as server:
        server.psql("CREATE TABLE members (id int)", superuser=False)
        server.psql('ALTER ROLE "gym_secure_user" CREATEDB', "postgres")
        env = {**backup_env(tmp_path), **server.env()}
        run_ok(run_script, BACKUP, "postgresql", env=env)
        backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
        plain = run_ok(run_script, RESTORE, "postgresql", backup.name, "--target-db", "a", env=env)
        server.psql('ALTER ROLE "gym_secure_user" SUPERUSER', "postgres")

        powerful = run_ok(
            run_script, RESTORE, "postgresql", backup.name, "--target-db", "b", env=env
        )

    warning = "gym_secure_user, which loads the dump, is a superuser: a hostile backup could run"
    assert warning not in plain.stderr
    assert warning in powerful.stderr


def test_a_staging_folder_planted_in_dest_by_another_user_is_not_followed(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = write_files(tmp_path / "uploads", {"socio.txt": b"member\n"})
    env = backup_env(tmp_path, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=False)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(0o1777)  # others may write there
    (dest / "lnk").symlink_to(tmp_path)
    # a journal that names this very restore, and a folder record through the link
    staging = dest / ".gym-restore.AAAAAAAA"
    staging.mkdir()
    sha = Path(f"{backup}.sha256").read_text().split()[0]
    fields = [
        "gym-backup files restore journal 1",
        f"backup={backup.name}",
        f"sha256={sha}",
        f"dest={dest}",
        "root=0/6777/65534:65534",
        "started=x",
        "d/0/777/lnk/victim",
    ]
    (staging / "journal").write_bytes(b"".join(f.encode() + b"\0" for f in fields))
    for path in (staging / "journal", staging):
        os.chown(path, 65534, 65534)  # nobody's, as another user would leave it
    before = tree_state(tmp_path / "victim"), victim.stat().st_mode, dest.stat()

    result = run_script(RESTORE, "files", backup.name, str(dest), env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert "named like the staging folder of a restore, but it or its journal" in result.stderr
    assert "Nothing was changed." in result.stderr
    after = tree_state(tmp_path / "victim"), victim.stat().st_mode, dest.stat()
    assert after[:2] == before[:2]
    assert (after[2].st_mode, after[2].st_uid) == (before[2].st_mode, before[2].st_uid)
