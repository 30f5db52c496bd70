"""What every run leaves for monitoring: status.json, the Prometheus metrics, ``status``.

Real runs against real servers write the history; the metrics file is checked by Prometheus's own
promtool and served by a real node_exporter (its textfile collector), and the values read back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import PostgresServer, free_port
from tests.support import (
    KEY,
    HttpReceiver,
    MakeEnv,
    RunScript,
    descendants,
    run_ok,
    start_script,
    table_lock,
    tool,
    wait_for,
)

EXIT_FAILED, EXIT_ATTENTION = 1, 7
Result = subprocess.CompletedProcess[str]


def status_json(backups: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((backups / "status.json").read_text())
    return data


def metrics_text(backups: Path) -> str:
    return (backups / "metrics" / "gym_backup.prom").read_text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (labels in any order)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.partition("{")[0] != name:
            continue
        got = dict(
            part.split("=", 1) for part in metric.partition("{")[2].rstrip("}").split(",") if part
        )
        if {k: v.strip('"') for k, v in got.items()} == labels:
            return float(value)
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def promtool_check(path: Path) -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=path.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def status(run_script: RunScript, env: dict[str, str], *args: str) -> Result:
    return run_script("backup_script.sh", "status", *args, env=env)


# ------------------------------------------------------------------------------------ tests


def test_a_full_backup_is_in_status_json_the_metrics_and_status(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY)
    backups = Path(env["BACKUP_DIR"])
    run_ok(run_script, "backup_script.sh", "full", env=env)

    facts = status_json(backups)
    assert facts["schema_version"] == 1
    assert facts["attention"] == []
    for kind in ("postgresql", "redis", "files"):
        of_type = facts["types"][kind]
        success = of_type["last_success"]
        assert success["result"] == "ok"
        assert (backups / success["file"]).is_file()
        assert success["stored_bytes"] == (backups / success["file"]).stat().st_size
        assert success["raw_bytes"] > 0
        assert of_type["recent_runs"] == 1
        assert of_type["success_rate"] == 1
        assert of_type["backups"] == 1
    assert [h["type"] for h in facts["history"]] == ["files", "redis", "postgresql"]

    prom = backups / "metrics" / "gym_backup.prom"
    promtool_check(prom)
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    text = metrics_text(backups)
    stamp = facts["types"]["postgresql"]["last_success"]["timestamp"]
    assert sample(text, "gym_backup_last_success_timestamp_seconds", type="postgresql") == stamp
    assert sample(text, "gym_backup_runs_total", kind="backup", type="redis", result="ok") == 1
    assert sample(text, "gym_backup_last_run_success", kind="backup", type="files") == 1
    assert sample(text, "gym_backup_storage_free_bytes") > 0

    shown = status(run_script, env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "all good: nothing needs attention" in shown.stdout
    for kind in ("postgresql", "redis", "files"):
        assert any(line.startswith(kind) for line in shown.stdout.splitlines())
    as_json = json.loads(status(run_script, env, "--json").stdout)
    assert (
        as_json["types"]["redis"]["last_success"]["file"]
        == (facts["types"]["redis"]["last_success"]["file"])
    )


def test_a_failed_backup_needs_attention_until_one_succeeds_again(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path)
    backups = Path(env["BACKUP_DIR"])
    run_ok(run_script, "backup_script.sh", "postgresql", env=env)
    down = {**env, "POSTGRES_PORT": str(free_port())}
    failed = run_script("backup_script.sh", "postgresql", env=down)
    assert failed.returncode != 0

    facts = status_json(backups)
    [attention] = facts["attention"]
    assert attention["alert"] == "failed:postgresql"
    assert "has failed since" in attention["message"]
    assert "last error:" in attention["message"]
    last_run = facts["types"]["postgresql"]["last_run"]
    assert last_run["result"] == "failed"
    assert last_run["error"]
    assert facts["types"]["postgresql"]["last_success"]["result"] == "ok"
    text = metrics_text(backups)
    assert sample(text, "gym_backup_last_run_success", kind="backup", type="postgresql") == 0
    assert sample(text, "gym_backup_attention", alert="failed:postgresql") == 1
    assert sample(text, "gym_backup_runs_total", kind="backup", type="postgresql", result="ok") == 1
    assert (
        sample(text, "gym_backup_runs_total", kind="backup", type="postgresql", result="failed")
        == 1
    )
    shown = status(run_script, env)
    assert shown.returncode == EXIT_ATTENTION
    assert "NEEDS ATTENTION" in shown.stdout
    assert "the postgresql backup has failed" in shown.stdout

    run_ok(run_script, "backup_script.sh", "postgresql", env=env)
    facts = status_json(backups)
    assert facts["attention"] == []
    assert facts["types"]["postgresql"]["recent_runs"] == 3
    assert facts["types"]["postgresql"]["success_rate"] == pytest.approx(2 / 3)
    assert status(run_script, env).returncode == 0


def test_stopped_and_killed_runs_are_recorded_as_interrupted(
    tmp_path: Path,
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=payments_db, TMPDIR=str(tmp_path))
    backups = Path(env["BACKUP_DIR"])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # pg_dump waits for the lock: the run is stopped in the middle of its first part.
        with table_lock(pg, payments_db, "billing.summary", "ACCESS EXCLUSIVE"):
            run = start_script(rendered_scripts, "backup_script.sh", "full", env=env)
            wait_for(lambda: list(backups.glob("*.partial")), "the dump to start", timeout=60)
            victims = [run.pid] + [pid for pid, _ in descendants(run.pid)]
            for pid in victims if sig == signal.SIGKILL else victims[:1]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            run.communicate(timeout=30)
        if sig == signal.SIGTERM:
            history = status_json(backups)["history"]
            assert [(h["type"], h["result"]) for h in history] == [
                ("files", "interrupted"),
                ("redis", "interrupted"),
                ("postgresql", "interrupted"),
            ]
            assert "interrupted by SIGTERM" in history[0]["error"]
    # The killed run left no record; the next run finds its folder and records it.
    run_ok(run_script, "backup_script.sh", "redis", env=env)
    history = status_json(backups)["history"]
    assert [(h["type"], h["result"]) for h in history[:4]] == [
        ("redis", "ok"),
        ("files", "interrupted"),
        ("redis", "interrupted"),
        ("postgresql", "interrupted"),
    ]
    assert "killed" in history[1]["error"]
    text = metrics_text(backups)
    assert (
        sample(
            text, "gym_backup_runs_total", kind="backup", type="postgresql", result="interrupted"
        )
        == 2
    )


def test_the_history_is_bounded_and_the_counters_keep_counting(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path)
    backups = Path(env["BACKUP_DIR"])
    now = int(time.time())
    old = [
        "\t".join([str(now - 86400 * (200 - i)), "backup", "redis", "ok", "0", "1.0", "10", "5"])
        + "\tx\t\t\t\t20260101_000000\t1\t0"
        for i in range(150)
    ]
    (backups / ".runs").write_text("\n".join(old) + "\n")
    (backups / ".run_counts").write_text("backup\tredis\tok\t150\n")
    run_ok(run_script, "backup_script.sh", "redis", env=env)
    lines = (backups / ".runs").read_text().splitlines()
    assert len(lines) == 100
    facts = status_json(backups)
    assert len(facts["history"]) == 100
    assert facts["types"]["redis"]["recent_runs"] == 100
    text = metrics_text(backups)
    assert sample(text, "gym_backup_runs_total", kind="backup", type="redis", result="ok") == 151


def test_a_damaged_history_is_read_past_and_cleaned_by_the_next_run(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path)
    backups = Path(env["BACKUP_DIR"])
    junk = (
        'garbage\n\t\t\n1796400000\tbackup\tredis\tok\n"x\tbackup\tfiles\tfailed\t1\terr "q" \\\n'
    )
    (backups / ".runs").write_text(junk)
    shown = status(run_script, env, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["history"] == []
    run_ok(run_script, "backup_script.sh", "files", env=env)
    assert [h["type"] for h in status_json(backups)["history"]] == ["files"]
    assert len((backups / ".runs").read_text().splitlines()) == 1


def test_cleanup_restore_and_verify_runs_are_recorded(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY)
    backups = Path(env["BACKUP_DIR"])
    run_ok(run_script, "backup_script.sh", "redis", env=env)
    backup = status_json(backups)["types"]["redis"]["last_success"]["file"]
    run_ok(run_script, "backup_script.sh", "cleanup", env=env)
    run_ok(run_script, "restore_script.sh", "verify", backup, env=env)
    wrong = run_script("restore_script.sh", "verify", backup, env={**env, "ENCRYPTION_KEY": "no"})
    assert wrong.returncode == 5
    facts = status_json(backups)
    kinds = [(h["kind"], h["result"]) for h in facts["history"]]
    assert kinds[:3] == [("verify", "failed"), ("verify", "ok"), ("cleanup", "ok")]
    assert facts["last_cleanup"]["result"] == "ok"
    assert [a["alert"] for a in facts["attention"]] == ["encryption"]
    assert "decrypt check" in facts["attention"][0]["message"]


def test_old_backups_and_a_full_disk_need_attention(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path, ALERT_MAX_AGE="1", ALERT_DISK_PERCENT="1")
    backups = Path(env["BACKUP_DIR"])
    run_ok(run_script, "backup_script.sh", "files", env=env)
    time.sleep(2.1)
    shown = status(run_script, env, "--json")
    assert shown.returncode == EXIT_ATTENTION
    alerts = {a["alert"] for a in json.loads(shown.stdout)["attention"]}
    assert {"stale:files", "disk"} <= alerts
    assert "stale:postgresql" not in alerts  # never tried: no age yet
    assert backups.is_dir()


def test_node_exporter_serves_the_metrics(
    tmp_path: Path, backup_env: MakeEnv, run_script: RunScript
) -> None:
    env = backup_env(tmp_path)
    backups = Path(env["BACKUP_DIR"])
    run_ok(run_script, "backup_script.sh", "redis", env=env)
    port = free_port()
    exporter = subprocess.Popen(
        [
            tool("prometheus-node-exporter"),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--collector.textfile.directory={backups / 'metrics'}",
            "--collector.disable-defaults",
            "--collector.textfile",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = ""

        def scraped() -> bool:
            nonlocal body
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                return False
            return True

        wait_for(scraped, "node_exporter to answer")
        assert sample(body, "node_textfile_scrape_error") == 0
        stamp = status_json(backups)["types"]["redis"]["last_success"]["timestamp"]
        assert sample(body, "gym_backup_last_success_timestamp_seconds", type="redis") == stamp
        assert sample(body, "gym_backup_runs_total", kind="backup", type="redis", result="ok") == 1
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def test_a_run_still_going_past_alert_max_duration_is_flagged_by_status_and_the_health_check(
    tmp_path: Path,
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    webhook: HttpReceiver,
) -> None:
    env = backup_env(
        tmp_path,
        POSTGRES_DB=payments_db,
        ALERT_MAX_DURATION="6",
        ALERT_URLS=webhook.url("hook", "json"),
        TMPDIR=str(tmp_path),
    )
    backups = Path(env["BACKUP_DIR"])
    # pg_dump waits for the lock: the run holds the run lock for as long as the test wants.
    with table_lock(pg, payments_db, "billing.summary", "ACCESS EXCLUSIVE"):
        run = start_script(rendered_scripts, "backup_script.sh", "postgresql", env=env)
        wait_for(lambda: list(backups.glob("*.partial")), "the dump to start", timeout=60)
        assert status(run_script, env).returncode == 0, "flagged before ALERT_MAX_DURATION"
        shown = status(run_script, env, "--json")
        deadline = time.monotonic() + 30
        while shown.returncode != EXIT_ATTENTION:
            assert time.monotonic() < deadline, shown.stdout + shown.stderr
            time.sleep(0.5)
            shown = status(run_script, env, "--json")
        facts = json.loads(shown.stdout)
        assert facts["running"].startswith(f"backup postgresql (pid {run.pid}, started ")
        [attention] = facts["attention"]
        assert attention["alert"] == "duration"
        message = attention["message"]
        assert message.startswith("a run is still going after ")
        assert ", longer than ALERT_MAX_DURATION (6s): " in message
        assert f"backup postgresql (pid {run.pid}, started " in message
        # The health check's refresh (in the background) sees it too, sends it and logs it.
        probe = run_script("healthcheck.sh", env=env)
        assert probe.returncode == 1  # no scheduler runs on this host
        delivered = "[INFO] alert duration: the new notice was delivered"
        log = backups / "backup.log"
        wait_for(lambda: delivered in log.read_text(), "the health check's duration alert")
        assert "[WARN] alert: duration: a run is still going after " in log.read_text()
        [sent] = [p for p in webhook.posted("/hook") if p["title"] == "gym-backup ALERT: duration"]
        assert isinstance(sent["message"], str)
        assert sent["message"].startswith("a run is still going after ")
        assert f"(pid {run.pid}, started " in sent["message"]
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    # Finished, it is the last backup run that took too long; this run is not "running".
    facts = status_json(backups)
    assert facts["running"] is None
    # (the health check found no scheduler on this host: that stays until it sees one)
    attention = {a["alert"]: a["message"] for a in facts["attention"]}
    assert set(attention) == {"duration", "scheduler"}
    assert attention["duration"].startswith("the last backup run (")
