"""Alerts and the dead man's switch, delivered for real.

Notices go through the real ``apprise`` CLI to a real HTTP receiver (Apprise ``json://``) and a
real SMTP server (``mailto://``, with a login) on 127.0.0.1; pings go through curl to the HTTP
receiver. ``alerts_update`` and ``ping_deadman`` are called from the sourced backup_script.sh,
as the status layer calls them; ``alert-test`` and the start ping through the script's commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from devtools.sandbox import free_port
from tests.support import (
    BACKUP,
    SMTP_PASSWORD,
    HttpReceiver,
    MakeEnv,
    RunScript,
    SmtpReceiver,
    alert_state,
    backups_of,
    holding_the_lock,
    run_ok,
    silent_port,
    source_and_run,
    sourcing,
    wait_for,
    write_conditions,
)

CONDITIONS = {
    "failed:postgresql": "the postgresql backup failed at 2024-05-01 02:00: pg_dump: error: "
    "connection to server failed; look further: backup_script.sh list",
    "disk": "BACKUP_DIR is 91% full (ALERT_DISK_PERCENT=80)",
}
# Secrets in ALERT_URLS: a webhook's password and the token in its path.
HOOK_PASSWORD = "hook-pass-93c1"
HOOK_TOKEN = "tok-5d2a77"
DAY = 86400


def alert_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a run of the alert functions sees: BACKUP_DIR (``tmp_path/backups``), HOME, TZ=UTC."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    backups = tmp_path / "backups"
    backups.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "BACKUP_DIR": str(backups),
        **extra,
    }


def update(
    scripts: Path, env: dict[str, str], tmp_path: Path, conditions: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``alerts_update`` with these conditions firing; it must succeed."""
    firing = write_conditions(tmp_path / "firing", conditions)
    result = source_and_run(scripts, BACKUP, 'alerts_update "$1"', str(firing), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def backup_log(env: dict[str, str]) -> str:
    path = Path(env["BACKUP_DIR"]) / "backup.log"
    return path.read_text() if path.exists() else ""


def age_alerts(backup_dir: Path, seconds: int) -> None:
    """Make ``seconds`` pass for the alerts in the state: their SINCE and LAST_SENT go back."""
    lines = []
    for key, (since, sent, delivered, message) in alert_state(backup_dir).items():
        lines.append(
            f"{key}\t{int(since) - seconds}\t{int(sent) - seconds}\t{delivered}\t{message}"
        )
    (backup_dir / ".alerts").write_text("".join(line + "\n" for line in lines))


def titles(receiver: HttpReceiver, path: str = "/hook") -> list[tuple[object, object]]:
    return [(p["title"], p["type"]) for p in receiver.posted(path)]


def test_a_new_alert_is_logged_and_reaches_a_webhook_and_a_mailbox(
    rendered_scripts: Path, webhook: HttpReceiver, mailbox: SmtpReceiver, tmp_path: Path
) -> None:
    env = alert_env(tmp_path, ALERT_URLS=f"{webhook.url('hook', 'json')} {mailbox.url()}")
    update(rendered_scripts, env, tmp_path, CONDITIONS)

    assert titles(webhook) == [
        ("gym-backup ALERT: failed:postgresql", "failure"),
        ("gym-backup ALERT: disk", "failure"),
    ]
    first = webhook.posted("/hook")[0]["message"]
    assert isinstance(first, str)
    assert first.startswith(CONDITIONS["failed:postgresql"] + "\n\nFiring since ")
    assert "Repeated every 1 d while it lasts" in first
    wait_for(lambda: len(mailbox.mails) == 2, "the two mails")
    assert sorted(str(m["Subject"]) for m in mailbox.mails) == [
        "gym-backup ALERT: disk",
        "gym-backup ALERT: failed:postgresql",
    ]
    assert mailbox.mails[0]["To"] == "ops@gym.test"
    assert any(body.startswith(CONDITIONS["disk"]) for body in mailbox.bodies())
    log = backup_log(env)
    for key, text in CONDITIONS.items():
        assert f"[WARN] alert: {key}: {text}\n" in log
        assert f"[INFO] alert {key}: the new notice was delivered" in log
    state = alert_state(Path(env["BACKUP_DIR"]))
    assert list(state) == list(CONDITIONS)
    assert {row[2] for row in state.values()} == {"yes"}
    assert state["disk"][3] == CONDITIONS["disk"]


def test_an_alert_still_firing_is_sent_again_only_after_alert_repeat(
    rendered_scripts: Path, webhook: HttpReceiver, tmp_path: Path
) -> None:
    env = alert_env(tmp_path, ALERT_URLS=webhook.url("hook", "json"))
    stale = {"stale:redis": "no successful redis backup for 26 h (ALERT_MAX_AGE=24 h)"}
    update(rendered_scripts, env, tmp_path, stale)
    update(rendered_scripts, env, tmp_path, stale)
    assert len(webhook.posted("/hook")) == 1, "sent again before ALERT_REPEAT"

    age_alerts(Path(env["BACKUP_DIR"]), DAY)
    update(rendered_scripts, env, tmp_path, stale)
    assert titles(webhook)[1:] == [("gym-backup ALERT, still firing: stale:redis", "failure")]
    reminder = webhook.posted("/hook")[1]["message"]
    assert isinstance(reminder, str)
    assert reminder.startswith(stale["stale:redis"] + "\n\nStill firing, since ")
    assert ", for 1 d (host " in reminder
    assert "[WARN] alert still firing (since " in backup_log(env)
    update(rendered_scripts, env, tmp_path, stale)
    assert len(webhook.posted("/hook")) == 2, "the reminder went out twice"


def test_a_shorter_alert_repeat_sends_reminders_sooner_and_zero_never(
    rendered_scripts: Path, webhook: HttpReceiver, tmp_path: Path
) -> None:
    slow = {"duration:full": "the full backup ran 1 h 20 min (ALERT_MAX_DURATION=1 h)"}
    env = alert_env(tmp_path, ALERT_URLS=webhook.url("hook", "json"), ALERT_REPEAT="3600")
    update(rendered_scripts, env, tmp_path, slow)
    age_alerts(Path(env["BACKUP_DIR"]), 3600)
    update(rendered_scripts, env, tmp_path, slow)
    assert len(webhook.posted("/hook")) == 2

    never = {**env, "ALERT_REPEAT": "0"}
    age_alerts(Path(env["BACKUP_DIR"]), 30 * DAY)
    update(rendered_scripts, never, tmp_path, slow)
    assert len(webhook.posted("/hook")) == 2


def test_a_cleared_alert_sends_a_recovery_notice_and_leaves_the_state(
    rendered_scripts: Path, webhook: HttpReceiver, mailbox: SmtpReceiver, tmp_path: Path
) -> None:
    env = alert_env(tmp_path, ALERT_URLS=f"{webhook.url('hook', 'json')},{mailbox.url()}")
    update(rendered_scripts, env, tmp_path, CONDITIONS)
    age_alerts(Path(env["BACKUP_DIR"]), 3 * 3600)
    update(rendered_scripts, env, tmp_path, {"disk": CONDITIONS["disk"]})

    assert titles(webhook)[2:] == [("gym-backup resolved: failed:postgresql", "success")]
    recovery = webhook.posted("/hook")[2]["message"]
    assert isinstance(recovery, str)
    assert recovery.startswith(
        f"resolved: failed:postgresql (it was: {CONDITIONS['failed:postgresql']})"
    )
    assert ", for 3 h (host " in recovery
    wait_for(lambda: len(mailbox.mails) == 3, "the recovery mail")
    assert str(mailbox.mails[2]["Subject"]) == "gym-backup resolved: failed:postgresql"
    assert "[INFO] alert resolved: failed:postgresql (firing since " in backup_log(env)
    assert list(alert_state(Path(env["BACKUP_DIR"]))) == ["disk"]

    update(rendered_scripts, env, tmp_path, {})
    update(rendered_scripts, env, tmp_path, {})
    assert titles(webhook)[3:] == [("gym-backup resolved: disk", "success")]
    assert alert_state(Path(env["BACKUP_DIR"])) == {}


def test_a_notice_that_was_not_delivered_is_sent_at_the_next_update(
    rendered_scripts: Path, webhook: HttpReceiver, tmp_path: Path
) -> None:
    env = alert_env(tmp_path, ALERT_URLS=webhook.url("hook", "json"))
    broken = {"encryption": "gpg: decryption failed: Bad session key (verify of the newest backup)"}
    webhook.status = 500
    update(rendered_scripts, env, tmp_path, broken)
    assert len(webhook.requests) == 3, "three tries"
    log = backup_log(env)
    assert f"[WARN] alert: encryption: {broken['encryption']}" in log
    assert "[WARN] alert encryption: the new notice was NOT delivered (apprise failed" in log
    assert alert_state(Path(env["BACKUP_DIR"]))["encryption"][2] == "no"

    webhook.status = 200
    update(rendered_scripts, env, tmp_path, broken)
    assert webhook.requests[-1].json()["title"] == "gym-backup ALERT: encryption"
    assert alert_state(Path(env["BACKUP_DIR"]))["encryption"][2] == "yes"
    update(rendered_scripts, env, tmp_path, broken)
    assert len(webhook.requests) == 4


def test_without_alert_urls_alerts_are_logged_and_sent_once_urls_are_set(
    rendered_scripts: Path, webhook: HttpReceiver, tmp_path: Path
) -> None:
    empty = {"files_empty": "FILES_DIR /data is empty; the last files backup had 1234 files"}
    env = alert_env(tmp_path)
    update(rendered_scripts, env, tmp_path, empty)
    assert (
        f"[WARN] alert: files_empty: {empty['files_empty']} (not sent: ALERT_URLS is not set)"
        in backup_log(env)
    )
    assert alert_state(Path(env["BACKUP_DIR"]))["files_empty"][2] == "none"

    update(rendered_scripts, {**env, "ALERT_URLS": webhook.url("hook", "json")}, tmp_path, empty)
    assert titles(webhook) == [("gym-backup ALERT: files_empty", "failure")]
    assert alert_state(Path(env["BACKUP_DIR"]))["files_empty"][2] == "yes"


@pytest.mark.parametrize("dead", ["closed port", "silent port"])
def test_a_dead_receiver_neither_fails_the_caller_nor_keeps_it_past_alert_timeout(
    rendered_scripts: Path, tmp_path: Path, dead: str
) -> None:
    budget = 4
    with silent_port() as silent:
        port = silent if dead == "silent port" else free_port()
        env = alert_env(
            tmp_path, ALERT_URLS=f"json://127.0.0.1:{port}/hook", ALERT_TIMEOUT=str(budget)
        )
        started = time.monotonic()
        update(
            rendered_scripts, env, tmp_path, {"drill:files": "the restore drill of files failed"}
        )
        elapsed = time.monotonic() - started
    # the budget, apprise's last kill grace (2 s) and bash's start
    assert elapsed < budget + 4, f"alerts_update took {elapsed:.1f} s"
    assert "[WARN] alert drill:files: the new notice was NOT delivered" in backup_log(env)
    assert alert_state(Path(env["BACKUP_DIR"]))["drill:files"][2] == "no"


def test_concurrent_updates_send_an_alert_once(
    rendered_scripts: Path, webhook: HttpReceiver, tmp_path: Path
) -> None:
    webhook.delay = 1.5
    env = alert_env(tmp_path, ALERT_URLS=webhook.url("hook", "json"))
    firing = write_conditions(tmp_path / "firing", {"disk": CONDITIONS["disk"]})
    argv = sourcing(rendered_scripts, BACKUP, 'alerts_update "$1"', str(firing))
    updates = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
    assert [u.wait(timeout=60) for u in updates] == [0, 0]
    assert titles(webhook) == [("gym-backup ALERT: disk", "failure")]
    assert backup_log(env).count("[WARN] alert: disk:") == 1


def test_alert_urls_stay_out_of_argv_logs_and_output(
    rendered_scripts: Path, webhook: HttpReceiver, mailbox: SmtpReceiver, tmp_path: Path
) -> None:
    webhook.delay = 2.0
    hook = f"json://gym:{HOOK_PASSWORD}@127.0.0.1:{webhook.port}/{HOOK_TOKEN}"
    env = alert_env(tmp_path, ALERT_URLS=f"{hook} {mailbox.url()}")
    secrets = (HOOK_PASSWORD, HOOK_TOKEN, SMTP_PASSWORD)
    firing = write_conditions(tmp_path / "firing", {"disk": CONDITIONS["disk"]})
    run = subprocess.Popen(
        sourcing(rendered_scripts, BACKUP, 'alerts_update "$1"', str(firing)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_apprise = False
    while run.poll() is None:
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            seen_apprise = seen_apprise or "apprise" in argv
            for secret in secrets:
                assert secret not in argv, f"a secret of ALERT_URLS in the argv of {proc.name}"
        time.sleep(0.05)
    out, err = run.communicate()
    assert run.returncode == 0, out + err
    assert seen_apprise, "apprise was never seen running"
    # the secrets did reach apprise (through its environment)
    assert webhook.requests[0].path == f"/{HOOK_TOKEN}"
    wait_for(lambda: bool(mailbox.logins), "the SMTP login")
    assert mailbox.logins[0] == (b"backup", SMTP_PASSWORD.encode())
    state = (Path(env["BACKUP_DIR"]) / ".alerts").read_text()
    for text in (out, err, backup_log(env), state):
        for secret in secrets:
            assert secret not in text


def test_alert_test_sends_a_test_notice_to_the_urls_of_alert_urls_file(
    run_script: RunScript, webhook: HttpReceiver, tmp_path: Path
) -> None:
    urls_file = tmp_path / "alert_urls"
    urls_file.write_text(webhook.url("hook", "json") + "\n")
    env = alert_env(tmp_path, ALERT_URLS_FILE=str(urls_file))
    result = run_ok(run_script, BACKUP, "alert-test", env=env)
    assert titles(webhook) == [("gym-backup test notice", "info")]
    assert "alert-test: the test notice was delivered" in result.stdout


def test_alert_test_says_why_a_notice_was_not_delivered_without_showing_the_urls(
    run_script: RunScript, tmp_path: Path
) -> None:
    hook = f"json://gym:{HOOK_PASSWORD}@127.0.0.1:{free_port()}/{HOOK_TOKEN}"
    env = alert_env(tmp_path, ALERT_URLS=hook, ALERT_TIMEOUT="5")
    result = run_script(BACKUP, "alert-test", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "alert-test: the test notice was NOT delivered (apprise failed (exit 1)" in result.stderr
    for text in (result.stdout, result.stderr, backup_log(env)):
        assert HOOK_PASSWORD not in text
        assert HOOK_TOKEN not in text


def test_alert_test_without_alert_urls_is_refused(run_script: RunScript, tmp_path: Path) -> None:
    result = run_script(BACKUP, "alert-test", env=alert_env(tmp_path))
    assert result.returncode == 6
    assert "ALERT_URLS is not set" in result.stderr


# ------------------------------------------------------------------------------ dead man's switch


def test_a_full_backup_pings_the_dead_mans_switch_at_its_start(
    backup_env: MakeEnv, run_script: RunScript, webhook: HttpReceiver, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, HEALTHCHECK_PING_URL=webhook.url(f"ping/{HOOK_TOKEN}"))
    run_ok(run_script, BACKUP, "postgresql", env=env)
    run_ok(run_script, BACKUP, "full", "--dry-run", env=env)
    assert webhook.requests == [], "only a full backup that writes pings"
    run_ok(run_script, BACKUP, "full", env=env)
    first = webhook.requests[0]
    assert (first.method, first.path, first.body) == ("GET", f"/ping/{HOOK_TOKEN}/start", b"")
    log = backup_log(env)
    assert "dead man's switch: the start ping was sent" in log
    assert HOOK_TOKEN not in log


def test_a_dead_ping_receiver_does_not_fail_a_full_backup(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    with silent_port() as port:
        env = backup_env(
            tmp_path, HEALTHCHECK_PING_URL=f"http://127.0.0.1:{port}/ping/x", ALERT_TIMEOUT="2"
        )
        run_ok(run_script, BACKUP, "full", env=env)
    assert "dead man's switch: the start ping was NOT sent (curl exit " in backup_log(env)
    for kind in ("postgresql", "redis", "files"):
        assert len(backups_of(tmp_path / "backups", kind)) == 1


def test_success_and_fail_pings_post_the_runs_last_log_lines(
    rendered_scripts: Path, webhook: HttpReceiver, tmp_path: Path
) -> None:
    env = alert_env(tmp_path, HEALTHCHECK_PING_URL=webhook.url(f"ping/{HOOK_TOKEN}/?rid=7"))
    body = tmp_path / "body"
    body.write_text("backup full finished: postgresql ok, redis ok, files ok\n")
    result = source_and_run(
        rendered_scripts,
        BACKUP,
        'log ERROR "the postgresql backup failed: pg_dump: error"; ping_deadman fail; '
        'ping_deadman success "$1"',
        str(body),
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fail, success = webhook.requests
    assert (fail.method, fail.path) == ("POST", f"/ping/{HOOK_TOKEN}/fail?rid=7")
    assert b"[ERROR] the postgresql backup failed: pg_dump: error" in fail.body
    assert (success.method, success.path) == ("POST", f"/ping/{HOOK_TOKEN}?rid=7")
    assert success.body == body.read_bytes()
    assert HOOK_TOKEN not in backup_log(env)


@pytest.mark.parametrize("dead", ["closed port", "silent port"])
def test_a_dead_ping_receiver_returns_within_alert_timeout(
    rendered_scripts: Path, tmp_path: Path, dead: str
) -> None:
    budget = 3
    with silent_port() as silent:
        port = silent if dead == "silent port" else free_port()
        env = alert_env(
            tmp_path,
            HEALTHCHECK_PING_URL=f"http://127.0.0.1:{port}/ping/{HOOK_TOKEN}",
            ALERT_TIMEOUT=str(budget),
        )
        started = time.monotonic()
        result = source_and_run(
            rendered_scripts, BACKUP, 'ping_deadman fail || echo "not sent"', env=env
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("not sent\n")
    assert elapsed < budget + 4, f"ping_deadman took {elapsed:.1f} s"
    log = backup_log(env)
    assert "dead man's switch: the fail ping was NOT sent (curl exit " in log
    assert HOOK_TOKEN not in log


# ------------------------------------------------------------------------ what an alert says


def test_a_wrong_encryption_key_alert_gives_the_precise_reason(
    backup_env: MakeEnv, run_script: RunScript, webhook: HttpReceiver, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, encryption_key="the right key")
    run_ok(run_script, BACKUP, "redis", env=env)
    [backup] = backups_of(tmp_path / "backups", "redis")
    wrong = {**env, "ENCRYPTION_KEY": "not the key", "ALERT_URLS": webhook.url("hook", "json")}
    result = run_script("restore_script.sh", "verify", backup.name, env=wrong)
    assert result.returncode == 5, result.stdout + result.stderr

    [alert] = webhook.posted("/hook")
    assert alert["title"] == "gym-backup ALERT: encryption"
    message = alert["message"]
    assert isinstance(message, str)
    reason = (
        f"{backup.name} failed the decrypt check: wrong encryption key: ENCRYPTION_KEY does not "
        "decrypt this backup; nothing was changed"
    )
    assert message.startswith("an encryption or decryption error in the last verify of redis (")
    assert reason in message
    log = (tmp_path / "backups" / "restore.log").read_text()
    assert "[WARN] alert: encryption: an encryption or decryption error in the last verify" in log
    assert reason in log


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \[(INFO|WARN|ERROR)\] .+")


def test_the_health_checks_alerts_go_to_backup_log_rotated_only_under_the_run_lock(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    # The health check finds no scheduler on this host: its refresh raises "scheduler".
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = backup_env(tmp_path, TMPDIR=str(scratch))
    backups = Path(env["BACKUP_DIR"])
    log = backups / "backup.log"
    two_days_ago = time.time() - 2 * DAY
    day = time.strftime("%Y%m%d", time.gmtime(two_days_ago))
    old = "2000-01-01T00:00:00+00:00 [INFO] a line of a run two days ago\n"

    def refresh() -> None:
        """A health check whose refresh is due; wait until it has logged its alert."""
        (backups / ".alerts").unlink(missing_ok=True)
        status_file = backups / "status.json"
        if status_file.exists():
            os.utime(status_file, (time.time() - 600, time.time() - 600))
        log.write_text(old)
        os.utime(log, (two_days_ago, two_days_ago))
        started = time.time() - 1
        run_script("healthcheck.sh", env=env)

        def refreshed() -> bool:
            written = status_file.exists() and status_file.stat().st_mtime >= started
            return written and not list(scratch.glob("gym-health.*"))

        wait_for(refreshed, "the refresh (status.json written, its folder removed)")

    # A run holds the lock: the log is not rotated under it (the run does that).
    with holding_the_lock(backups, "backup full (pid 1, started 2000-01-01T00:00:00+00:00)"):
        refresh()
    assert log.read_text().startswith(old)
    assert "[WARN] alert: scheduler: the scheduler is not running" in log.read_text()
    assert not list(backups.glob("backup.log.*"))

    refresh()
    assert (backups / f"backup.log.{day}").read_text() == old
    lines = log.read_text().splitlines()
    assert lines, "nothing logged"
    for line in lines:
        assert LOG_LINE.fullmatch(line), line
    assert any("[WARN] alert: scheduler: the scheduler is not running" in line for line in lines)
    assert oct(log.stat().st_mode & 0o777) == "0o600"
