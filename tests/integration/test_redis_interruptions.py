"""Redis backups and restores in hostile conditions: killed runs, full disks, servers with
renamed commands, and the plaintext of encrypted backups.

Real redis-server processes (the fixtures'), real gpg; the scripts are killed with real signals.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from generator.sandbox import RedisServer, SandboxError
from tests.integration.restore_support import (
    BACKUP,
    KEY,
    RDB_MAGIC,
    RESTORE,
    RdbWatch,
    load_random_values,
    only_backup,
    private_redis,
    processes_in,
    rdb_files,
    redis_on,
    run_ok,
    wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import MakeEnv, RunScript


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of the scripts' own, outside the test's folder: what they leave there shows."""
    folder = Path(tempfile.mkdtemp(prefix="ri-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------- no plaintext of a backup


def test_an_encrypted_redis_backup_never_puts_the_snapshot_in_clear_on_disk_even_when_killed(
    backup_env: MakeEnv, rendered_scripts: Path, private_tmp: Path, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with private_redis(tmp_path / "redis") as live:
        load_random_values(live, 24)
        env = backup_env(tmp_path, encryption_key=KEY, redis=live, TMPDIR=str(private_tmp))
        with RdbWatch(backups, private_tmp) as watch:
            run = subprocess.Popen(
                ["bash", str(rendered_scripts / BACKUP), "redis"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                # killed once it is writing the encrypted backup, as a crash or `docker kill` would
                wait_for(
                    lambda: any(p.stat().st_size > 0 for p in backups.glob("*.gpg.partial")),
                    "the encrypted backup to be written",
                    timeout=60,
                )
                os.killpg(run.pid, signal.SIGKILL)
            finally:
                run.wait(timeout=60)

    assert watch.seen == {}, "a snapshot in clear was on disk during the backup"
    assert rdb_files(backups) == [], "a snapshot in clear was left in BACKUP_DIR"
    assert rdb_files(private_tmp) == [], "a snapshot in clear was left in TMPDIR"


def test_an_encrypted_redis_restore_keeps_the_decrypted_rdb_in_its_private_folder_only(
    backup_env: MakeEnv, run_script: RunScript, private_tmp: Path, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with private_redis(tmp_path / "redis") as live:
        load_random_values(live, 4)
        env = backup_env(tmp_path, encryption_key=KEY, redis=live, TMPDIR=str(private_tmp))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=True)

        with RdbWatch(backups, private_tmp) as watch:
            run_ok(run_script, RESTORE, "redis", backup.name, env=env)  # with a safety backup

    in_backup_dir = [p for p in watch.seen if p.is_relative_to(backups)]
    assert in_backup_dir == [], "the restore put a snapshot in clear in BACKUP_DIR"
    assert watch.seen, "the restore never decrypted the RDB (nothing to check)"
    assert set(watch.seen.values()) == {0o700}, watch.seen
    assert list(private_tmp.iterdir()) == []


def test_a_redis_restore_refuses_to_decrypt_into_a_temporary_folder_on_a_shared_volume(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    with private_redis(tmp_path / "redis") as live:
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
    with private_redis(tmp_path / "redis") as live:
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
    private_tmp: Path,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD, extra=["save 900 1"]) as live:
        load_random_values(live, 32)  # big enough that the sync takes a moment
        env = backup_env(tmp_path, redis=live, TMPDIR=str(private_tmp), LOCK_TIMEOUT="5")
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=False)
        live.cli("FLUSHALL")
        live.cli("SET", "after:backup", "1")
        live.cli("CONFIG", "SET", "masterauth", masterauth)
        live.cli("CONFIG", "SET", "masteruser", masteruser)
        settings = {name: config_get(live, name) for name in ("masterauth", "masteruser", "save")}

        restore = subprocess.Popen(
            ["bash", str(rendered_scripts / RESTORE), "redis", backup.name, "--no-safety-backup"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
        with pytest.raises(SandboxError, match="READONLY"):
            live.cli("SET", "k", "v")
        assert processes_in(private_tmp), "the temporary redis-server is gone already"
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
        assert processes_in(private_tmp) == [], "the temporary redis-server was left running"
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
    private_tmp: Path,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    with redis_on(tmp_path / "live", password=LIVE_PASSWORD) as live:
        load_random_values(live, 32)
        env = backup_env(tmp_path, redis=live, TMPDIR=str(private_tmp))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(backups, "redis", encrypted=False)
        settings = {name: config_get(live, name) for name in ("masterauth", "masteruser")}

        restore = subprocess.Popen(
            ["bash", str(rendered_scripts / RESTORE), "redis", backup.name, "--no-safety-backup"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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
        assert processes_in(private_tmp) == []
        assert not (backups / JOURNAL).exists()
