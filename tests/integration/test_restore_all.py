"""`restore_script.sh all`: the backups of one run, every type, verified together before any is
restored; and a restore onto brand-new servers (the roles come from the backup)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.demo import write_env_file
from devtools.sandbox import (
    PostgresServer,
    RedisServer,
    sql_ident,
    start_postgres,
    start_redis,
)
from generator.backup_types import BACKUP_TYPES
from generator.config import KNOWN_KEYS
from tests.support import (
    BACKUP,
    ENCRYPTION,
    GYM_BACKUP,
    PG_USER,
    RESTORE,
    MakeEnv,
    NewDb,
    RunScript,
    backups_of,
    flip_middle_byte,
    load_fidelity,
    name_parts,
    tree_state,
    write_files,
)

TYPES = [t.name for t in BACKUP_TYPES]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test only (a restore replaces its data)."""
    with start_redis(tmp_path / "redis") as server:
        yield server


def backed_up_run(
    pg: PostgresServer,
    redis: RedisServer,
    db: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
    key: str | None = None,
) -> tuple[dict[str, str], str]:
    """Data in all three sources and one full backup of them: the environment and the run's
    TIMESTAMP."""
    pg.psql(
        "CREATE TABLE socios (id int PRIMARY KEY, nombre text);"
        "INSERT INTO socios SELECT i, 'Socio ' || i FROM generate_series(1, 500) i;",
        db,
        superuser=False,
    )
    redis.pipe([["SET", f"plan:{i}", f"mensual {i}"] for i in range(200)])
    env = backup_env(tmp_path, redis=redis, encryption_key=key, POSTGRES_DB=db)
    result = run_script(BACKUP, "full", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    backups = Path(env["BACKUP_DIR"])
    stamps = {"_".join(name_parts(p.name)[1:]) for t in TYPES for p in backups_of(backups, t)}
    assert len(stamps) == 1
    return env, stamps.pop()


def change_everything(pg: PostgresServer, redis: RedisServer, db: str, files: Path) -> None:
    pg.psql("UPDATE socios SET nombre = 'cambiado'; DELETE FROM socios WHERE id > 400;", db)
    redis.pipe([["SET", "plan:1", "cambiado"], ["DEL", "plan:2"], ["SET", "nuevo", "x"]])
    (files / "notes.txt").write_bytes(b"changed\n")
    (files / "members/photos/member_0001.jpg").unlink()


def backup_names(backups: Path) -> set[str]:
    return {p.name for kind in TYPES for p in backups_of(backups, kind)}


def states(pg: PostgresServer, redis: RedisServer, db: str, files: Path) -> tuple[object, ...]:
    return pg.dump(db), redis.digest(), tree_state(files)


@pytest.mark.parametrize("key", ENCRYPTION)
def test_all_restores_the_three_backups_of_the_newest_complete_run(
    key: str | None,
    pg: PostgresServer,
    own_redis: RedisServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
    short_tmp: Path,
) -> None:
    db = new_db()
    env, stamp = backed_up_run(pg, own_redis, db, backup_env, run_script, tmp_path, key)
    env["TMPDIR"] = str(short_tmp)
    files = Path(env["FILES_DIR"])
    before = states(pg, own_redis, db, files)
    change_everything(pg, own_redis, db, files)
    backups = Path(env["BACKUP_DIR"])
    # a newer run without a files backup is not complete: all takes the older one
    result = run_script(BACKUP, "postgresql", env=env)
    assert result.returncode == 0, result.stderr

    result = run_script(RESTORE, "all", "--clean", "--force", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    log = (backups / "restore.log").read_text()
    assert f"restoring the run {stamp}, the newest with a complete backup of every type" in log
    assert states(pg, own_redis, db, files) == before
    for kind in TYPES:
        assert f"all: checking {kind}_backup_{stamp}" in log
    # the safety backups come before the first restore
    assert log.index("every backup of the run") < log.index("taking a safety backup")
    assert log.rindex("taking a safety backup") < log.index("restoring postgresql_backup_")
    assert len(backups_of(backups, "postgresql")) == 3  # the run, the newer one, the safety
    assert len(backups_of(backups, "redis")) == 2


def test_all_given_a_run_that_lacks_a_type_names_what_exists_and_changes_nothing(
    pg: PostgresServer,
    own_redis: RedisServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    env, stamp = backed_up_run(pg, own_redis, db, backup_env, run_script, tmp_path)
    backups = Path(env["BACKUP_DIR"])
    (gone,) = backups_of(backups, "redis")
    gone.unlink()
    files = Path(env["FILES_DIR"])
    change_everything(pg, own_redis, db, files)
    changed = states(pg, own_redis, db, files)
    names = backup_names(backups)

    given = run_script(RESTORE, "all", stamp, "--clean", "--force", env=env)
    newest = run_script(RESTORE, "all", "--clean", "--force", env=env)

    assert given.returncode == 6, given.stdout + given.stderr
    assert f"the run {stamp} has no complete backup of redis" in given.stderr
    assert f"it has {stamp} (postgresql, files)" in given.stderr
    assert newest.returncode == 6, newest.stdout + newest.stderr
    assert "no run in" in newest.stderr
    assert f"{stamp} (postgresql, files)" in newest.stderr
    assert states(pg, own_redis, db, files) == changed
    assert backup_names(backups) == names


def test_all_with_one_corrupted_backup_touches_none_of_the_three_targets(
    pg: PostgresServer,
    own_redis: RedisServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    env, stamp = backed_up_run(pg, own_redis, db, backup_env, run_script, tmp_path)
    backups = Path(env["BACKUP_DIR"])
    (last,) = backups_of(backups, TYPES[-1])  # the others pass their checks first
    flip_middle_byte(last)
    files = Path(env["FILES_DIR"])
    change_everything(pg, own_redis, db, files)
    changed = states(pg, own_redis, db, files)
    names = backup_names(backups)

    result = run_script(RESTORE, "all", stamp, "--clean", "--force", env=env)

    assert result.returncode == 4, result.stdout + result.stderr
    assert (
        f"{last.name} failed the checksum check: the sha256 of {last.name} is not" in result.stderr
    )
    assert f"all: the run {stamp} was not restored; nothing was changed" in result.stderr
    assert states(pg, own_redis, db, files) == changed
    # no safety backup either: nothing was started
    assert backup_names(backups) == names


def test_all_refuses_before_touching_anything_when_a_later_target_would_refuse(
    pg: PostgresServer,
    own_redis: RedisServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    env, stamp = backed_up_run(pg, own_redis, db, backup_env, run_script, tmp_path)
    files = Path(env["FILES_DIR"])
    change_everything(pg, own_redis, db, files)
    changed = states(pg, own_redis, db, files)

    result = run_script(RESTORE, "all", stamp, "--clean", env=env)  # no --force: files conflict

    assert result.returncode == 6, result.stdout + result.stderr
    assert "pass --force to overwrite them. Nothing was changed." in result.stderr
    assert states(pg, own_redis, db, files) == changed


@pytest.fixture
def app_login_role(pg: PostgresServer) -> Iterator[str]:
    """A login role of the application (with a password on the old server)."""
    name = f"gym_app_{uuid.uuid4().hex[:8]}"
    pg.psql(f"CREATE ROLE {sql_ident(name)} LOGIN PASSWORD 'secreto'", "postgres")
    try:
        yield name
    finally:
        pg.psql(f"DROP ROLE IF EXISTS {sql_ident(name)}", "postgres")


def test_all_onto_new_servers_creates_the_roles_and_restores_owners_and_grants(
    pg: PostgresServer,
    app_login_role: str,
    own_redis: RedisServer,
    new_db: NewDb,
    reader_role: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    load_fidelity(pg, db, reader_role)
    pg.psql(f"GRANT SELECT ON gym.members TO {sql_ident(app_login_role)}", db, superuser=False)
    app = sql_ident(app_login_role)
    pg.psql(
        f"ALTER ROLE {app} SET search_path = gym, public; ALTER ROLE {app} SET work_mem = '8MB';"
        f"GRANT {sql_ident(reader_role)} TO {app}",
        "postgres",
    )
    env = backup_env(tmp_path / "old", redis=own_redis, POSTGRES_DB=db)
    result = run_script(BACKUP, "full", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    old_files = Path(env["FILES_DIR"])
    before = (pg.dump(db), own_redis.digest(), tree_state(old_files))
    admin_password = secrets.token_urlsafe(12) + " 'x\""
    with (
        start_postgres(
            tmp_path / "new-pg", db="admin_db", user="new_admin", password=admin_password
        ) as new_pg,
        start_redis(tmp_path / "new-redis") as new_redis,
    ):
        new_pg.psql('ALTER ROLE "new_admin" SUPERUSER', "postgres")
        assert PG_USER not in new_pg.psql("SELECT rolname FROM pg_roles", "postgres").split()
        # the old host's disk is gone: only the backups were saved
        backups = tmp_path / "saved-backups"
        shutil.copytree(Path(env["BACKUP_DIR"]), backups)
        write_files(tmp_path / "new-host", {})
        new_env = {
            **env,
            **new_redis.env(),
            "BACKUP_DIR": str(backups),
            "FILES_DIR": str(tmp_path / "new-host/uploads"),
            "POSTGRES_HOST": new_pg.host,
            "POSTGRES_PORT": str(new_pg.port),
            "POSTGRES_ADMIN_USER": "new_admin",
            "POSTGRES_ADMIN_PASSWORD": admin_password,
        }

        result = run_script(RESTORE, "all", env=new_env)

        assert result.returncode == 0, result.stdout + result.stderr
        after = (new_pg.dump(db), new_redis.digest(), tree_state(tmp_path / "new-host/uploads"))
        assert after == before
        roles = new_pg.psql(
            "SELECT rolname, rolcanlogin, rolpassword IS NULL FROM pg_authid", "postgres"
        ).splitlines()
        assert {f"{PG_USER}|t|f", f"{reader_role}|f|t", f"{app_login_role}|t|t"} <= set(roles), (
            roles,
            result.stdout + result.stderr,
        )
        settings_and_groups = (
            "SELECT r.rolname, s.setconfig, ARRAY(SELECT b.rolname FROM pg_auth_members m "
            "JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid) FROM pg_roles r "
            "LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0"
        )

        def of_app(server: PostgresServer) -> list[str]:
            rows = server.psql(settings_and_groups, "postgres").splitlines()
            return [row for row in rows if row.split("|")[0] == app_login_role]

        assert of_app(new_pg) == of_app(pg)
        assert "work_mem=8MB" in of_app(new_pg)[0]
        assert f"created the login roles {app_login_role} WITHOUT a password" in result.stderr
        assert "ALTER ROLE name PASSWORD" in result.stderr
        # the backup role logs in with POSTGRES_PASSWORD, and the new server is backed up again
        again = run_script(BACKUP, "postgresql", env=new_env)
        assert again.returncode == 0, again.stdout + again.stderr


def test_a_restore_onto_the_same_server_creates_no_role(
    pg: PostgresServer,
    own_redis: RedisServer,
    new_db: NewDb,
    reader_role: str,
    admin: tuple[str, str],
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    load_fidelity(pg, db, reader_role)
    env = backup_env(tmp_path, redis=own_redis, POSTGRES_DB=db)
    result = run_script(BACKUP, "postgresql", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (backup,) = backups_of(Path(env["BACKUP_DIR"]), "postgresql")
    roles = pg.psql("SELECT rolname FROM pg_roles ORDER BY 1", "postgres")
    target = new_db(create=False)

    result = run_script(
        RESTORE,
        "postgresql",
        backup.name,
        "--target-db",
        target,
        env=env | {"POSTGRES_ADMIN_USER": admin[0], "POSTGRES_ADMIN_PASSWORD": admin[1]},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "creating the roles" not in result.stderr
    assert pg.psql("SELECT rolname FROM pg_roles ORDER BY 1", "postgres") == roles
    assert pg.dump(target) == pg.dump(db)


def test_the_cli_restores_all_without_a_timestamp_and_passes_the_scripts_refusal_on(
    tmp_path: Path,
    backup_env: MakeEnv,
    run_script: RunScript,
) -> None:
    env = backup_env(tmp_path)
    result = run_script(BACKUP, "files", env=env)
    assert result.returncode == 0, result.stderr
    env_file = write_env_file(tmp_path / ".env", {k: v for k, v in env.items() if k in KNOWN_KEYS})
    cli_env = {k: v for k, v in os.environ.items() if k not in KNOWN_KEYS}

    result = subprocess.run(
        [str(GYM_BACKUP), "restore", "all", "--local", "--env", str(env_file)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 6, result.stdout + result.stderr
    assert "has a complete backup of every type (postgresql redis files" in result.stderr
    assert "(files)" in result.stderr


def test_all_stopped_midway_says_what_it_restored_and_what_not(
    pg: PostgresServer,
    own_redis: RedisServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    env, stamp = backed_up_run(pg, own_redis, db, backup_env, run_script, tmp_path)
    files = Path(env["FILES_DIR"])
    before = states(pg, own_redis, db, files)
    change_everything(pg, own_redis, db, files)
    changed = states(pg, own_redis, db, files)
    # the temporary redis-server cannot listen there: the Redis restore fails after its checks
    env["REDIS_RESTORE_HOST"] = "192.0.2.1"

    result = run_script(RESTORE, "all", stamp, "--clean", "--force", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"all: the restore of the run {stamp} stopped: restored: postgresql; failed (see above): "
        "redis; not restored: files." in result.stderr
    )
    after = states(pg, own_redis, db, files)
    assert after[0] == before[0]  # PostgreSQL restored
    assert after[1:] == changed[1:]  # Redis put back, files untouched
    backups = Path(env["BACKUP_DIR"])
    assert len(backups_of(backups, "postgresql")) == 2  # the safety backups were taken first
    assert len(backups_of(backups, "redis")) == 2
