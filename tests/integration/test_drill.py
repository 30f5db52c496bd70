"""backup_script.sh drill: restore_script.sh verify --deep of the newest backup of each type, on
real servers; what it reports, what fails it, what it skips."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, RedisServer, start_redis
from tests.support import (
    BACKUP,
    KEY,
    MakeEnv,
    NewDb,
    RunScript,
    backups_of,
    createdb_privilege,
    database_names,
    flip_middle_byte,
    processes_in,
    run_ok,
    stamp,
)

# The database, Redis and files of these tests, and what a deep verify of their backups finds.
GYM_SQL = """
CREATE TABLE members (id int PRIMARY KEY, name text);
INSERT INTO members SELECT i, 'Socio ' || i FROM generate_series(1, 1234) AS i;
CREATE TABLE settings (k text PRIMARY KEY, v text);
INSERT INTO settings VALUES ('a', 'b');
"""
REDIS_KEYS = {0: 5, 3: 2}
FOUND = {
    "postgresql": "2 tables, 1235 rows",
    "redis": f"{sum(REDIS_KEYS.values())} keys",
    "files": "4 files",  # conftest's SAMPLE_FILES
}


@pytest.fixture
def gym_db(pg: PostgresServer, new_db: NewDb) -> str:
    db = new_db()
    pg.psql(GYM_SQL, db, superuser=False)
    return db


@pytest.fixture
def gym_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with start_redis(tmp_path / "redis") as server:
        for db, count in REDIS_KEYS.items():
            server.pipe([["SET", f"k{i}", "v"] for i in range(count)], db=db)
        yield server


@pytest.fixture
def drill_env(
    backup_env: MakeEnv, gym_db: str, gym_redis: RedisServer, short_tmp: Path, tmp_path: Path
) -> dict[str, str]:
    """Encrypted backups (the drill hands the key, given as the hostile KEY, to the verify)."""
    return backup_env(
        tmp_path, encryption_key=KEY, redis=gym_redis, POSTGRES_DB=gym_db, TMPDIR=str(short_tmp)
    )


def summary_line(output: str) -> str:
    """The drill's last line: "drill finished: ..." or "drill FAILED: ..."."""
    lines = re.findall(r"\[(?:INFO|ERROR)\] (drill (?:finished|FAILED): .*)", output)
    assert lines, output
    return str(lines[-1])


def assert_nothing_left(pg: PostgresServer, short_tmp: Path, databases: set[str]) -> None:
    """No scratch database, no scratch redis-server, no run folder, no lock held."""
    assert database_names(pg) == databases
    assert processes_in(short_tmp) == []
    assert list(short_tmp.iterdir()) == []


def test_a_drill_after_a_full_backup_verifies_the_newest_backup_of_each_type_and_says_what_it_found(
    pg: PostgresServer, drill_env: dict[str, str], run_script: RunScript, short_tmp: Path
) -> None:
    backups = Path(drill_env["BACKUP_DIR"])
    run_ok(run_script, BACKUP, "full", env=drill_env)
    newest = {kind: backups_of(backups, kind)[-1].name for kind in FOUND}
    # newer, but not a backup (no .sha256 names it): the drill leaves it alone
    unverifiable = backups / f"files_backup_{stamp(-0.01)}.tar.gz.gpg"
    shutil.copyfile(backups / newest["files"], unverifiable)
    databases = database_names(pg)

    with createdb_privilege(pg, allowed=True):
        result = run_ok(run_script, BACKUP, "drill", env=drill_env, timeout=300)

    summary = " ".join(f"{kind} ok ({found})" for kind, found in FOUND.items())
    assert summary_line(result.stdout) == f"drill finished: {summary}"
    log = (backups / "backup.log").read_text()
    assert f"drill finished: {summary}" in log
    for kind, found in FOUND.items():
        checked = f"drill {kind}: {re.escape(newest[kind])}: ok, {found}"
        assert re.search(rf"{checked} \(\d+\.\d{{3}}s\)", log)
    assert unverifiable.name not in log
    # the verify's own checks, in restore.log (and passed on to the drill's output)
    assert f"verify {newest['postgresql']}: every check passed; found {FOUND['postgresql']}" in (
        (backups / "restore.log").read_text()
    )
    assert "check deep: ok (loaded into scratch database" in result.stdout
    assert_nothing_left(pg, short_tmp, databases)


def test_a_damaged_newest_backup_fails_the_drill_of_its_type_and_the_others_still_pass(
    pg: PostgresServer, drill_env: dict[str, str], run_script: RunScript, short_tmp: Path
) -> None:
    backups = Path(drill_env["BACKUP_DIR"])
    run_ok(run_script, BACKUP, "full", env=drill_env)
    run_ok(run_script, BACKUP, "redis", env=drill_env)
    older, newest = backups_of(backups, "redis")
    flip_middle_byte(newest)
    databases = database_names(pg)

    with createdb_privilege(pg, allowed=True):
        result = run_script(BACKUP, "drill", env=drill_env, timeout=300)

    assert result.returncode == 4, result.stdout + result.stderr
    assert summary_line(result.stderr) == (
        f"drill FAILED: postgresql ok ({FOUND['postgresql']}) redis FAILED (exit 4) "
        f"files ok ({FOUND['files']})"
    )
    assert f"drill redis: {newest.name} FAILED verify --deep (exit 4): " in result.stderr
    assert "failed the checksum check" in result.stderr
    drill_log = (backups / "backup.log").read_text().split("drill started")[1]
    assert f"drill redis: restore_script.sh verify {newest.name} --deep" in drill_log
    assert older.name not in drill_log, "only the newest backup of a type is drilled"
    assert_nothing_left(pg, short_tmp, databases)


def test_a_drill_with_no_backups_skips_every_type_and_succeeds(
    drill_env: dict[str, str], run_script: RunScript
) -> None:
    result = run_ok(run_script, BACKUP, "drill", env=drill_env)

    skipped = " ".join(f"{kind} skipped (no backup yet)" for kind in FOUND)
    assert summary_line(result.stdout) == f"drill finished: {skipped}"
    assert "restore.log" not in {p.name for p in Path(drill_env["BACKUP_DIR"]).iterdir()}


def test_without_createdb_the_postgresql_drill_is_skipped_and_says_which_setting_gives_it(
    pg: PostgresServer, drill_env: dict[str, str], run_script: RunScript, short_tmp: Path
) -> None:
    run_ok(run_script, BACKUP, "postgresql", env=drill_env)
    run_ok(run_script, BACKUP, "files", env=drill_env)
    databases = database_names(pg)

    with createdb_privilege(pg, allowed=False):
        result = run_ok(run_script, BACKUP, "drill", env=drill_env, timeout=300)

    assert summary_line(result.stdout) == (
        "drill finished: postgresql skipped (needs CREATEDB) redis skipped (no backup yet) "
        f"files ok ({FOUND['files']})"
    )
    assert "drill postgresql: skipped: needs CREATEDB" in result.stderr
    assert "set POSTGRES_ADMIN_USER (and POSTGRES_ADMIN_PASSWORD)" in result.stderr
    assert_nothing_left(pg, short_tmp, databases)


def test_a_drill_takes_no_dry_run(drill_env: dict[str, str], run_script: RunScript) -> None:
    result = run_script(BACKUP, "drill", "--dry-run", env=drill_env)

    assert result.returncode == 2
    assert "drill does not take --dry-run" in result.stderr
