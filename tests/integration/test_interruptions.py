"""A signal or a SIGKILL in the middle of a run: the run stops at once, says exactly what it had
done, and leaves nothing half-written; what a killed run leaves, the next run removes.

The runs are made long on purpose, and deterministically: a test session holds a lock that the
run's pg_dump (or the restore's first statement) waits for, or Redis waits before it sends a
snapshot. A signal to the script's own PID must not wait for that step to end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from devtools.sandbox import PostgresServer, sql_literal, start_redis
from tests.support import (
    BACKUP,
    CHANGE,
    KEY,
    RESTORE,
    MakeEnv,
    Resp,
    RunScript,
    descendants,
    load_redis_dataset,
    only_backup,
    paused_fork,
    redis_settings,
    run_ok,
    runs_pg_dump,
    start_script,
    table_lock,
    wait_for,
    wait_for_blocked_session,
)


def sessions_of(pg: PostgresServer, db: str) -> str:
    return pg.psql(
        "SELECT count(*) FROM pg_stat_activity "  # noqa: S608 - quoted literals
        f"WHERE datname = {sql_literal(db)} AND usename = {sql_literal(pg.user)}",
        "postgres",
    )


def test_sigterm_to_the_script_alone_stops_a_waiting_dump_at_once(
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=payments_db, TMPDIR=str(tmp_path))
    backups = tmp_path / "backups"
    with table_lock(pg, payments_db, "billing.summary", "ACCESS EXCLUSIVE"):
        run = start_script(rendered_scripts, BACKUP, "postgresql", env=env)
        wait_for(lambda: list(backups.glob("*.partial")), "the dump to start", timeout=60)
        # the roles (pg_dumpall) come first: pg_dump itself, waiting for the lock
        wait_for(lambda: runs_pg_dump(descendants(run.pid)), "pg_dump to start", timeout=60)
        steps = descendants(run.pid)
        os.kill(run.pid, signal.SIGTERM)
        # pg_dump would wait for the lock for ever: the run must end while it is still held
        _, err = run.communicate(timeout=30)

    assert run.returncode == 143, err
    assert (
        "interrupted by SIGTERM: nothing was published under a final name; "
        "stopped: postgresql (nothing of it was published); not started: none"
    ) in err
    assert "interrupted by SIGTERM" in (backups / "backup.log").read_text()
    assert not [p for p in backups.iterdir() if p.name.startswith("postgresql_backup_")]
    assert runs_pg_dump(steps)
    for pid, argv in steps:
        assert not Path(f"/proc/{pid}").exists(), f"left running: {argv}"
    assert [p.name for p in tmp_path.glob("gym-backup-*")] == []


def test_sigterm_during_a_full_backup_names_what_was_published(
    backup_env: MakeEnv, rendered_scripts: Path, run_script: RunScript, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with start_redis(tmp_path / "redis") as redis:
        # Redis waits this long before it sends a snapshot: the redis part is in progress
        with Resp(redis) as r:
            r.call("SET", "k", "v")
            r.call("CONFIG", "SET", "repl-diskless-sync-delay", "60")
        env = backup_env(tmp_path, redis=redis, encryption_key=KEY)
        run = start_script(rendered_scripts, BACKUP, "full", env=env)
        log = backups / "backup.log"
        wait_for(
            lambda: log.exists() and "redis: taking" in log.read_text(),
            "the redis part to start",
            timeout=60,
        )
        os.kill(run.pid, signal.SIGTERM)
        _, err = run.communicate(timeout=30)

    published = only_backup(backups, "postgresql", encrypted=True)
    assert run.returncode == 143, err
    assert (
        f"interrupted by SIGTERM: published before the stop: {published.name}; "
        "stopped: redis (nothing of it was published); not started: files"
    ) in err
    assert not list(backups.glob("redis_backup_*")) + list(backups.glob("files_backup_*"))
    assert not list(backups.glob("*.partial"))
    checked = subprocess.run(
        ["sha256sum", "-c", f"{published.name}.sha256"], cwd=backups, check=False
    )
    assert checked.returncode == 0


def test_sigterm_while_a_redis_backup_waits_for_its_bgsave_stops_it_and_leaves_nothing(
    backup_env: MakeEnv, rendered_scripts: Path, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with start_redis(tmp_path / "redis") as redis:
        load_redis_dataset(redis)
        redis.cli("SAVE")
        settings = redis_settings(redis)
        env = backup_env(tmp_path, redis=redis, REDIS_DATA_DIR=str(redis.dir), TMPDIR=str(tmp_path))
        # a save in progress that does not end until the test lets it: the backup waits for it
        with paused_fork(redis, "BGSAVE"):
            run = start_script(rendered_scripts, BACKUP, "redis", env=env)
            log = backups / "backup.log"
            wait_for(
                lambda: log.exists() and "the BGSAVE waits for its end" in log.read_text(),
                "the backup to wait for the save in progress",
                timeout=60,
            )
            steps = descendants(run.pid)
            os.kill(run.pid, signal.SIGTERM)
            _, err = run.communicate(timeout=30)
        after = redis_settings(redis)

    assert run.returncode == 143, err
    assert (
        "interrupted by SIGTERM: nothing was published under a final name; "
        "stopped: redis (nothing of it was published); not started: none"
    ) in err
    assert not list(backups.glob("redis_backup_*"))
    for pid, argv in steps:
        assert not Path(f"/proc/{pid}").exists(), f"left running: {argv}"
    assert [p.name for p in tmp_path.glob("gym-backup-*")] == []
    assert after == settings


def test_sigterm_to_a_postgresql_restore_before_its_commit_rolls_it_back(
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=payments_db, LOCK_TIMEOUT="120")
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    pg.psql(CHANGE, payments_db, superuser=False)
    before = pg.dump(payments_db)
    with table_lock(pg, payments_db, "billing.summary"):
        run = start_script(rendered_scripts, RESTORE, "postgresql", backup.name, "--clean", env=env)
        wait_for_blocked_session(pg, payments_db)
        os.kill(run.pid, signal.SIGTERM)
        # the restore's statement waits for the lock: the run must end while it is still held
        _, err = run.communicate(timeout=30)

    assert run.returncode == 143, err
    assert (
        "interrupted by SIGTERM: the restore was stopped before its COMMIT and rolled back: "
        f"{payments_db} is as it was"
    ) in err
    wait_for(
        lambda: sessions_of(pg, payments_db) == "0", "the restore's session to end", timeout=60
    )
    assert pg.dump(payments_db) == before


def killed_mid_dump(
    pg: PostgresServer, db: str, scripts: Path, env: dict[str, str], *, everything: bool
) -> tuple[int, Path, Path]:
    """Start a PostgreSQL backup that waits for a lock, SIGKILL it (only the script, or every
    process of the run at once, as when its container is killed), release the lock; the
    script's PID, its run folder and its GnuPG home."""
    backups = Path(env["BACKUP_DIR"])
    with table_lock(pg, db, "billing.summary", "ACCESS EXCLUSIVE"):
        run = start_script(scripts, BACKUP, "postgresql", env=env)
        wait_for(lambda: list(backups.glob("*.partial")), "the dump to start", timeout=60)
        (run_folder,) = Path(env["TMPDIR"]).glob("gym-backup-*/run.*")
        gnupg_home = Path((run_folder / "gnupg-home").read_text().strip())
        victims = [run.pid] + [pid for pid, _ in descendants(run.pid)] if everything else [run.pid]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):  # a short-lived one may be gone
                os.kill(pid, signal.SIGKILL)
        run.communicate(timeout=30)
    return run.pid, run_folder, gnupg_home


def test_a_script_killed_alone_stops_its_steps_and_frees_the_lock(
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY, POSTGRES_DB=payments_db, TMPDIR=str(short_tmp))
    backups = tmp_path / "backups"
    pid, run_folder, _ = killed_mid_dump(pg, payments_db, rendered_scripts, env, everything=False)

    # the run's steps notice, stop themselves and remove the partial file
    wait_for(lambda: not list(backups.glob("*.partial")), "the orphaned part to clean up", 60)
    wait_for(lambda: sessions_of(pg, payments_db) == "0", "the orphaned pg_dump to stop", 60)
    assert "interrupted by SIGTERM" in (backups / "backup.log").read_text()
    assert not [p for p in backups.iterdir() if p.name.startswith("postgresql_backup_")]
    # the lock is free at once, and the next run removes the killed script's own folder
    result = run_ok(run_script, BACKUP, "postgresql", env={**env, "LOCK_TIMEOUT": "0"})
    assert f"cleaned up after a run that did not finish (pid {pid}: " in result.stderr
    assert not run_folder.exists()
    assert list(short_tmp.iterdir()) == []


def test_what_a_run_killed_with_all_its_processes_leaves_the_next_run_removes(
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY, POSTGRES_DB=payments_db, TMPDIR=str(short_tmp))
    backups = tmp_path / "backups"
    pid, run_folder, gnupg_home = killed_mid_dump(
        pg, payments_db, rendered_scripts, env, everything=True
    )
    partial = list(backups.glob("*.partial"))
    assert partial, "a run killed outright leaves its partial file"
    assert run_folder.exists()
    assert gnupg_home.exists()
    run_ok(run_script, BACKUP, "list", env=env)
    assert run_folder.exists(), "a run without the lock leaves others' folders alone"

    result = run_ok(run_script, BACKUP, "postgresql", env=env)

    cleaned = f"cleaned up after a run that did not finish (pid {pid}: backup_script.sh postgresql)"
    assert cleaned in result.stderr
    assert f"removed {partial[0].name}, left half-written by a run that was killed" in (
        result.stderr
    )
    assert not list(backups.glob("*.partial"))
    assert not run_folder.exists()
    assert not gnupg_home.exists()
    leftovers = [
        proc for proc in Path("/proc").iterdir() if str(gnupg_home).encode() in _cmdline(proc)
    ]
    assert leftovers == []
    assert list(short_tmp.iterdir()) == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
