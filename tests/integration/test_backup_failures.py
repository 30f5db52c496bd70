"""backup_script.sh when things go wrong: the exit code and message say what, and nothing is lost.

Every failure must leave BACKUP_DIR as it was: no file under a final backup name, no ``.partial``
left behind, and the backups made before byte-for-byte unchanged.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, free_port, redis_on
from tests.support import (
    BACKUP,
    BACKUP_NAME,
    ENCRYPTION,
    KEY,
    MakeEnv,
    NewDb,
    RunScript,
    descendants,
    folder_state,
    holding_the_lock,
    kill_stage_when_writing,
    run_ok,
    start_script,
    table_lock,
    wait_for,
    wait_for_blocked_session,
    write_sidecar,
)

EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_REFUSED = 1, 2, 3, 6
Result = subprocess.CompletedProcess[str]


# ------------------------------------------------------------------------------------ helpers


def backup_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if BACKUP_NAME.fullmatch(p.name)}


def kinds(folder: Path) -> list[str]:
    return sorted(m["type"] for p in folder.iterdir() if (m := BACKUP_NAME.fullmatch(p.name)))


def assert_untouched(folder: Path, before: dict[str, bytes]) -> None:
    """Nothing new (no final name, no .partial, no sidecar) and every earlier file unchanged."""
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
    after = folder_state(folder)
    assert sorted(after) == sorted(before)
    assert after == before, "an earlier backup was modified"


# ----------------------------------------------------------------------------- server failures


def test_wrong_postgres_password_fails_and_points_at_postgres_password(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "postgresql", env=env)
    before = folder_state(backups)

    result = run_script(BACKUP, "postgresql", env={**env, "POSTGRES_PASSWORD": "not it"})

    assert result.returncode == EXIT_FAILED
    assert "password authentication failed" in result.stderr
    assert "check POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE)" in result.stderr
    assert_untouched(backups, before)


def test_wrong_postgres_password_is_not_followed_by_a_misleading_version_error(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, POSTGRES_PASSWORD="not it")

    result = run_script(BACKUP, "postgresql", env=env)
    assert "unexpected failure" not in result.stderr, "a reported failure is reported once"

    assert result.returncode == EXIT_FAILED
    assert "check POSTGRES_PASSWORD" in result.stderr
    assert "cannot read the server version" not in result.stderr


@pytest.mark.parametrize(
    ("problem", "hint"),
    [
        pytest.param("down", "check REDIS_HOST and REDIS_PORT", id="server-down"),
        # a port that takes the connection and never answers (a stopped or hung server)
        pytest.param("silent", "no answer from 127.0.0.1:", id="server-silent"),
        pytest.param("no-password", "set REDIS_PASSWORD", id="password-missing"),
        pytest.param("wrong-password", "check REDIS_PASSWORD", id="password-wrong"),
    ],
)
def test_unreachable_redis_fails_with_a_hint_naming_the_setting(
    problem: str, hint: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)  # redis_auth, which has a password
    assert env["REDIS_PASSWORD"]
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "redis", env=env)
    before = folder_state(backups)
    broken = dict(env)
    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts nor answers
    if problem == "down":
        broken["REDIS_PORT"] = str(free_port())
    elif problem == "silent":
        broken["REDIS_PORT"] = str(silent.getsockname()[1])
    elif problem == "no-password":
        del broken["REDIS_PASSWORD"]
    else:
        broken["REDIS_PASSWORD"] = "not it"

    with silent:
        result = run_script(BACKUP, "redis", env=broken)

    assert result.returncode == EXIT_FAILED
    assert f"redis: cannot reach 127.0.0.1:{broken['REDIS_PORT']}" in result.stderr
    assert hint in result.stderr
    assert_untouched(backups, before)


def test_full_backup_with_redis_down_still_writes_postgresql_and_files_but_fails(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, REDIS_PORT=str(free_port()))
    backups = tmp_path / "backups"

    result = run_script(BACKUP, "full", env=env)

    assert result.returncode == EXIT_FAILED
    assert "backup full FAILED: postgresql ok redis FAILED (exit 1) files ok" in result.stderr
    assert kinds(backups) == ["files", "postgresql"]
    for name in backup_names(backups):
        assert (backups / f"{name}.sha256").is_file()
        assert (backups / f"{name}.manifest.json").is_file()
    assert not list(backups.glob("*.partial"))
    assert not list(backups.glob("redis_*"))


# ----------------------------------------------------------------------------- local failures


@pytest.mark.parametrize("key", ENCRYPTION)
def test_full_disk_fails_saying_the_folder_is_full_and_leaves_no_partial(
    key: str | None,
    tiny_volume: Path,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for i in range(3):  # 3 MiB of incompressible bytes for a 1 MiB volume
        (uploads / f"scan-{i}.bin").write_bytes(os.urandom(1024 * 1024))
    env = backup_env(tmp_path, encryption_key=key, files_dir=uploads, BACKUP_DIR=str(tiny_volume))

    result = run_script(BACKUP, "files", env=env)

    assert result.returncode == EXIT_FAILED
    assert f"files failed: {tiny_volume} is full" in result.stderr
    assert "free space there or point BACKUP_DIR at a larger volume" in result.stderr
    assert_untouched(tiny_volume, {})


def test_second_run_gives_up_after_lock_timeout_and_names_the_holder(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    who = f"cleanup (pid {os.getpid()}, started 2024-05-01T03:00:00-03:00)"
    env = backup_env(tmp_path, LOCK_TIMEOUT="1")
    backups = tmp_path / "backups"
    started = time.monotonic()

    with holding_the_lock(backups, who):
        result = run_script(BACKUP, "full", env=env)

    assert result.returncode == EXIT_LOCKED
    assert f"another run holds the lock ({who}); gave up after 1s (LOCK_TIMEOUT)" in result.stderr
    assert time.monotonic() - started >= 1
    assert_untouched(backups, {})


def test_a_run_waiting_for_a_running_backup_names_it_and_exits_3(
    pg: PostgresServer,
    new_db: NewDb,
    rendered_scripts: Path,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = new_db()
    pg.psql("CREATE TABLE visits (id int); INSERT INTO visits VALUES (1);", db, superuser=False)
    env = backup_env(tmp_path, POSTGRES_DB=db)
    backups = tmp_path / "backups"
    lock = backups / ".gym-backup.lock"
    # a transaction holds the table: the first run's pg_dump waits for it, holding the run's lock
    with table_lock(pg, db, "visits", "ACCESS EXCLUSIVE") as release_table:
        first = start_script(rendered_scripts, BACKUP, "postgresql", env=env)
        try:
            wait_for(
                lambda: lock.exists() and f"(pid {first.pid}," in lock.read_text(),
                "the first run to take the lock",
            )
            wait_for_blocked_session(pg, db)
            during_first = set(folder_state(backups))  # the first run's .partial, nothing else

            second = run_script(BACKUP, "postgresql", env={**env, "LOCK_TIMEOUT": "1"})

            assert second.returncode == EXIT_LOCKED, second.stderr
            assert f"another run holds the lock (backup postgresql (pid {first.pid}, started " in (
                second.stderr
            )
            assert set(folder_state(backups)) == during_first
            assert not backup_names(backups)
            release_table()
            out, err = first.communicate(timeout=60)
            assert first.returncode == 0, out + err
            assert kinds(backups) == ["postgresql"]
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate(timeout=30)


def test_gpg_killed_mid_way_leaves_no_final_file_no_partial_and_no_plaintext(
    short_tmp: Path,
    rendered_scripts: Path,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    work = short_tmp
    env = backup_env(tmp_path, encryption_key=KEY, TMPDIR=str(work))
    run_ok(run_script, BACKUP, "files", env=env)  # a small good backup made first
    before = folder_state(backups)
    uploads = tmp_path / "big"
    uploads.mkdir()
    for i in range(4):  # ~100 MB of random bytes: encryption takes a while
        (uploads / f"video-{i}.bin").write_bytes(os.urandom(25 * 1024 * 1024))

    run = start_script(rendered_scripts, BACKUP, "files", env={**env, "FILES_DIR": str(uploads)})
    err = kill_stage_when_writing(
        run, "--symmetric", backups / "files_backup_*.tar.gz.gpg.partial", 1,
        "gpg to be encrypting into the .partial file",
    )  # fmt: skip

    assert run.returncode == EXIT_FAILED
    assert "files: encrypt failed (exit 137)" in err
    assert "nothing was written under a final name" in err
    assert_untouched(backups, before)
    assert list(work.iterdir()) == [], "the run left its work folder behind"


# ----------------------------------------------------------------------------- refused runs


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_unreadable_encryption_key_file_refuses_and_never_writes_plaintext(
    where: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    key_file = tmp_path / "no-such.key" if where == "missing" else tmp_path
    env = backup_env(tmp_path, ENCRYPTION_KEY_FILE=str(key_file))

    result = run_script(BACKUP, "full", env=env)

    assert result.returncode == EXIT_REFUSED
    assert f"ENCRYPTION_KEY_FILE: cannot read '{key_file}'" in result.stderr
    assert_untouched(tmp_path / "backups", {})


@pytest.mark.parametrize("content", ["", "\n"], ids=["empty", "only-a-newline"])
def test_an_empty_key_file_refuses_rather_than_writing_plaintext(
    content: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    key_file = tmp_path / "empty.key"
    key_file.write_text(content)
    env = backup_env(tmp_path, ENCRYPTION_KEY_FILE=str(key_file))

    result = run_script(BACKUP, "full", env=env)

    assert result.returncode == EXIT_REFUSED
    assert f"ENCRYPTION_KEY_FILE: '{key_file}' is empty" in result.stderr
    assert_untouched(tmp_path / "backups", {})


def test_a_terminated_run_says_so_and_leaves_nothing_half_written(
    backup_env: MakeEnv, rendered_scripts: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(64 << 20))
    env = backup_env(tmp_path, files_dir=big)
    backups = tmp_path / "backups"
    run = start_script(rendered_scripts, BACKUP, "files", env=env, new_session=True)
    wait_for(lambda: list(backups.glob("*.partial")), "the backup to start writing", timeout=30)
    # as a terminal's Ctrl-C or a stopping service manager does: the whole process group
    os.killpg(run.pid, signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)

    assert run.returncode == 143
    assert "interrupted by SIGTERM" in stderr
    assert "interrupted by SIGTERM" in (backups / "backup.log").read_text()
    assert not list(backups.glob("files_backup_*"))


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "ENCRYPTION_KEY"])
def test_a_secret_given_both_directly_and_as_a_file_is_refused(
    secret: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("from the file\n")
    env = backup_env(tmp_path)
    env[secret] = env.get(secret, "given directly")
    env[f"{secret}_FILE"] = str(secret_file)

    result = run_script(BACKUP, "full", env=env)

    assert result.returncode == EXIT_REFUSED
    assert f"both {secret} and {secret}_FILE are set; keep only one of them" in result.stderr
    assert_untouched(tmp_path / "backups", {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "a command is required", id="no-command"),
        pytest.param(["backup"], "unknown command 'backup'", id="unknown-command"),
        pytest.param(["--verbose"], "unknown option '--verbose'", id="unknown-option"),
        pytest.param(["full", "redis"], "unexpected argument 'redis'", id="two-commands"),
    ],
)
def test_usage_errors_exit_2_with_usage_on_stderr(
    args: list[str], message: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    result = run_script(BACKUP, *args, env=backup_env(tmp_path))

    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith(f"backup_script.sh: {message}\n")
    assert "Usage: backup_script.sh COMMAND [--dry-run]" in result.stderr
    assert result.stdout == ""
    assert_untouched(tmp_path / "backups", {})


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_on_stdout_and_exits_0(
    flag: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    result = run_script(BACKUP, flag, env=backup_env(tmp_path))

    assert result.returncode == 0
    assert result.stdout.startswith("Usage: backup_script.sh COMMAND [--dry-run]")
    assert "Exit codes: 0 ok, 1 failed, 2 usage, 3 lock busy" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMPRESSION_LEVEL", "12"),
        ("COMPRESSION_LEVEL", "fast"),
        ("KEEP_MIN", "0"),
        ("BACKUP_RETENTION_DAYS", "ninety"),
        ("LOCK_TIMEOUT", "-1"),
        ("POSTGRES_PORT", "0"),
        ("REDIS_PORT", "70000"),
        ("TZ", "Mars/Olympus_Mons"),
        ("TZ", "../../../etc/passwd"),
        ("TZ", "/etc/passwd"),
        ("TZ", "zone.tab"),
        ("BACKUP_DIR", "relative/backups"),
    ],
)
def test_invalid_runtime_setting_is_refused_naming_the_setting(
    name: str, value: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    env[name] = value

    result = run_script(BACKUP, "full", env=env)

    assert result.returncode == EXIT_REFUSED
    assert f"[ERROR] {name}: '{value}' " in result.stderr
    assert "invalid settings (1 problem(s))" in result.stderr
    assert_untouched(tmp_path / "backups", {})


def check_pg_versions(script: Path, env: dict[str, str], client: str, server_num: str) -> Result:
    """Source the rendered script and call its check_pg_versions CLIENT SERVER_VERSION_NUM."""
    return subprocess.run(
        ["bash", "-c", 'source "$1"; check_pg_versions "$2" "$3"', "bash", str(script), client,
         server_num],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("client", "server_num"),
    [
        ("pg_dump (PostgreSQL) 15.4", "160002"),
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", "170000"),
        ("pg_dump (PostgreSQL) 9.6.24", "100023"),
    ],
)
def test_pg_dump_older_than_the_server_is_refused_naming_the_client_to_install(
    client: str, server_num: str, rendered_scripts: Path, backup_env: MakeEnv, tmp_path: Path
) -> None:
    server_major = int(server_num) // 10000

    result = check_pg_versions(rendered_scripts / BACKUP, backup_env(tmp_path), client, server_num)

    assert result.returncode == EXIT_REFUSED
    assert f"install the PostgreSQL {server_major} client" in result.stderr
    assert f"set PG_MAJOR={server_major} and rebuild the image" in result.stderr


@pytest.mark.parametrize(
    ("client", "server_num"),
    [
        ("pg_dump (PostgreSQL) 16.2", "160002"),
        ("pg_dump (PostgreSQL) 16.0", "160009"),
        ("pg_dump (PostgreSQL) 17.0 (Debian 17.0-1.pgdg120+1)", "160002"),
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", "150020"),
    ],
)
def test_pg_dump_as_new_as_the_server_or_newer_is_accepted(
    client: str, server_num: str, rendered_scripts: Path, backup_env: MakeEnv, tmp_path: Path
) -> None:
    result = check_pg_versions(rendered_scripts / BACKUP, backup_env(tmp_path), client, server_num)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_dry_run_writes_nothing_and_is_not_a_successful_backup(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, ENCRYPTION_KEY="k")
    backups = tmp_path / "backups"

    result = run_script(BACKUP, "full", "--dry-run", env=env)

    assert result.returncode == 0, result.stderr
    assert "backup full dry run (nothing is written) finished" in result.stdout
    assert "dry run: would dump gym_secure_db" in result.stdout
    assert not (backups / ".last_success").exists(), "the health check would count it"
    assert not [p for p in backups.iterdir() if "_backup_" in p.name]


def test_too_little_space_for_the_previous_backups_size_refuses_before_starting(
    tiny_volume: Path, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    # a previous backup of 700 KiB in a 1 MiB folder: the next one would not fit
    previous = tiny_volume / "files_backup_20260101_020000.tar.gz"
    previous.write_bytes(os.urandom(700 << 10))
    write_sidecar(previous)
    before = folder_state(tiny_volume)
    env = backup_env(tmp_path, BACKUP_DIR=str(tiny_volume))

    result = run_script(BACKUP, "files", env=env)

    assert result.returncode == EXIT_REFUSED
    assert f"files: not enough free space in {tiny_volume}" in result.stderr
    assert "the previous files backup (files_backup_20260101_020000.tar.gz) needs about" in (
        result.stderr
    )
    assert not list(tiny_volume.glob("*.partial"))
    assert_untouched(tiny_volume, before)


def test_a_redis_that_refuses_sync_gives_a_clear_error(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    data = tmp_path / "redis-nosync"
    with redis_on(data, extra=['rename-command SYNC ""', 'rename-command PSYNC ""']) as redis:
        redis.cli("SET", "k", "v")
        env = backup_env(tmp_path, redis=redis)
        result = run_script(BACKUP, "redis", env=env)

    assert result.returncode == EXIT_FAILED
    assert "redis: the server refused or broke off the snapshot" in result.stderr
    assert "redis-cli --rdb needs the SYNC command" in result.stderr
    assert not [p for p in (tmp_path / "backups").iterdir() if "_backup_" in p.name]


def test_a_redis_that_dies_during_the_snapshot_is_named_as_the_cause(
    backup_env: MakeEnv, rendered_scripts: Path, tmp_path: Path
) -> None:
    data = tmp_path / "redis-dies"
    # the transfer waits for the sync delay: the server dies meanwhile
    with redis_on(data, extra=["repl-diskless-sync-delay 30"]) as redis:
        redis.cli("SET", "k", "v")
        env = backup_env(tmp_path, redis=redis)  # no REDIS_DATA_DIR: through redis-cli --rdb
        run = start_script(rendered_scripts, BACKUP, "redis", env=env)
        wait_for(
            lambda: any("--rdb" in argv for _, argv in descendants(run.pid)),
            "redis-cli --rdb to wait for the transfer",
        )
        assert redis.process is not None
        redis.process.kill()
        _, err = run.communicate(timeout=120)

    assert run.returncode == EXIT_FAILED
    assert f"redis: 127.0.0.1:{redis.port} stopped answering during the snapshot" in err
    assert "needs the SYNC command" not in err
    assert not [p for p in (tmp_path / "backups").iterdir() if "_backup_" in p.name]


def test_a_redis_that_stops_answering_while_it_saves_fails_the_backup_and_is_not_asked_again(
    backup_env: MakeEnv, rendered_scripts: Path, tmp_path: Path
) -> None:
    # each key takes 0.1 s to save: the BGSAVE lasts seconds, and the server is stopped meanwhile
    with redis_on(tmp_path / "redis-stops", extra=["rdb-key-save-delay 100000"]) as redis:
        for i in range(60):
            redis.cli("SET", f"k{i}", "v")
        redis.cli("CONFIG", "SET", "rdb-key-save-delay", "0")
        redis.cli("SAVE")  # REDIS_DATA_DIR holds its RDB file
        redis.cli("CONFIG", "SET", "rdb-key-save-delay", "100000")
        env = backup_env(tmp_path, redis=redis, REDIS_DATA_DIR=str(redis.dir))
        run = start_script(rendered_scripts, BACKUP, "redis", env=env)
        wait_for(
            lambda: "rdb_bgsave_in_progress:1" in redis.cli("INFO", "persistence"),
            "the BGSAVE to start",
        )
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            _, err = run.communicate(timeout=120)
        finally:
            redis.process.send_signal(signal.SIGCONT)

    assert run.returncode == EXIT_FAILED
    assert f"redis: 127.0.0.1:{redis.port} stopped answering during the snapshot" in err
    assert "no answer from" in err
    assert "through redis-cli --rdb" not in err
    assert not [p for p in (tmp_path / "backups").iterdir() if "_backup_" in p.name]
