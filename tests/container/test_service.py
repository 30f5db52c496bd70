"""The backup service in real containers: schedule, docker exec, restore, health, restarts,
the scheduled drill, alerts and pings.

The scenarios share one stack and run in this order: the schedule first (it needs a quiet
container), the health and stop scenarios last.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from generator import render
from generator.config import load_settings
from tests.container.conftest import (
    CONTAINER,
    ENCRYPTION_KEY,
    NAS_FOLDER,
    NAS_SERVICE,
    PG_PASSWORD,
    PROJECT_NAME,
    REDIS_PASSWORD,
    TEST_OVERRIDE,
    Stack,
    docker,
)
from tests.support import BACKUP_NAME, CODECS, GYM_BACKUP, with_sidecars

IMAGE = "gym-backup:container-test"


def backups(folder: Path) -> dict[str, list[str]]:
    """The backups in ``folder`` by type, oldest first."""
    found: dict[str, list[str]] = {"postgresql": [], "redis": [], "files": []}
    for path in sorted(folder.iterdir()):
        match = BACKUP_NAME.fullmatch(path.name)
        if match:
            found[match["type"]].append(path.name)
    return found


def created_at(name: str) -> datetime:
    match = BACKUP_NAME.fullmatch(name)
    assert match, name
    stamp = f"{match['day']}_{match['clock']}"
    return datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


def started_at() -> datetime:
    text = docker("inspect", "--format", "{{.State.StartedAt}}", CONTAINER).stdout.strip()
    return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)


def psql(stack: Stack, sql: str) -> str:
    """SQL as the gym's user over the published port (the password in the environment)."""
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(stack.port("postgres", 5432)),
            "-U",
            "gym_secure_user",
            "-d",
            "gym_secure_db",
        ],
        input=sql,
        env={**os.environ, "PGPASSWORD": PG_PASSWORD},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def first_scheduled_full(stack: Stack) -> list[str]:
    """The backups of the first scheduled full backup since the container started (waited for:
    a cron firing, a minute at most, and the run's records in the metrics)."""
    start = started_at().replace(second=0)
    cron_log = stack.backups / "cron.log"
    metrics = stack.backups / "metrics" / "gym_backup.prom"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        fresh = [n for names in backups(stack.backups).values() for n in names[:1]]
        if (
            cron_log.exists()
            and "backup full finished" in cron_log.read_text()
            and len(fresh) == 3
            and all(created_at(n) >= start for n in fresh)
            and metrics.exists()
            and 'gym_backup_last_run_timestamp_seconds{kind="backup"' in metrics.read_text()
        ):
            return fresh
        time.sleep(2)
    log = cron_log.read_text() if cron_log.exists() else ""
    raise AssertionError(f"no scheduled backup within the wait; cron.log:\n{log[-2000:]}")


def test_the_schedule_really_fires_with_a_hostile_postgres_password(stack: Stack) -> None:
    first_scheduled_full(stack)
    cron_log = (stack.backups / "cron.log").read_text()
    assert "postgresql: wrote postgresql_backup_" in cron_log
    assert PG_PASSWORD not in cron_log


def sha256s(stack: Stack, service: str, folder: str, names: list[str]) -> dict[str, str]:
    """The SHA-256 of the files ``names`` in ``folder`` of ``service``'s container."""
    paths = [f"{folder}/{name}" for name in names]
    found = docker("exec", stack.container(service), "sha256sum", *paths, check=False)
    assert found.returncode == 0, found.stderr
    return {
        line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in found.stdout.splitlines()
    }


def test_the_scheduled_run_copies_its_backups_to_the_sftp_nas_by_key(stack: Stack) -> None:
    """REPLICA_TARGETS=nas=nas:/backups/gym, the remote in a mounted rclone config
    (known_hosts_file pinning the server's host key) and its key_file in rclone's own variable
    RCLONE_CONFIG_NAS_KEY_FILE: the first scheduled full backup copies its
    three backups and their sidecars to the sftp-nas service; status, the metrics, list
    --replica and verify --from see them; the key is nowhere it should not be."""
    names = first_scheduled_full(stack)
    files = sorted(f for name in names for f in with_sidecars(name))
    assert len(files) == 9
    local = {f: hashlib.sha256((stack.backups / f).read_bytes()).hexdigest() for f in files}
    assert sha256s(stack, NAS_SERVICE, NAS_FOLDER, files) == local

    cron_log = (stack.backups / "cron.log").read_text()
    assert "replica nas ok (copied 3 backup(s)" in cron_log
    assert cron_log.count("verified: MD5 computed by the target") >= 3
    assert "Failed to save config" not in cron_log  # the pinned hash commands: nothing to save
    status = json.loads((stack.backups / "status.json").read_text())
    assert status["replicas"]["nas"]["last_run"]["result"] == "ok"
    gauge = 'gym_backup_replica_last_success_timestamp_seconds{target="nas"} '
    metrics = (stack.backups / "metrics" / "gym_backup.prom").read_text()
    [line] = [line for line in metrics.splitlines() if line.startswith(gauge)]
    assert float(line.split()[-1]) >= started_at().timestamp()

    listed = stack.exec("/usr/local/bin/backup_script.sh", "list", "--replica", "nas")
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in names), listed.stdout
    verified = stack.exec("/usr/local/bin/restore_script.sh", "verify", names[0], "--from", "nas")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    key = (stack.folder / "nas" / "nas_key").read_text().splitlines()[1]  # a line of its body
    logs = docker("logs", CONTAINER)
    seen = {
        "docker inspect": docker("inspect", CONTAINER).stdout,
        "the command lines": command_lines(CONTAINER),
        "docker logs": logs.stdout + logs.stderr,
        **{log.name: log.read_text() for log in stack.backups.glob("*.log")},
        "list and verify": listed.stdout + listed.stderr + verified.stdout + verified.stderr,
    }
    assert [where for where, text in seen.items() if key in text] == []


def test_docker_exec_backup_full_writes_all_three_backups(stack: Stack) -> None:
    before = backups(stack.backups)
    result = stack.exec("/usr/local/bin/backup_script.sh", "full")
    assert result.returncode == 0, result.stderr
    after = backups(stack.backups)
    for kind in ("postgresql", "redis", "files"):
        new = sorted(set(after[kind]) - set(before[kind]))
        assert len(new) == 1, (kind, new)
        assert (stack.backups / f"{new[0]}.sha256").exists()
        assert (stack.backups / f"{new[0]}.manifest.json").exists()
    check = subprocess.run(
        ["sha256sum", "-c", *(f"{n}.sha256" for names in after.values() for n in names[-1:])],
        cwd=stack.backups,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout


# The monitoring scenario's own container: the image under test on the stack's network, with a
# restore drill and a full backup every minute, alerts and pings to the stack's receiver service.
MONITORED = "gym_backup_monitoring_test"
# Secrets of ALERT_URLS (a webhook's password, the token in its path) and of the ping URL.
HOOK_PASSWORD = "hook-pass-c0nta1ner"
HOOK_TOKEN = "hook-tok-8f3e"
PING_TOKEN = "ping-tok-41aa"


def received(receiver: str) -> list[dict[str, str]]:
    """What the receiver service at URL ``receiver`` recorded (method, path, authorization,
    body), oldest first."""
    with urllib.request.urlopen(f"{receiver}/received", timeout=10) as answer:  # noqa: S310 - http
        found: list[dict[str, str]] = json.loads(answer.read())
    return found


def notices(receiver: str) -> list[dict[str, str]]:
    """The Apprise json:// notices the receiver got (title, message, type)."""
    return [
        json.loads(r["body"])
        for r in received(receiver)
        if r["method"] == "POST" and r["path"] == f"/{HOOK_TOKEN}"
    ]


def pings(receiver: str) -> list[tuple[str, str]]:
    """The dead man's switch pings the receiver got: (method, what) with what "start", "fail"
    or "" (success)."""
    base = f"/ping/{PING_TOKEN}"
    return [
        (r["method"], r["path"].removeprefix(base).lstrip("/"))
        for r in received(receiver)
        if r["path"].startswith(base)
    ]


def command_lines(container: str) -> str:
    """The command lines of every process in ``container`` (as ``ps`` shows them)."""
    script = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " <"$f"; echo; done 2>/dev/null'
    return docker("exec", container, "sh", "-c", script, check=False, timeout=30).stdout


def in_monitored(*args: str) -> subprocess.CompletedProcess[str]:
    return docker("exec", MONITORED, *args, check=False, timeout=300)


def test_cron_runs_the_drill_and_alerts_and_pings_reach_a_receiver_from_the_container(
    stack: Stack, tmp_path: Path
) -> None:
    """One cron firing (a minute at most) of a container whose full backup fails (FILES_DIR is
    missing) and whose drill checks the stack's backups: the drill's result in status and the
    metrics, the alert and the pings at the receiver; then a good run sends the recovery."""
    folder = tmp_path / "backups"
    folder.mkdir()
    for names in backups(stack.backups).values():
        for name in with_sidecars(names[-1]):
            shutil.copy2(stack.backups / name, folder / name)
    data = tmp_path / "data"  # FILES_DIR=/data/uploads is missing until the recovery
    data.mkdir()
    hook = f"json://gym:{HOOK_PASSWORD}@receiver:8080/{HOOK_TOKEN}"
    settings = (stack.folder / ".env").read_text() + (
        "RESTORE_DRILL_SCHEDULE=* * * * *\nFILES_DIR=/data/uploads\n"
        f"ALERT_URLS={hook}\nHEALTHCHECK_PING_URL=http://receiver:8080/ping/{PING_TOKEN}\n"
    )
    (tmp_path / "monitored.env").write_text(settings, encoding="utf-8")
    secrets = (HOOK_PASSWORD, HOOK_TOKEN, PING_TOKEN)
    receiver = f"http://127.0.0.1:{stack.port('receiver', 8080)}"  # (docker-compose is slow)
    # cron must be up before the minute turns (else this waits for the next one).
    if datetime.now(UTC).second > 55:
        time.sleep(61 - datetime.now(UTC).second)
    docker(
        *("run", "--detach", "--name", MONITORED, "--network", f"{PROJECT_NAME}_default"),
        *("--env-file", str(tmp_path / "monitored.env")),
        *("--volume", f"{folder}:/backups", "--volume", f"{data}:/data", IMAGE),
    )
    try:
        lines: set[str] = set()
        cron_log = folder / "cron.log"

        def drilled() -> bool:
            """status.json has the drill's records (written after its last log line)."""
            status_file = folder / "status.json"
            if not status_file.exists():
                return False
            types = json.loads(status_file.read_text())["types"].values()
            return all(of_type["last_drill"] for of_type in types)

        def fired() -> bool:
            """The first firing has run the drill and the backup, sent the alert and pings."""
            lines.update(command_lines(MONITORED).splitlines())
            text = cron_log.read_text() if cron_log.exists() else ""
            return (
                re.search(r"\] drill (finished|FAILED): ", text) is not None
                and drilled()
                and "backup full FAILED: " in text
                and ("POST", "fail") in pings(receiver)
                and any(n["title"] == "gym-backup ALERT: failed:files" for n in notices(receiver))
            )

        deadline = time.monotonic() + 150
        while not fired():
            if time.monotonic() > deadline:
                log = cron_log.read_text() if cron_log.exists() else ""
                raise AssertionError(f"no drill, alert and pings from cron in time:\n{log}")
            time.sleep(0.3)

        # The drill, in status and the metrics (read in the container) and in the logs.
        facts = json.loads(in_monitored("cat", "/backups/status.json").stdout)
        found = {"postgresql": "tables", "redis": "keys", "files": "files"}
        for kind, unit in found.items():
            drill = facts["types"][kind]["last_drill"]
            assert (drill["kind"], drill["result"]) == ("drill", "ok"), drill
            assert unit in drill["detail"], drill
        metrics = in_monitored("cat", "/backups/metrics/gym_backup.prom").stdout
        for kind in found:
            assert f'gym_backup_last_run_success{{kind="drill",type="{kind}"}} 1' in metrics
        assert 'gym_backup_attention{alert="failed:files"} 1' in metrics
        shown = in_monitored("/usr/local/bin/backup_script.sh", "status")
        assert shown.returncode == 7, shown.stdout + shown.stderr
        assert "last drill: postgresql ok " in shown.stdout
        assert "drill finished: postgresql ok (" in cron_log.read_text()
        assert "drill redis: redis_backup_" in (folder / "backup.log").read_text()

        # The alert from the scheduled run, and its pings: /start, then /fail with the log's end.
        [alert] = [n for n in notices(receiver) if n["title"] == "gym-backup ALERT: failed:files"]
        assert "FILES_DIR /data/uploads does not exist" in alert["message"]
        assert pings(receiver)[:2] == [("GET", "start"), ("POST", "fail")]
        fail = next(r for r in received(receiver) if r["path"].endswith("/fail"))
        assert "[ERROR] backup full FAILED: " in fail["body"]
        [hook_auth] = {
            r["authorization"]
            for r in received(receiver)
            if r["method"] == "POST" and r["path"] == f"/{HOOK_TOKEN}"
        }
        assert hook_auth == "Basic " + base64.b64encode(f"gym:{HOOK_PASSWORD}".encode()).decode()

        # A good run clears it: the recovery notice and a success ping.
        (data / "uploads").mkdir()
        (data / "uploads" / "socia.jpg").write_bytes(b"photo")
        good = in_monitored("/usr/local/bin/backup_script.sh", "full")
        assert good.returncode == 0, good.stderr
        assert any(n["title"] == "gym-backup resolved: failed:files" for n in notices(receiver))
        assert ("POST", "") in pings(receiver)[2:], pings(receiver)

        # The secrets: in no command line (Docker's or the container's processes), no log.
        assert any("apprise" in line for line in lines), "apprise was never seen running"
        started = docker(
            "inspect", "--format", "{{json .Path}} {{json .Args}} {{json .Config.Cmd}}", MONITORED
        ).stdout
        logs = docker("logs", MONITORED)
        texts = [started, *lines, logs.stdout, logs.stderr, command_lines(MONITORED)]
        texts += [(folder / name).read_text() for name in ("cron.log", "backup.log", "restore.log")]
        texts += [(folder / name).read_text() for name in ("status.json", ".alerts")]
        for text in texts:
            for secret in secrets:
                assert secret not in text
    finally:
        docker("rm", "--force", MONITORED, check=False)


@pytest.mark.parametrize("codec", CODECS)
def test_a_restore_round_trip_through_docker_exec(codec: str, stack: Stack) -> None:
    psql(
        stack,
        "CREATE TABLE IF NOT EXISTS members (id int PRIMARY KEY, name text);"
        "TRUNCATE members; INSERT INTO members VALUES (1, 'Sofía'), (2, 'Björn');",
    )
    result = stack.exec("/usr/local/bin/backup_script.sh", "postgresql", env={"COMPRESSION": codec})
    assert result.returncode == 0, result.stderr
    name = backups(stack.backups)["postgresql"][-1]
    assert name.endswith(f".sql.{CODECS[codec]}.gpg")
    psql(stack, "DELETE FROM members WHERE id = 2; INSERT INTO members VALUES (3, 'intruso');")

    restored = stack.exec("/usr/local/bin/restore_script.sh", "postgresql", name, "--clean")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert psql(stack, "SELECT id, name FROM members ORDER BY id") == "1|Sofía\n2|Björn"
    assert "restored " + name in (stack.backups / "restore.log").read_text()


def test_the_cli_runs_the_scripts_in_the_container(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BACKUP_CONTAINER"}
    listing = subprocess.run(
        [str(GYM_BACKUP), "list", "--env", str(stack.folder / ".env")],
        cwd=stack.folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    assert "postgresql" in listing.stdout
    assert "free in /backups" in listing.stdout
    name = backups(stack.backups)["files"][-1]
    verified = subprocess.run(
        [str(GYM_BACKUP), "verify", name, "--deep", "--env", str(stack.folder / ".env")],
        cwd=stack.folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stderr
    assert "every check passed" in verified.stdout
    assert ENCRYPTION_KEY not in verified.stdout + verified.stderr


def test_backups_survive_a_container_restart(stack: Stack) -> None:
    before = backups(stack.backups)
    docker("restart", CONTAINER)
    stack.wait_for_health("healthy")
    assert backups(stack.backups) == before
    listing = stack.exec("/usr/local/bin/backup_script.sh", "list")
    assert before["postgresql"][-1] in listing.stdout


def test_the_health_check_follows_postgresql_down_and_back(stack: Stack) -> None:
    postgres = stack.container("postgres")
    docker("stop", postgres)
    try:
        stack.wait_for_health("unhealthy", timeout=60)
        probe = stack.exec("/usr/local/bin/healthcheck.sh")
        assert probe.returncode == 1
        assert "PostgreSQL at postgres:5432 does not accept connections" in probe.stdout
    finally:
        docker("start", postgres)
    stack.wait_for_health("healthy", timeout=90)


def test_a_one_off_backup_without_the_password_exits_6(stack: Stack) -> None:
    result = docker(
        "run", "--rm", "-e", "TZ=UTC", IMAGE, "backup_script.sh", "full", check=False, timeout=120
    )
    assert result.returncode == 6, result.stdout + result.stderr
    assert "POSTGRES_PASSWORD is not set; set it or POSTGRES_PASSWORD_FILE" in result.stderr


def test_a_refused_configuration_keeps_the_service_up_unhealthy_and_idle(
    stack: Stack, tmp_path: Path
) -> None:
    """The compose service without POSTGRES_PASSWORD: no restart loop (restart: unless-stopped),
    the fix-it message once in its log, unhealthy with the reason, no job, a prompt stop."""
    name = "gym_backup_refused_test"
    env = "".join(
        line + "\n"
        for line in (stack.folder / ".env").read_text().splitlines()
        if not line.startswith("POSTGRES_PASSWORD=")
    )
    # Its own compose project, without the gym's services: addresses, not names, so no depends_on.
    env += f"BACKUP_CONTAINER={name}\nPOSTGRES_HOST=127.0.0.1\nREDIS_HOST=127.0.0.1\n"
    (tmp_path / ".env").write_text(env, encoding="utf-8")
    (tmp_path / "docker-compose.test.yml").write_text(TEST_OVERRIDE, encoding="utf-8")
    (tmp_path / "backups").mkdir()
    (tmp_path / "uploads").mkdir()
    render.write(
        render.render(load_settings(tmp_path / ".env", {}), "debian"),
        tmp_path / "docker" / "backup",
    )
    project = ["-p", "gymbackuprefused", "--project-directory", str(tmp_path)]
    files = ["-f", "docker/backup/docker-compose.backup.yml", "-f", "docker-compose.test.yml"]

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", *project, *files, "--profile", "production", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    def state(field: str) -> str:
        return docker("inspect", "--format", f"{{{{{field}}}}}", name).stdout.strip()

    up = compose("up", "-d", "--no-build")
    assert up.returncode == 0, up.stderr
    try:
        deadline = time.monotonic() + 60
        while state(".State.Health.Status") != "unhealthy":
            assert time.monotonic() < deadline, state("json .State")
            time.sleep(1)
        for _ in range(2):  # still the first run, a few seconds apart
            assert state(".State.Status") == "running"
            assert state(".RestartCount") == "0"
            time.sleep(3)
        logs = docker("logs", name)
        assert (logs.stdout + logs.stderr).count("POSTGRES_PASSWORD is not set") == 1, logs.stderr
        health = docker("inspect", "--format", "{{json .State.Health.Log}}", name).stdout
        assert "POSTGRES_PASSWORD is not set" in health
        assert docker("exec", name, "pgrep", "-x", "cron", check=False).returncode == 1
        start = time.monotonic()
        docker("stop", name)
        assert time.monotonic() - start < 10
    finally:
        compose("down", "-v")


def test_any_other_command_is_passed_through(stack: Stack) -> None:
    result = docker("run", "--rm", IMAGE, "backup_script.sh", "--help", check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: backup_script.sh COMMAND")


def test_the_cron_jobs_settings_are_a_0400_file_with_one_form_of_each_secret(stack: Stack) -> None:
    probe = stack.exec("stat", "-c", "%a %U", "/dev/shm/gym-backup/env.sh")
    assert probe.stdout.split() == ["400", "root"]
    mounts = stack.exec("sh", "-c", "grep ' /dev/shm ' /proc/mounts").stdout
    assert " tmpfs " in mounts
    names = stack.exec(
        "sh", "-c", "sed -n 's/^export \\([A-Z_]*\\)=.*/\\1/p' /dev/shm/gym-backup/env.sh"
    )
    exported = names.stdout.split()
    assert "POSTGRES_PASSWORD" in exported
    assert "POSTGRES_PASSWORD_FILE" not in exported


def test_no_secret_is_in_the_image(stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    docker("save", "--output", str(archive), IMAGE, timeout=600)
    data = archive.read_bytes()
    for secret in (PG_PASSWORD, ENCRYPTION_KEY):
        assert secret.encode() not in data
    history = docker("history", "--no-trunc", IMAGE).stdout
    assert PG_PASSWORD not in history


def test_backup_on_start_runs_a_full_backup_at_once(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    network = f"{PROJECT_NAME}_default"
    name = "gym_backup_on_start_test"
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        network,
        "--env-file",
        str(stack.folder / ".env"),
        "--env",
        "BACKUP_ON_START=true",
        "--volume",
        f"{folder}:/backups",
        "--volume",
        f"{stack.folder / 'uploads'}:/data",
        IMAGE,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(backups(folder).values()):
            time.sleep(1)
        assert all(backups(folder).values()), (folder / "cron.log").read_text()
    finally:
        docker("rm", "--force", name, check=False)


def test_the_cli_shows_the_logs_of_the_container(stack: Stack) -> None:
    result = subprocess.run(
        [str(GYM_BACKUP), "logs", "backup", "--lines", "3", "--env", str(stack.folder / ".env")],
        cwd=stack.folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    # the log's last lines, whatever they say (the health check's alert lines are log lines too)
    assert all(re.match(r"^\S+ \[(INFO|WARN|ERROR)\] ", line) for line in lines), lines


def redis_cli(stack: Stack, *args: str) -> str:
    """redis-cli against the published port (the password in the environment)."""
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(stack.port("redis", 6379)), *args],
        env={**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """gym-backup from the gym project's folder, on this test stack's compose project."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT_NAME}
    env.pop("BACKUP_CONTAINER", None)
    return subprocess.run(
        [str(GYM_BACKUP), *args, "--env", str(stack.folder / ".env")],
        cwd=stack.folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_restore_redis_in_file_mode_restarts_redis_with_the_backup(stack: Stack) -> None:
    redis_cli(stack, "SET", "plan:monthly", "15000")
    redis_cli(stack, "HSET", "session:1", "member", "42")
    taken = stack.exec("/usr/local/bin/backup_script.sh", "redis")
    assert taken.returncode == 0, taken.stderr
    name = backups(stack.backups)["redis"][-1]
    redis_cli(stack, "SET", "plan:monthly", "99999")
    redis_cli(stack, "DEL", "session:1")

    result = cli(stack, "restore", "redis", name, "--mode", "file")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restarting {stack.container('redis')}" in result.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if redis_cli(stack, "PING") == "PONG":
                break
        except subprocess.CalledProcessError:
            pass
        time.sleep(1)
    assert redis_cli(stack, "GET", "plan:monthly") == "15000"
    assert redis_cli(stack, "HGET", "session:1", "member") == "42"
    stack.wait_for_health("healthy", timeout=90)


def test_gym_backup_down_and_up_manage_only_the_backup_service(stack: Stack) -> None:
    down = cli(stack, "down")
    assert down.returncode == 0, down.stderr
    assert docker("inspect", CONTAINER, check=False).returncode != 0
    assert docker("inspect", stack.container("postgres")).returncode == 0
    up = cli(stack, "up")
    assert up.returncode == 0, up.stderr
    # `up` uses the gym's and the service's compose files, without the test's short intervals:
    # run the health check itself rather than wait for Docker's next probe.
    deadline = time.monotonic() + 60
    while (probe := stack.exec("/usr/local/bin/healthcheck.sh")).returncode != 0:
        assert time.monotonic() < deadline, probe.stdout + probe.stderr
        time.sleep(1)
    assert probe.stdout.startswith("healthy:")


def hold_table_lock(stack: Stack, table: str) -> subprocess.Popen[str]:
    """A session of the gym's user holding an exclusive lock on ``table`` (pg_dump waits for it)
    until its stdin is closed."""
    session = subprocess.Popen(
        [
            *("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"),
            *("-p", str(stack.port("postgres", 5432)), "-U", "gym_secure_user"),
            *("-d", "gym_secure_db"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PGPASSWORD": PG_PASSWORD},
        text=True,
    )
    assert session.stdin is not None
    session.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n")
    session.stdin.flush()
    granted = (
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted"  # noqa: S608
        f" AND relation = '{table}'::regclass"
    )
    deadline = time.monotonic() + 30
    while psql(stack, granted) != "1":
        assert time.monotonic() < deadline, f"the lock on {table} was not granted"
        time.sleep(0.1)
    return session


def stop_during_a_blocked_backup(
    stack: Stack, log_name: str, timeout: float, begin: Callable[[], object] = lambda: None
) -> float:
    """With pg_dump held by a lock (taken before ``begin`` starts a backup), wait for a
    PostgreSQL backup's partial file, then `docker stop` the service; the seconds it took. The
    service is started again after."""
    psql(stack, "CREATE TABLE IF NOT EXISTS stop_probe (x int)")
    finals = set(backups(stack.backups)["postgresql"])
    blocker = hold_table_lock(stack, "stop_probe")
    try:
        begin()
        deadline = time.monotonic() + timeout
        while not list(stack.backups.glob("postgresql_backup_*.partial")):
            assert time.monotonic() < deadline, "no backup started writing"
            time.sleep(0.2)
        start = time.monotonic()
        docker("stop", CONTAINER, timeout=120)
        elapsed = time.monotonic() - start
    finally:
        assert blocker.stdin is not None
        blocker.stdin.close()
        blocker.wait(timeout=30)
    try:
        log = (stack.backups / log_name).read_text()
        assert "interrupted by SIGTERM" in log
        assert "nothing was published under a final name" in log
        assert not list(stack.backups.glob("*.partial"))
        assert set(backups(stack.backups)["postgresql"]) == finals
    finally:
        docker("start", CONTAINER)
        stack.wait_for_health("healthy", timeout=120)
    return elapsed


def test_docker_stop_interrupts_a_docker_exec_backup_cleanly(stack: Stack) -> None:
    runs: list[subprocess.Popen[str]] = []

    def start() -> None:
        runs.append(
            subprocess.Popen(
                ["docker", "exec", CONTAINER, "/usr/local/bin/backup_script.sh", "postgresql"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )

    elapsed = stop_during_a_blocked_backup(stack, "backup.log", timeout=60, begin=start)
    _, err = runs[0].communicate(timeout=60)
    assert "interrupted by SIGTERM" in err
    assert elapsed < 20, f"docker stop took {elapsed:.1f}s"


def test_docker_stop_interrupts_a_scheduled_backup_cleanly(stack: Stack) -> None:
    # the schedule is every minute: the next scheduled run blocks on the lock, then is stopped
    elapsed = stop_during_a_blocked_backup(stack, "cron.log", timeout=90)
    assert elapsed < 20, f"docker stop took {elapsed:.1f}s"


def test_docker_stop_ends_the_container_promptly(stack: Stack) -> None:
    start = time.monotonic()
    docker("stop", CONTAINER)
    elapsed = time.monotonic() - start
    state = docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", CONTAINER)
    assert state.stdout.split()[0] == "exited"
    assert elapsed < 10, f"docker stop took {elapsed:.1f}s"
