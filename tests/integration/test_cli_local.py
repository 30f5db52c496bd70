"""The CLI end to end on this host: `gym-backup backup|list --local` and `make run`'s demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.demo import write_env_file
from devtools.sandbox import PostgresServer, RedisServer
from generator.config import KNOWN_KEYS
from tests.support import GYM_BACKUP, HttpReceiver


def clean_environ(tmp_path: Path) -> dict[str, str]:
    """This process's environment without any setting of the service."""
    env = {k: v for k, v in os.environ.items() if k not in KNOWN_KEYS}
    env["HOME"] = str(tmp_path)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GYM_BACKUP), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_backup_full_local_runs_with_the_env_file_settings(
    tmp_path: Path, pg: PostgresServer, redis_auth: RedisServer
) -> None:
    (tmp_path / "uploads" / "a b").mkdir(parents=True)
    (tmp_path / "uploads" / "a b" / "ñ.txt").write_text("hola")
    key_file = tmp_path / "key"
    key_file.write_text("a passphrase with $ and 'quotes'\n")
    env_file = write_env_file(
        tmp_path / ".env",
        {
            **pg.env(),
            **redis_auth.env(),
            "ENCRYPTION_KEY_FILE": str(key_file),
            "BACKUP_DIR": str(tmp_path / "backups"),
            "FILES_DIR": str(tmp_path / "uploads"),
            "TZ": "UTC",
            "GYM_APP_SECRET": "ignored: not a setting of the service",
        },
    )
    env = clean_environ(tmp_path)
    result = cli("backup", "full", "--local", "--env", str(env_file), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    made = sorted(p.name for p in (tmp_path / "backups").glob("*_backup_*.gz.gpg"))
    assert [name.split("_backup_")[0] for name in made] == ["files", "postgresql", "redis"]

    listing = cli("list", "--local", "--env", str(env_file), cwd=tmp_path, env=env)
    assert listing.returncode == 0, listing.stderr
    assert "3 backup(s) (postgresql 1, redis 1, files 1)" in listing.stdout

    shown = cli("status", "--local", "--env", str(env_file), cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "all good: nothing needs attention" in shown.stdout
    assert "\x1b[" not in shown.stdout  # no colour when not on a terminal
    for kind in ("postgresql", "redis", "files"):
        assert f"│ {kind}" in shown.stdout
    facts = json.loads(
        cli("status", "--json", "--local", "--env", str(env_file), cwd=tmp_path, env=env).stdout
    )
    assert facts["types"]["files"]["last_success"]["file"] == made[0]

    files_backup = made[0]
    verified = cli(
        "verify", files_backup, "--deep", "--local", "--env", str(env_file), cwd=tmp_path, env=env
    )
    assert verified.returncode == 0, verified.stderr
    assert "every check passed" in verified.stdout
    info = cli("info", files_backup, "--local", "--env", str(env_file), cwd=tmp_path, env=env)
    assert "type:         files" in info.stdout

    dest = tmp_path / "restored"
    dest.mkdir()
    restored = cli(
        "restore",
        "files",
        files_backup,
        str(dest),
        "--local",
        "--env",
        str(env_file),
        cwd=tmp_path,
        env=env,
    )
    assert restored.returncode == 0, restored.stderr
    assert (dest / "a b" / "ñ.txt").read_text() == "hola"


def test_a_failing_script_gives_its_exit_code_and_a_clear_message(
    tmp_path: Path, pg: PostgresServer
) -> None:
    env_file = write_env_file(
        tmp_path / ".env",
        {
            **pg.env(),
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": "1",
            "BACKUP_DIR": str(tmp_path / "backups"),
        },
    )
    result = cli(
        "backup",
        "redis",
        "--local",
        "--env",
        str(env_file),
        cwd=tmp_path,
        env=clean_environ(tmp_path),
    )
    assert result.returncode == 1
    assert "redis: cannot reach 127.0.0.1:1" in result.stderr
    assert "error: backup_script.sh redis: failed" in result.stderr
    assert pg.password not in result.stderr + result.stdout

    shown = cli(
        "status", "--local", "--env", str(env_file), cwd=tmp_path, env=clean_environ(tmp_path)
    )
    assert shown.returncode == 7, shown.stderr
    assert "NEEDS ATTENTION" in shown.stdout
    assert "the redis backup has failed since" in shown.stdout


def test_make_run_demo_backs_up_sample_gym_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        cwd=tmp_path,
        env=clean_environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    backups = tmp_path / "demo-output" / "backups"
    made = sorted(p.name.split("_backup_")[0] for p in backups.glob("*_backup_*.gz.gpg"))
    assert made == ["files", "postgresql", "redis"]
    assert "3 backup(s)" in result.stdout + result.stderr


def test_drill_and_alert_test_local_run_the_scripts_and_pass_their_exit_codes_on(
    tmp_path: Path, pg: PostgresServer, redis_auth: RedisServer, webhook: HttpReceiver
) -> None:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "socio.jpg").write_bytes(b"photo")
    settings = {
        **pg.env(),
        **redis_auth.env(),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "FILES_DIR": str(tmp_path / "uploads"),
        "TZ": "UTC",
    }
    env_file = write_env_file(tmp_path / ".env", settings)
    env = clean_environ(tmp_path)

    def run(*args: str, file: Path = env_file) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--local", "--env", str(file), cwd=tmp_path, env=env)

    assert run("backup", "files").returncode == 0
    drilled = run("drill")
    assert drilled.returncode == 0, drilled.stderr
    assert "drill files: files_backup_" in drilled.stdout
    assert ": ok, 1 files (" in drilled.stdout
    facts = json.loads(run("status", "--json").stdout)
    assert facts["types"]["files"]["last_drill"]["result"] == "ok"

    # A damaged backup fails the drill with verify's exit code (4).
    [backup] = (tmp_path / "backups").glob("files_backup_*.tar.gz")
    backup.write_bytes(b"not a backup")
    failed = run("drill")
    assert failed.returncode == 4, failed.stderr
    assert "error: backup_script.sh drill: verification failed" in failed.stderr

    refused = run("alert-test")
    assert refused.returncode == 6, refused.stderr
    assert "ALERT_URLS is not set" in refused.stderr
    with_urls = write_env_file(
        tmp_path / "alerts.env", {**settings, "ALERT_URLS": webhook.url("hook", "json")}
    )
    sent = run("alert-test", file=with_urls)
    assert sent.returncode == 0, sent.stderr
    assert [p["title"] for p in webhook.posted("/hook")] == ["gym-backup test notice"]


def test_off_site_copies_through_the_cli_with_a_remote_from_rclone_variables_in_the_env_file(
    tmp_path: Path, pg: PostgresServer, redis_auth: RedisServer
) -> None:
    offsite = tmp_path / "offsite"
    settings = {
        **pg.env(),
        **redis_auth.env(),
        "ENCRYPTION_KEY": "a passphrase",
        "BACKUP_DIR": str(tmp_path / "backups"),
        "FILES_DIR": str(tmp_path),
        "TZ": "UTC",
        "REPLICA_TARGETS": f"off=nas:{offsite}",
        # the remote is rclone's own variable: passed to the scripts, shown masked
        "RCLONE_CONFIG_NAS_TYPE": "local",
    }
    env_file = write_env_file(tmp_path / ".env", settings)
    env = clean_environ(tmp_path)
    checked = cli("config", "check", "--env", str(env_file), cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "RCLONE_CONFIG_NAS_TYPE   ********" in checked.stdout
    undefined = write_env_file(
        tmp_path / "undefined.env", {**settings, "REPLICA_TARGETS": "off=elsewhere:/x"}
    )
    refused = cli("config", "check", "--env", str(undefined), cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert "the rclone remote 'elsewhere' is not defined" in refused.stderr
    assert "RCLONE_CONFIG_ELSEWHERE_TYPE is not set" in refused.stderr

    made = cli("backup", "postgresql", "--local", "--env", str(env_file), cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    (name,) = [p.name for p in (tmp_path / "backups").glob("postgresql_backup_*.gpg")]
    assert (offsite / name).read_bytes() == (tmp_path / "backups" / name).read_bytes()
    (offsite / name).unlink()
    listed = cli(
        "list", "--replica", "off", "--local", "--env", str(env_file), cwd=tmp_path, env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert "No backups on off." in listed.stdout  # its sidecars are there, the backup is not
    assert "1 backup(s) of" in listed.stdout
    synced = cli("sync", "--local", "--env", str(env_file), cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stderr
    assert (offsite / name).read_bytes() == (tmp_path / "backups" / name).read_bytes()
