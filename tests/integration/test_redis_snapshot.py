"""How a Redis backup takes its snapshot: from the RDB file a BGSAVE writes in REDIS_DATA_DIR
(the server's data volume) where it can, else through ``redis-cli --rdb`` (a replication
transfer), saying which and why; the live server's settings untouched either way.

Real redis-server processes with their own data folders, real gpg; a save or AOF rewrite "in
progress" is a real child process of the server, stopped with SIGSTOP for as long as needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devtools.sandbox import RedisServer, redis_on, start_redis
from tests.support import (
    BACKUP,
    ENCRYPTION,
    MakeEnv,
    RunScript,
    backup_digest,
    load_redis_dataset,
    needs_root_and_setpriv,
    nobody_run,
    only_backup,
    paused_fork,
    persistence,
    read_only_view,
    redis_settings,
    run_ok,
    start_script,
    wait_aof_rewrite,
    wait_for,
)

BGSAVE_PATH = "redis: snapshot of {server.host}:{server.port} from {folder}/{name} after BGSAVE"
REPLICATION_PATH = (
    "redis: snapshot of {server.host}:{server.port} through redis-cli --rdb (replication): "
)


def saved_dataset(server: RedisServer) -> None:
    """The gym-like dataset of the tests, and the server's RDB file in its folder, as a server with
    save points has (a server writes none before its first save)."""
    load_redis_dataset(server)
    server.cli("SAVE")


# ------------------------------------------------------------------------------ BGSAVE


@pytest.mark.parametrize("key", ENCRYPTION)
def test_a_redis_backup_streams_the_rdb_file_a_bgsave_wrote_in_redis_data_dir(
    key: str | None,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    with start_redis(tmp_path / "redis") as live:
        saved_dataset(live)
        settings = redis_settings(live)
        saves = int(persistence(live)["rdb_saves"])
        env = backup_env(tmp_path, encryption_key=key, redis=live, REDIS_DATA_DIR=str(live.dir))

        dry = run_ok(run_script, BACKUP, "redis", "--dry-run", env=env)
        assert f"from {live.dir}/dump.rdb after BGSAVE into" in dry.stdout
        assert int(persistence(live)["rdb_saves"]) == saves, "a dry run asked for a save"
        # only a save made for the backup holds it
        live.cli("SET", "written after the last save", "yes")
        result = run_ok(run_script, BACKUP, "redis", env=env)

        assert BGSAVE_PATH.format(server=live, folder=live.dir, name="dump.rdb") in result.stdout
        assert "redis-cli --rdb" not in result.stdout
        assert int(persistence(live)["rdb_saves"]) == saves + 1
        assert redis_settings(live) == settings
        stored = only_backup(tmp_path / "backups", "redis", encrypted=key is not None)
        assert backup_digest(stored, tmp_path / "check", key, gpg_home) == live.digest()
        manifest = json.loads(Path(f"{stored}.manifest.json").read_text())
        assert manifest["source"]["snapshot"] == "bgsave"


@pytest.mark.parametrize("config", ["allowed", "renamed"])
def test_the_rdb_file_is_the_servers_dbfilename_or_else_redis_dbfilename(
    config: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    # with CONFIG the server names its file; without it REDIS_DBFILENAME does
    extra = ["dbfilename gym.rdb"]
    if config == "renamed":
        extra.append('rename-command CONFIG ""')
    with redis_on(tmp_path / "redis", extra=extra) as live:
        saved_dataset(live)
        (live.dir / "dump.rdb").write_bytes(b"not the server's file")
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))
        if config == "renamed":
            env["REDIS_DBFILENAME"] = "gym.rdb"

        result = run_ok(run_script, BACKUP, "redis", env=env)

        assert BGSAVE_PATH.format(server=live, folder=live.dir, name="gym.rdb") in result.stdout
        stored = only_backup(tmp_path / "backups", "redis", encrypted=False)
        assert backup_digest(stored, tmp_path / "check") == live.digest()


@pytest.mark.parametrize(
    ("job", "waiting"),
    [
        ("BGSAVE", "a save is in progress on {server.host}:{server.port}: the BGSAVE waits"),
        ("BGREWRITEAOF", "the BGSAVE is scheduled on {server.host}:{server.port}, after the AOF"),
    ],
)
def test_a_redis_backup_waits_for_a_save_or_aof_rewrite_in_progress_then_saves_its_own(
    job: str,
    waiting: str,
    backup_env: MakeEnv,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    with start_redis(tmp_path / "redis", appendonly=job == "BGREWRITEAOF") as live:
        wait_aof_rewrite(live)
        saved_dataset(live)
        saves = int(persistence(live)["rdb_saves"])
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))
        log = tmp_path / "backups" / "backup.log"
        with paused_fork(live, job):
            # not in what that save or rewrite writes: the backup must hold it all the same
            live.cli("SET", "written while the job runs", "yes")
            run = start_script(rendered_scripts, BACKUP, "redis", env=env)
            wait_for(
                lambda: (
                    run.poll() is not None
                    or (log.exists() and waiting.format(server=live) in log.read_text())
                ),
                f"the backup to wait for the {job} in progress",
                timeout=60,
            )
        out, err = run.communicate(timeout=120)

        assert run.returncode == 0, out + err
        assert waiting.format(server=live) in out
        assert BGSAVE_PATH.format(server=live, folder=live.dir, name="dump.rdb") in out
        # its own save, after the BGSAVE of the test (an AOF rewrite is not a save)
        assert int(persistence(live)["rdb_saves"]) == saves + (2 if job == "BGSAVE" else 1)
        stored = only_backup(tmp_path / "backups", "redis", encrypted=False)
        assert backup_digest(stored, tmp_path / "check") == live.digest()


def test_a_redis_backup_reads_the_rdb_file_through_a_read_only_mount(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    with start_redis(tmp_path / "redis") as live:
        saved_dataset(live)
        live.cli("SET", "written after the last save", "yes")
        with read_only_view(live.dir, tmp_path / "redis-data") as view:
            env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(view))

            result = run_ok(run_script, BACKUP, "redis", env=env)

        assert BGSAVE_PATH.format(server=live, folder=view, name="dump.rdb") in result.stdout
        stored = only_backup(tmp_path / "backups", "redis", encrypted=False)
        assert backup_digest(stored, tmp_path / "check") == live.digest()


# ------------------------------------------------------------------------------ fallback


@pytest.mark.parametrize("case", ["not-mounted", "no-rdb-file", "another-server", "no-bgsave"])
def test_a_redis_backup_goes_through_redis_cli_rdb_where_the_data_dir_cannot_serve_and_says_why(
    case: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    extra = ['rename-command BGSAVE ""'] if case == "no-bgsave" else []
    with (
        redis_on(tmp_path / "redis", extra=extra) as live,
        start_redis(tmp_path / "other") as other,
    ):
        saved_dataset(live)
        other.cli("SET", "another server", "yes")
        other.cli("SAVE")
        settings = redis_settings(live)
        data_dir, reason = {
            "not-mounted": (
                tmp_path / "not-mounted",
                f"REDIS_DATA_DIR {tmp_path}/not-mounted is not a readable folder",
            ),
            "no-rdb-file": (tmp_path, f"REDIS_DATA_DIR {tmp_path} holds no dump.rdb"),
            "another-server": (
                other.dir,
                f"{other.dir}/dump.rdb is older than the BGSAVE: the server writes its RDB file "
                "elsewhere",
            ),
            "no-bgsave": (live.dir, "BGSAVE was refused: ERR unknown command 'BGSAVE'"),
        }[case]
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(data_dir))

        result = run_ok(run_script, BACKUP, "redis", env=env)

        assert REPLICATION_PATH.format(server=live) + reason in result.stdout
        assert "after BGSAVE" not in result.stdout
        assert redis_settings(live) == settings
        stored = only_backup(tmp_path / "backups", "redis", encrypted=False)
        assert backup_digest(stored, tmp_path / "check") == live.digest()


def test_a_redis_data_dir_without_room_for_a_new_rdb_file_means_redis_cli_rdb(
    tiny_volume: Path, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    # a BGSAVE that fails for want of space would stop a server with save points taking writes
    with redis_on(tiny_volume / "redis", extra=["save 900 1"]) as live:
        live.pipe([["SET", f"blob:{i}", os.urandom(512).hex()] for i in range(600)])
        live.cli("SAVE")  # about 600 kB of the volume's 1 MiB
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))

        result = run_ok(run_script, BACKUP, "redis", env=env)

        reason = f"REDIS_DATA_DIR {live.dir} has "
        assert REPLICATION_PATH.format(server=live) + reason in result.stdout
        assert "too little for a new dump.rdb beside the old one" in result.stdout
        assert persistence(live)["rdb_last_bgsave_status"] == "ok"
        stored = only_backup(tmp_path / "backups", "redis", encrypted=False)
        assert backup_digest(stored, tmp_path / "check") == live.digest()


@needs_root_and_setpriv
def test_a_redis_data_dir_the_backup_may_not_read_means_redis_cli_rdb(
    rendered_scripts: Path, backup_env: MakeEnv, tmp_path: Path
) -> None:
    with nobody_run(rendered_scripts) as (base, run_as_nobody), start_redis(base / "redis") as live:
        # the server's folder is its own (mode 0700, root's)
        saved_dataset(live)
        assert live.dir.stat().st_mode & 0o777 == 0o700
        env = backup_env(tmp_path, redis=live, REDIS_DATA_DIR=str(live.dir))

        result = run_as_nobody("redis", env=env)

        assert result.returncode == 0, result.stdout + result.stderr
        reason = f"REDIS_DATA_DIR {live.dir} is not a readable folder"
        assert REPLICATION_PATH.format(server=live) + reason in result.stdout
        stored = only_backup(base / "backups", "redis", encrypted=False)
        assert backup_digest(stored, tmp_path / "check") == live.digest()
        manifest = json.loads(Path(f"{stored}.manifest.json").read_text())
        assert manifest["source"]["snapshot"] == "replication"
