"""Redis backups and restores in hostile conditions: killed runs, full disks, servers with
renamed commands, and the plaintext of encrypted backups.

Real redis-server processes (the fixtures'), real gpg; the scripts are killed with real signals.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
from pathlib import Path

import pytest

from devtools.sandbox import RedisServer, SandboxError, redis_on, start_redis
from tests.support import (
    BACKUP,
    KEY,
    RDB_MAGIC,
    RESTORE,
    MakeEnv,
    RdbWatch,
    RunScript,
    load_random_values,
    only_backup,
    processes_in,
    rdb_files,
    redis_files,
    redis_state,
    restarted_when_stopped,
    run_ok,
    start_script,
    wait_for,
)

# --------------------------------------------------------------- no plaintext of a backup


@pytest.mark.parametrize("source", ["replication", "data-dir"])
def test_an_encrypted_redis_backup_never_puts_the_snapshot_in_clear_on_disk_even_when_killed(
    source: str, backup_env: MakeEnv, rendered_scripts: Path, short_tmp: Path, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    way = "after BGSAVE" if source == "data-dir" else "through redis-cli --rdb"

    def writing_the_snapshot() -> bool:
        log = backups / "backup.log"
        return (
            log.exists()
            and way in log.read_text()
            and any(p.stat().st_size > 0 for p in backups.glob("*.gpg.partial"))
        )

    with start_redis(tmp_path / "redis") as live:
        load_random_values(live, 24)
        env = backup_env(tmp_path, encryption_key=KEY, redis=live, TMPDIR=str(short_tmp))
        if source == "data-dir":
            # the snapshot streams from the RDB file a BGSAVE writes there, never copied
            live.cli("SAVE")
            env["REDIS_DATA_DIR"] = str(live.dir)
        with RdbWatch(backups, short_tmp) as watch:
            run = start_script(
                rendered_scripts, BACKUP, "redis", env=env, quiet=True, new_session=True
            )
            try:
                # killed once it is writing the encrypted backup, as a crash or `docker kill` would
                wait_for(writing_the_snapshot, "the encrypted snapshot to be written", timeout=60)
                os.killpg(run.pid, signal.SIGKILL)
            finally:
                run.wait(timeout=60)

    assert watch.seen == {}, "a snapshot in clear was on disk during the backup"
    assert rdb_files(backups) == [], "a snapshot in clear was left in BACKUP_DIR"
    assert rdb_files(short_tmp) == [], "a snapshot in clear was left in TMPDIR"


def test_an_encrypted_redis_restore_keeps_the_decrypted_rdb_in_its_private_folder_only(
    backup_env: MakeEnv, run_script: RunScript, short_tmp: Path, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with start_redis(tmp_path / "redis") as live:
        load_random_values(live, 4)
        env = backup_env(tmp_path, encryption_key=KEY, redis=live, TMPDIR=str(short_tmp))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=True)

        with RdbWatch(backups, short_tmp) as watch:
            run_ok(run_script, RESTORE, "redis", backup.name, env=env)  # with a safety backup

    in_backup_dir = [p for p in watch.seen if p.is_relative_to(backups)]
    assert in_backup_dir == [], "the restore put a snapshot in clear in BACKUP_DIR"
    assert watch.seen, "the restore never decrypted the RDB (nothing to check)"
    assert set(watch.seen.values()) == {0o700}, watch.seen
    assert list(short_tmp.iterdir()) == []


def test_a_redis_restore_refuses_to_decrypt_into_a_temporary_folder_on_a_shared_volume(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with start_redis(tmp_path / "redis") as live:
        live.cli("SET", "k", "v")
        env = backup_env(tmp_path, encryption_key=KEY, redis=live)
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=True)
        inside = backups / "tmp"
        inside.mkdir()

        result = run_script(RESTORE, "verify", backup.name, env={**env, "TMPDIR": str(inside)})

    assert result.returncode == 6, result.stdout + result.stderr
    assert f"is inside {backups}, a shared volume" in result.stderr
    assert "set TMPDIR" in result.stderr
    assert rdb_files(backups) == []


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_a_redis_backup_holds_the_rdb_alone_however_the_server_sends_it(
    diskless: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    with start_redis(tmp_path / "redis") as live:
        live.pipe([["SET", f"k:{i}", str(i)] for i in range(500)])
        # a diskless transfer ends with a 40-byte EOF mark after the RDB, a disk-based one does not
        live.cli("CONFIG", "SET", "repl-diskless-sync", diskless)
        env = backup_env(tmp_path, redis=live)
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=False)

    rdb = gzip.decompress(backup.read_bytes())
    assert rdb.startswith(RDB_MAGIC)
    assert rdb[-9] == 0xFF, "the RDB's EOF opcode and checksum are not its last bytes"
    manifest = json.loads(Path(f"{backup}.manifest.json").read_text())
    assert manifest["size_raw_bytes"] == len(rdb)


# ------------------------------------------------------------- a killed online restore

JOURNAL = ".redis-restore.journal"
INTERRUPTED = "a Redis restore was interrupted: run restore_script.sh redis --recover"
LIVE_PASSWORD = "live 'pw' $x `y`"


def health(run_script: RunScript, env: dict[str, str]) -> str:
    """What healthcheck.sh says (here it is unhealthy anyway: no scheduler runs on this host)."""
    return run_script("healthcheck.sh", env=env).stdout


@pytest.mark.parametrize(
    ("repair", "masterauth", "masteruser"),
    [
        pytest.param([RESTORE, "redis", "--recover"], "", "", id="recover-empty-masterauth"),
        pytest.param([BACKUP, "redis"], "its own 'auth' $v", "replicator", id="backup-own-auth"),
    ],
)
def test_a_killed_online_redis_restore_is_repaired_by_the_next_run(
    repair: list[str],
    masterauth: str,
    masteruser: str,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD, extra=["save 900 1"]) as live:
        load_random_values(live, 16)  # big enough that the sync takes a moment
        env = backup_env(tmp_path, redis=live, TMPDIR=str(short_tmp), LOCK_TIMEOUT="5")
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=False)
        live.cli("FLUSHALL")
        live.cli("SET", "after:backup", "1")
        live.cli("CONFIG", "SET", "masterauth", masterauth)
        live.cli("CONFIG", "SET", "masteruser", masteruser)
        settings = {name: config_get(live, name) for name in ("masterauth", "masteruser", "save")}

        restore = start_script(
            rendered_scripts,
            RESTORE,
            "redis",
            backup.name,
            "--no-safety-backup",
            env=env,
            quiet=True,
        )
        try:
            wait_for(lambda: role(live) == "slave", "the live server to replicate", timeout=60)
            os.kill(restore.pid, signal.SIGSTOP)
            assert INTERRUPTED not in health(run_script, env), "a running restore is no fault"
            os.kill(restore.pid, signal.SIGKILL)  # the script only, as `kill -9 PID` does
        finally:
            restore.kill()
            restore.wait(timeout=30)

        # what the killed restore left: a replica of its temporary server, which still runs
        assert role(live) == "slave"
        wait_for(
            lambda: "master_link_status:up" in live.cli("INFO", "replication"),
            "the orphan sync to finish (no more LOADING replies)",
            timeout=60,
        )
        with pytest.raises(SandboxError, match="READONLY"):
            live.cli("SET", "k", "v")
        assert processes_in(short_tmp), "the temporary redis-server is gone already"
        journal = backups / JOURNAL
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        text = journal.read_text()
        assert LIVE_PASSWORD not in text
        assert not masterauth or masterauth not in text
        reported = health(run_script, env)
        assert INTERRUPTED in reported
        assert role(live) == "slave", "the health check must only report"

        result = run_ok(run_script, *repair, env=env)

        assert "was interrupted" in result.stderr
        assert f"repaired {live.host}:{live.port}" in result.stderr
        assert role(live) == "master"
        assert live.cli("SET", "k", "v") == "OK"
        assert {name: config_get(live, name) for name in settings} == settings
        assert processes_in(short_tmp) == [], "the temporary redis-server was left running"
        assert not journal.exists()
        assert INTERRUPTED not in health(run_script, env)


def config_get(server: RedisServer, name: str) -> str:
    _, value = server.cli("CONFIG", "GET", name).split("\n", 1)
    return value


def role(server: RedisServer) -> str:
    return server.cli("ROLE").split("\n", 1)[0]


def test_a_terminated_online_redis_restore_gives_the_live_server_its_settings_back_itself(
    backup_env: MakeEnv,
    rendered_scripts: Path,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD) as live:
        load_random_values(live, 16)
        env = backup_env(tmp_path, redis=live, TMPDIR=str(short_tmp))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=False)
        settings = {name: config_get(live, name) for name in ("masterauth", "masteruser")}

        restore = start_script(
            rendered_scripts, RESTORE, "redis", backup.name, "--no-safety-backup", env=env
        )
        try:
            wait_for(lambda: role(live) == "slave", "the live server to replicate", timeout=60)
            restore.terminate()
            _, err = restore.communicate(timeout=120)
        finally:
            restore.kill()
            restore.wait(timeout=30)

        assert restore.returncode == 143, err
        assert "interrupted by SIGTERM" in err
        assert role(live) == "master"
        assert {name: config_get(live, name) for name in settings} == settings
        assert processes_in(short_tmp) == []
        assert not (backups / JOURNAL).exists()


# ------------------------------------------------------------------------ file mode


def test_a_file_restore_that_runs_out_of_space_leaves_redis_and_its_files_as_they_were(
    tiny_volume: Path, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    with start_redis(tmp_path / "source") as source:
        load_random_values(source, 2)  # 2 MB of RDB for a 1 MiB volume
        env = backup_env(tmp_path, redis=source)
        run_ok(run_script, BACKUP, "redis", env=env)
    backup = only_backup(tmp_path / "backups", "redis", encrypted=False)
    with redis_on(tiny_volume / "redis", extra=["save 900 1 300 10"]) as live:
        live.pipe([["SET", f"k:{i}", str(i)] for i in range(100)])
        live.cli("SAVE")
        before = (live.digest(), redis_files(live), config_get(live, "save"))
        env = {**env, **live.env(), "REDIS_DATA_DIR": str(live.dir)}

        result = run_script(RESTORE, "redis", backup.name, "--mode", "file", env=env)

        assert result.returncode == 1, result.stdout + result.stderr
        assert (live.digest(), redis_files(live), config_get(live, "save")) == before
        assert role(live) == "master"
        assert not (tmp_path / "backups" / JOURNAL).exists()
        assert f"cannot write {live.dir}/dump.rdb" in result.stderr
        assert "No space left on device" in result.stderr


def test_a_file_restore_that_cannot_stop_redis_fails_and_puts_the_files_back(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    renamed = ["dbfilename other.rdb", 'rename-command CONFIG ""', 'rename-command SHUTDOWN ""']
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD, extra=renamed) as live:
        live.pipe([["SET", f"k:{i}", str(i)] for i in range(300)])
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=False)
        live.cli("FLUSHALL")
        live.cli("SET", "after:backup", "1")
        live.cli("SAVE")
        before = (live.digest(), redis_files(live))
        assert "other.rdb" in before[1]

        result = run_script(
            RESTORE,
            "redis",
            backup.name,
            "--mode",
            "file",
            env={**env, "REDIS_DBFILENAME": "other.rdb"},
        )

        assert result.returncode == 1, result.stdout + result.stderr
        # no BGSAVE rewrote the server's file before the restore
        assert "a safety backup leaves the server's files as they are" in result.stdout
        assert f"wrote {live.dir}/other.rdb" in result.stdout  # the file this server loads
        assert "did not stop" in result.stderr
        assert "still runs with its old data: nothing was restored" in result.stderr
        assert "stop it first" in result.stderr
        assert "redis: restored" not in result.stdout
        assert (live.digest(), redis_files(live)) == before


@pytest.mark.parametrize(
    ("dbfilename", "restored"),
    [
        pytest.param("other.rdb", True, id="its-dbfilename"),
        pytest.param(None, False, id="dump.rdb-by-default"),
    ],
)
def test_a_file_restore_without_config_checks_that_the_restarted_redis_holds_the_backup(
    dbfilename: str | None,
    restored: bool,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    no_config = ["dbfilename other.rdb", 'rename-command CONFIG ""']
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD, extra=no_config) as live:
        live.pipe([["SET", f"k:{i}", str(i)] for i in range(300)])
        live.pipe([["SET", f"ttl:{i}", str(i), "EX", "3600"] for i in range(50)], db=3)
        written = redis_state(live)
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))
        if dbfilename:
            env["REDIS_DBFILENAME"] = dbfilename
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=False)
        live.cli("FLUSHALL")
        live.cli("SET", "after:backup", "1")
        live.cli("SAVE")
        saved = redis_files(live)

        with restarted_when_stopped(live) as back:
            result = run_script(RESTORE, "redis", backup.name, "--mode", "file", env=env)
            assert back.wait(timeout=30), "Redis was not stopped, or did not start again"

        if restored:
            assert result.returncode == 0, result.stdout + result.stderr
            after = redis_state(live)
            assert (after.digest, after.keys) == (written.digest, written.keys)
            assert f"redis: restored {backup.name} into" in result.stdout
            assert "holds the backup's 350 keys (50 with a TTL)" in result.stdout
        else:
            # the server loaded its own other.rdb, not the dump.rdb the restore wrote
            assert result.returncode == 1, result.stdout + result.stderr
            assert "started again but holds 1 keys" in result.stderr
            assert "set REDIS_DBFILENAME and REDIS_APPENDDIRNAME" in result.stderr
            assert "redis: restored" not in result.stdout
            assert live.cli("GET", "after:backup") == "1"
            assert redis_files(live) == saved, "the restore's files were not put back"


@pytest.mark.parametrize("restarted", [False, True], ids=["same-server", "restarted-since"])
def test_a_killed_file_restore_is_repaired_by_the_next_backup(
    restarted: bool,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD, extra=["save 900 1"]) as live:
        live.pipe([["SET", f"k:{i}", str(i)] for i in range(100)])
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=False)
        # a FIFO where the restore writes the RDB: its copy blocks there, after `save ""`
        os.mkfifo(live.dir / ".dump.rdb.restore.partial")
        restore = start_script(
            rendered_scripts,
            RESTORE,
            "redis",
            backup.name,
            "--mode",
            "file",
            "--no-safety-backup",
            env=env,
            quiet=True,
            new_session=True,
        )
        try:
            wait_for(lambda: config_get(live, "save") == "", "the restore to set save", timeout=60)
        finally:
            os.killpg(restore.pid, signal.SIGKILL)
            restore.wait(timeout=30)
        (live.dir / ".dump.rdb.restore.partial").unlink()
        assert (backups / JOURNAL).exists()
        if restarted:
            with restarted_when_stopped(live) as back:
                live.stop()
                assert back.wait(timeout=30)
        assert config_get(live, "save") == ("900 1" if restarted else "")

        result = run_ok(run_script, BACKUP, "redis", env=env)

        assert config_get(live, "save") == "900 1"
        assert not (backups / JOURNAL).exists()
        assert "was interrupted" in result.stderr
        if restarted:
            assert "nothing to put back: " in result.stderr
        else:
            assert "save '900 1' again" in result.stderr
        assert "(warning: the Redis restore of" in result.stdout, "not in the summary"
