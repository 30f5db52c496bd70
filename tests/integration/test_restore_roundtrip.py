"""restore_script.sh round trips: write data, back it up with backup_script.sh, change or drop it,
restore it with restore_script.sh, and compare with what was written.

PostgreSQL is compared with pg_dump (as superuser) of the source and the restored database,
Redis with DEBUG DIGEST, the keys and their TTLs, files with the whole tree (types, modes,
owners, times, contents, link targets). Real servers, real gpg, real tar: nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, RedisServer, redis_on, sql_ident, start_redis
from tests.support import (
    BACKUP,
    ENCRYPTION,
    FIDELITY_ROWS,
    FIDELITY_TABLES,
    KEY,
    RESTORE,
    MakeEnv,
    NewDb,
    Resp,
    RespError,
    RunScript,
    assert_same_redis,
    backups_of,
    database_names,
    load_fidelity,
    load_redis_dataset,
    make_uploads,
    only_backup,
    processes_in,
    redis_state,
    restarted_when_stopped,
    run_ok,
    tree_state,
    truncate_half,
    wait_aof_rewrite,
    write_sidecar,
)

# What happens to the live database after the backup: every kind of object changed or dropped.
MUTATIONS = """
UPDATE gym.members SET name = 'cambiado' WHERE id < 50;
DELETE FROM gym.payments WHERE receipt % 3 = 0;
INSERT INTO gym.payments (member_id, amount, paid_at) VALUES (1, 1, '2030-01-01 00:00+00');
DROP VIEW gym.member_totals;
DROP TABLE gym.checkins CASCADE;
SELECT lo_unlink(oid) FROM pg_largeobject_metadata;
UPDATE gym.kitchen_sink SET blob = 'x', jsb = '{}', feeling = 'ok';
ALTER TABLE gym.members ADD COLUMN phone text;
DROP FUNCTION gym.add(integer, integer);
COMMENT ON TABLE gym.kitchen_sink IS 'changed';
SELECT setval('gym.unused_seq', 99);
ALTER TYPE gym.mood ADD VALUE 'nuevo';
CREATE TABLE public.added_after_backup (x int);
"""


# The objects, not who owns them or may use them: what a restore with --no-owner compares.
NO_OWNERS = ("--no-owner", "--no-privileges")


def lo_bytes(pg: PostgresServer, db: str) -> list[str]:
    return pg.psql(
        "SELECT encode(lo_get(oid), 'hex') FROM pg_largeobject_metadata ORDER BY oid", db
    ).splitlines()


# --------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("key", ENCRYPTION)
@pytest.mark.usefixtures("createdb")
def test_postgresql_clean_restore_over_the_live_database_brings_back_every_object(
    key: str | None,
    pg: PostgresServer,
    reader_role: str,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    source = new_db()
    load_fidelity(pg, source, reader_role)
    written = pg.dump(source)
    sequence = pg.psql("SELECT last_value, is_called FROM gym.receipt_no", source)
    env = backup_env(tmp_path, encryption_key=key, POSTGRES_DB=source)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=key is not None)
    pg.psql(MUTATIONS, source, superuser=False)
    # a schema the backup does not contain (and a table in it) is left alone
    pg.psql("CREATE SCHEMA reporting; CREATE TABLE reporting.kept (x int)", source, superuser=False)
    pg.psql("INSERT INTO reporting.kept VALUES (1)", source, superuser=False)
    changed = pg.dump(source)
    assert changed != written

    result = run_ok(run_script, RESTORE, "postgresql", backup.name, "--clean", env=env)

    # every schema the backup contains is exactly as it was backed up, public included (the
    # table added there after the backup is gone); the schema it does not contain is named
    assert "replaces everything in the schemas of the backup: gym public" in result.stdout
    assert "does not contain, left as they are: reporting" in result.stderr
    assert f"{FIDELITY_TABLES} tables, {FIDELITY_ROWS} rows" in result.stdout
    assert pg.psql("SELECT x FROM reporting.kept", source) == "1"
    pg.psql("DROP SCHEMA reporting CASCADE", source, superuser=False)
    assert pg.dump(source) == written
    assert pg.psql("SELECT last_value, is_called FROM gym.receipt_no", source) == sequence
    assert lo_bytes(pg, source) == ["00010203ff00fe00"]
    # the safety backup taken first holds the database as it was just before the restore
    safety = [p for p in backups_of(tmp_path / "backups", "postgresql") if p != backup]
    assert len(safety) == 1, safety
    listing = run_ok(run_script, BACKUP, "list", env=env).stdout
    marked = [ln for ln in listing.splitlines() if "(safety backup taken before a restore)" in ln]
    assert len(marked) == 1
    assert safety[0].name in marked[0]
    undo = new_db(create=False)
    run_ok(run_script, RESTORE, "postgresql", safety[0].name, "--target-db", undo, env=env)
    assert pg.dump(undo) == changed


def test_postgresql_clean_restore_replaces_other_roles_objects_and_counts_what_it_restored(
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    target = new_db()
    pg.psql("CREATE TABLE mine (x int); INSERT INTO mine VALUES (1), (2)", target, superuser=False)
    env = backup_env(tmp_path, POSTGRES_DB=target)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    # left in the target by another role, not readable by the restoring one: in a schema of the
    # backup (replaced like everything there) and in a schema of its own (left alone)
    pg.psql(
        "CREATE TABLE public.admin_only (x int); INSERT INTO public.admin_only VALUES (1);"
        "CREATE SCHEMA admin; CREATE TABLE admin.kept (x int); INSERT INTO admin.kept VALUES (1)",
        target,
    )

    result = run_ok(
        run_script, RESTORE, "postgresql", backup.name, "--clean", "--no-safety-backup", env=env
    )

    assert "[ERROR]" not in result.stderr
    assert "does not contain, left as they are: admin" in result.stderr
    assert "1 tables, 2 rows" in result.stdout
    assert pg.psql("SELECT to_regclass('public.admin_only') IS NULL", target) == "t"
    assert pg.psql("SELECT count(*) FROM admin.kept", target) == "1"
    assert pg.psql("SELECT count(*) FROM mine", target) == "2"


@pytest.mark.usefixtures("createdb")
def test_postgresql_restore_with_target_db_makes_an_identical_new_database(
    pg: PostgresServer,
    reader_role: str,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    source = new_db()
    load_fidelity(pg, source, reader_role)
    written = pg.dump(source)
    env = backup_env(tmp_path, encryption_key=KEY, POSTGRES_DB=source)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=True)
    target = new_db(create=False, suffix=" nuevo 'ñ' \"q\" $x")

    result = run_ok(run_script, RESTORE, "postgresql", backup.name, "--target-db", target, env=env)

    assert f"created database {target}" in result.stdout
    assert pg.dump(target) == written
    assert pg.dump(source) == written
    assert lo_bytes(pg, target) == ["00010203ff00fe00"]
    grants = pg.psql(
        f"SELECT privilege_type FROM information_schema.role_table_grants "  # noqa: S608 - generated name
        f"WHERE grantee = '{reader_role}' AND table_name = 'members'",
        target,
    )
    assert grants == "SELECT"
    # no safety backup: nothing was there to lose
    assert backups_of(tmp_path / "backups", "postgresql") == [backup]


@pytest.mark.parametrize(
    ("fault", "code", "said"),
    [
        ("wrong-key", 5, "wrong encryption key"),
        ("truncated", 4, "the encrypted data is damaged, truncated"),
    ],
)
@pytest.mark.usefixtures("createdb")
def test_a_postgresql_restore_into_a_new_database_that_cannot_decode_leaves_no_database(
    fault: str,
    code: int,
    said: str,
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    """The backup is decoded once, while it loads: a wrong key or a damaged file (with a
    sidecar that matches it) rolls the load back and drops the database the restore made."""
    source = new_db()
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 50000) AS n;", source, superuser=False)
    env = backup_env(tmp_path, encryption_key=KEY, POSTGRES_DB=source)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=True)
    if fault == "wrong-key":
        env["ENCRYPTION_KEY"] = "not the key it was made with"
    else:
        truncate_half(backup)
        write_sidecar(backup)
    target = new_db(create=False)

    result = run_script(RESTORE, "postgresql", backup.name, "--target-db", target, env=env)

    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stderr
    assert "dropped again" in result.stderr
    assert target not in database_names(pg)


@pytest.mark.usefixtures("createdb")
def test_postgresql_restore_of_a_dump_naming_a_dropped_role_needs_no_owner(
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    gone = f"gym_gone_{uuid.uuid4().hex[:8]}"
    role = sql_ident(gone)
    source = new_db()
    pg.psql(f"CREATE ROLE {role}", "postgres")
    pg.psql(
        "CREATE TABLE mine (id int PRIMARY KEY, note text);"
        "INSERT INTO mine VALUES (1, 'José'), (2, NULL);",
        source,
        superuser=False,
    )
    pg.psql(f"GRANT SELECT, UPDATE ON mine TO {role}", source, superuser=False)
    pg.psql(
        "CREATE TABLE theirs (b text); INSERT INTO theirs VALUES ('owned by a gone role');",
        source,
    )
    pg.psql(f"ALTER TABLE theirs OWNER TO {role}", source)
    pg.psql(f"GRANT SELECT ON theirs TO {sql_ident(pg.user)}", source)
    env = backup_env(tmp_path, POSTGRES_DB=source)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    pg.psql(
        f"REASSIGN OWNED BY {role} TO {sql_ident(pg.user)}; DROP OWNED BY {role};DROP ROLE {role};",
        source,
    )
    empty = new_db()
    empty_dump = pg.dump(empty)
    fresh = new_db(create=False)

    into_new = run_script(RESTORE, "postgresql", backup.name, "--target-db", fresh, env=env)
    into_empty = run_script(RESTORE, "postgresql", backup.name, "--target-db", empty, env=env)

    # The backup carries the role, but POSTGRES_USER may not create it (no POSTGRES_ADMIN_USER,
    # no CREATEROLE): refused before anything changed.
    for failed in (into_new, into_empty):
        assert failed.returncode == 6, failed.stdout + failed.stderr
        assert f"could not create the roles {gone} that the backup names" in failed.stderr
        assert "permission denied to create role" in failed.stderr
        assert "pass --no-owner. Nothing was changed." in failed.stderr
    assert fresh not in database_names(pg)
    assert pg.dump(empty) == empty_dump
    assert gone not in pg.psql("SELECT rolname FROM pg_roles", "postgres").split()

    restored = run_ok(
        run_script, RESTORE, "postgresql", backup.name, "--target-db", fresh, "--no-owner", env=env
    )

    assert "without owners and grants" in restored.stdout
    assert pg.dump(fresh, *NO_OWNERS) == pg.dump(source, *NO_OWNERS)
    owners = pg.psql(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'", fresh
    ).splitlines()
    assert owners == [pg.user]
    acls = (
        "SELECT count(*) FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relacl IS NOT NULL"
    )
    assert pg.psql(acls, fresh) == "0"
    assert pg.psql("SELECT b FROM theirs", fresh) == "owned by a gone role"


# ------------------------------------------------------------------------------------- Redis


class LiveClient(threading.Thread):
    """A client of the live Redis that keeps reading and writing until told to stop."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.halt = threading.Event()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with Resp(self.server) as client:
                while not self.halt.is_set():
                    for command in (
                        ("INCR", "live:client:counter"),
                        ("GET", "text:unicode"),
                        ("HGET", "hash:small", "name"),
                    ):
                        try:
                            client.call(*command)
                            self.ok += 1
                        except RespError as exc:
                            self.errors[exc.kind] += 1
                    time.sleep(0.002)
        except BaseException as exc:  # reported by the test
            self.failure = exc


@pytest.mark.parametrize(
    ("key", "redis_name"),
    [
        pytest.param(None, "redis_open", id="plain-no-password"),
        pytest.param(KEY, "redis_auth", id="encrypted-password"),
    ],
)
def test_redis_online_restore_brings_back_the_dataset_while_a_client_uses_the_server(
    key: str | None,
    redis_name: str,
    request: pytest.FixtureRequest,
    backup_env: MakeEnv,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    live: RedisServer = request.getfixturevalue(redis_name)
    load_redis_dataset(live)
    started = time.monotonic()
    written = redis_state(live)
    env = backup_env(tmp_path, encryption_key=key, redis=live, TMPDIR=str(short_tmp))
    run_ok(run_script, BACKUP, "redis", env=env)
    backup = only_backup(tmp_path / "backups", "redis", encrypted=key is not None)
    # the live server's own replication settings, which the restore borrows and gives back
    live.cli("CONFIG", "SET", "masterauth", "its own 'auth' $v")
    live.cli("CONFIG", "SET", "masteruser", "replicator")
    live.cli("FLUSHDB")
    live.cli("SET", "text:unicode", "changed")
    live.cli("SET", "db1:new", "added after the backup", db=1)
    live.cli("PERSIST", "db5:hash", db=5)
    assert redis_state(live).digest != written.digest
    client = LiveClient(live)
    client.start()

    try:
        result = run_ok(run_script, RESTORE, "redis", backup.name, env=env)
        settings = [live.cli("CONFIG", "GET", name) for name in ("masterauth", "masteruser")]
    finally:
        client.halt.set()
        client.join(timeout=30)
        live.cli("REPLICAOF", "NO", "ONE")
        live.cli("CONFIG", "SET", "masterauth", "")
        live.cli("CONFIG", "SET", "masteruser", "")

    assert client.failure is None, f"the client lost the server: {client.failure!r}"
    assert client.ok > 0
    # while the server replicated the backup it refused writes (READONLY) or said it was loading
    assert set(client.errors) <= {"READONLY", "LOADING"}, client.errors
    live.cli("DEL", "live:client:counter")
    assert_same_redis(
        redis_state(live), written, elapsed_ms=int((time.monotonic() - started) * 1000)
    )
    assert live.cli("ROLE").splitlines()[0] == "master"
    assert settings == ["masterauth\nits own 'auth' $v", "masteruser\nreplicator"]
    assert "online" in result.stdout
    assert processes_in(short_tmp) == [], "the temporary redis-server was left running"
    assert len(backups_of(tmp_path / "backups", "redis")) == 2, "no safety backup"


@pytest.mark.parametrize(
    ("appendonly", "running"),
    [
        pytest.param(False, "restarted", id="rdb-restarted-at-once"),
        pytest.param(True, "stays-down", id="appendonly-started-after"),
        pytest.param(True, "stopped", id="appendonly-already-stopped"),
    ],
)
def test_redis_file_restore_is_what_the_server_loads_at_its_next_start(
    appendonly: bool,
    running: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    password = "file mode 'pw' $x"
    with start_redis(tmp_path / "redis", password=password, appendonly=appendonly) as live:
        if appendonly:
            wait_aof_rewrite(live)
        load_redis_dataset(live)
        started = time.monotonic()
        written = redis_state(live)
        env = backup_env(tmp_path, encryption_key=KEY, redis=live, REDIS_DATA_DIR=str(live.dir))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=True)
        # changes after the backup, on disk: in dump.rdb, and with appendonly on in the AOF
        live.cli("FLUSHDB", db=1)
        live.cli("SET", "text:unicode", "changed")
        live.cli("DEL", "list:big")
        live.cli("SAVE")
        assert live.process is not None
        proc = live.process
        if running == "stopped":
            live.stop()

        with restarted_when_stopped(live) if running == "restarted" else nullcontext():
            result = run_ok(run_script, RESTORE, "redis", backup.name, "--mode", "file", env=env)

        assert proc.wait(timeout=10) == 0, "the script did not stop Redis"
        if running == "restarted":
            # as under Docker's restart policy: the script sees the server back with the backup
            assert "with SHUTDOWN NOSAVE" in result.stdout
            assert f"redis: restored {backup.name} into" in result.stdout
            after = redis_state(live)
        else:
            if running == "stays-down":
                assert "has not started again within 10s: start it now" in result.stderr
            else:
                assert "was not reachable" in result.stderr
            assert "redis: restored" not in result.stdout, "not restored until Redis loads it"
            with redis_on(live.dir, password=password, appendonly=appendonly) as restarted:
                after = redis_state(restarted)
        if appendonly:
            assert list(live.dir.glob("appendonlydir.before-restore-*")), "old AOF not kept"
        assert not list(live.dir.glob(".*before-restore")), "the replaced RDB was kept"
        assert_same_redis(after, written, elapsed_ms=int((time.monotonic() - started) * 1000))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another owner needs root")
def test_redis_file_restore_keeps_the_owner_and_mode_of_the_files_it_replaces(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    with start_redis(tmp_path / "redis", appendonly=True) as live:
        wait_aof_rewrite(live)
        live.cli("SET", "k", "v")
        live.cli("SAVE")
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=False)
        # as in the redis image: the data belongs to the redis user, not to the restoring root
        for path in (live.dir / "dump.rdb", live.dir / "appendonlydir"):
            os.chown(path, 65534, 65534)
        (live.dir / "dump.rdb").chmod(0o640)
        (live.dir / "appendonlydir").chmod(0o750)

        live.stop()  # what the server does with the files once it runs is not the point here

        run_ok(
            run_script,
            RESTORE,
            "redis",
            backup.name,
            "--mode",
            "file",
            "--no-safety-backup",
            env=env,
        )

        aof = live.dir / "appendonlydir"
        for path, mode in (
            (live.dir / "dump.rdb", 0o640),
            (aof, 0o750),
            (aof / "appendonly.aof.1.base.rdb", 0o640),
            (aof / "appendonly.aof.manifest", 0o640),
        ):
            st = path.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, mode), path


# ------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("key", ENCRYPTION)
def test_files_restore_into_an_empty_files_dir_recreates_the_tree(
    key: str | None,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    uploads = make_uploads(tmp_path / "uploads")
    written = tree_state(uploads)
    env = backup_env(tmp_path, encryption_key=key, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=key is not None)
    shutil.rmtree(uploads)
    uploads.mkdir()

    result = run_ok(run_script, RESTORE, "files", backup.name, env=env)

    assert tree_state(uploads) == written
    assert written["última foto.jpg"][0] == "link"
    assert written["carpeta vacía"][0] == "dir"
    assert written["compartido"][1] == 0o2775
    assert f"into {uploads}" in result.stdout


def test_files_restore_into_a_folder_that_does_not_exist_yet_creates_it_like_the_source(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = make_uploads(tmp_path / "uploads")
    uploads.chmod(0o750)
    written = tree_state(uploads)
    env = backup_env(tmp_path, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=False)
    new = tmp_path / "restored here"

    result = run_ok(run_script, RESTORE, "files", backup.name, str(new), env=env)

    assert f"files: created the destination {new} (it did not exist)" in result.stdout
    assert tree_state(new) == written
    assert stat.S_IMODE(new.stat().st_mode) == 0o750
    assert int(new.stat().st_mtime) == int(uploads.stat().st_mtime)


def test_files_restore_over_existing_files_is_refused_without_force_and_overwrites_with_it(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    uploads = make_uploads(tmp_path / "uploads")
    written = tree_state(uploads)
    env = backup_env(tmp_path, encryption_key=KEY, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    dest = tmp_path / "dest with space"
    shutil.copytree(uploads, dest, symlinks=True)
    (dest / "scripts/run me.sh").write_bytes(b"#!/bin/sh\necho changed\n")
    (dest / "vacío.txt").unlink()
    (dest / "roto").unlink()
    (dest / "roto").write_text("now a file")
    shutil.rmtree(dest / "carpeta vacía")
    (dest / "carpeta vacía").write_text("a file where the archive has a folder")
    (dest / "extra.txt").write_text("not in the backup")
    (dest / "privado").chmod(0o755)
    before = tree_state(dest)

    refused = run_script(RESTORE, "files", backup.name, str(dest), env=env)

    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "pass --force" in refused.stderr
    assert "Nothing was changed" in refused.stderr
    assert tree_state(dest) == before

    run_ok(run_script, RESTORE, "files", backup.name, str(dest), "--force", env=env)

    assert tree_state(dest) == {**written, "extra.txt": before["extra.txt"]}


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="runs the restore as another user: needs root and setpriv",
)
def test_files_restore_by_a_non_root_user_brings_back_read_only_folders(
    rendered_scripts: Path,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="nr-", dir="/tmp"))
    try:
        uploads = base / "uploads"
        for rel in ("solo lectura/acta.txt", "solo lectura/sub/otra.txt", "normal.txt"):
            (uploads / rel).parent.mkdir(parents=True, exist_ok=True)
            (uploads / rel).write_text(rel)
        for folder in ("solo lectura/sub", "solo lectura"):
            (uploads / folder).chmod(0o555)
        for path in [base, *base.rglob("*")]:
            os.chown(path, nobody, nobody)
        env = backup_env(tmp_path, files_dir=uploads)
        run_ok(run_script, BACKUP, "files", env=env)
        backup = only_backup(tmp_path / "backups", "files", encrypted=False)
        for name in ("backups", "home", "dest"):
            (base / name).mkdir(mode=0o700)
            os.chown(base / name, nobody, nobody)
        for path in (backup, Path(f"{backup}.sha256")):
            shutil.copyfile(path, base / "backups" / path.name)
            os.chown(base / "backups" / path.name, nobody, nobody)
        script = base / RESTORE
        shutil.copyfile(rendered_scripts / RESTORE, script)
        script.chmod(0o755)
        env = {**env, "BACKUP_DIR": str(base / "backups"), "HOME": str(base / "home")}

        as_nobody = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
        result = subprocess.run(
            [*as_nobody, "bash", str(script), "files", backup.name, str(base / "dest")],
            env=env,
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        assert result.returncode == 0, result.stdout + result.stderr
        assert tree_state(base / "dest") == tree_state(uploads)
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)
