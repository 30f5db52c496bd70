"""The rendered scripts as shell: lint-clean, and their pure functions behave."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.config import KNOWN_KEYS, load_settings
from generator.render import render, write
from tests.support import tool


@pytest.fixture(scope="module", params=["alpine", "debian"])
def rendered(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    out = tmp_path_factory.mktemp(f"rendered-{request.param}")
    write(render(load_settings(None, {}), request.param), out)
    return out


@pytest.fixture(scope="module")
def scripts(rendered: Path) -> list[Path]:
    return sorted(rendered.glob("*.sh"))


def test_dockerfile_is_hadolint_clean(rendered: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), str(rendered / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_rendered_scripts_parse_with_bash(scripts: list[Path]) -> None:
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_rendered_scripts_are_shellcheck_clean(scripts: list[Path]) -> None:
    result = subprocess.run(
        [tool("shellcheck"), "-s", "bash", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_rendered_scripts_are_shfmt_clean_with_two_space_indent(scripts: list[Path]) -> None:
    result = subprocess.run(
        [tool("shfmt"), "-i", "2", "-ci", "-d", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def call(script: Path, snippet: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Source the script (its source guard keeps main from running) and run a snippet, with
    ``settings`` in the environment."""
    return subprocess.run(
        ["bash", "-c", f'source "$1"; {snippet}', "bash", str(script)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "BACKUP_DIR": "/nonexistent", "TZ": "UTC", **settings},
        check=False,
    )


@pytest.mark.parametrize(
    ("client", "server_num", "code"),
    [
        ("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)", "150019", 0),
        ("pg_dump (PostgreSQL) 16.4", "150008", 0),
        ("pg_dump (PostgreSQL) 15.4", "160002", 6),
        ("pg_dump (PostgreSQL) 9.6.24", "100001", 6),
    ],
)
def test_pg_dump_older_than_the_server_is_refused(
    scripts: list[Path], client: str, server_num: str, code: int
) -> None:
    backup = next(s for s in scripts if s.name == "backup_script.sh")
    result = call(backup, f'check_pg_versions "{client}" {server_num}')
    assert result.returncode == code, result.stderr
    if code:
        major = int(server_num) // 10000
        assert f"install the PostgreSQL {major} client" in result.stderr


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("postgresql_backup_20261127_020000.sql.gz", True),
        ("redis_backup_20261127_020000.rdb.gz.gpg", True),
        ("files_backup_20261127_020000.tar.gz.gpg", True),
        ("postgresql_backup_latest.sql.gz", False),
        ("postgresql_backup_20261127_020000.sql.gz.sha256", False),
        ("mysql_backup_20261127_020000.sql.gz", False),
        ("files_backup_20261127_020000.tar.gz.partial", False),
    ],
)
def test_only_this_tools_own_backup_names_are_recognised(
    scripts: list[Path], name: str, ok: bool
) -> None:
    backup = next(s for s in scripts if s.name == "backup_script.sh")
    result = call(backup, f'[[ "{name}" =~ ${{BACKUP_NAME_RE}} ]]')
    assert (result.returncode == 0) is ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [("plain", '"plain"'), ('q"uote\\back', '"q\\"uote\\\\back"'), ("tab\there", '"tab\\there"')],
)
def test_json_strings_are_escaped(scripts: list[Path], value: str, expected: str) -> None:
    backup = next(s for s in scripts if s.name == "backup_script.sh")
    result = call(backup, f"json_str {shlex.quote(value)}")
    assert result.stdout == expected


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [
        ("* * * * *", 60),
        ("*/15 * * * *", 60),
        ("0 * * * *", 3600),
        ("0 2 * * *", 86400),
        ("0 3 * * 0", 604800),
        ("0 4 1 * *", 2678400),
    ],
)
def test_the_health_check_derives_the_backup_interval_from_the_schedule(
    scripts: list[Path], schedule: str, seconds: int
) -> None:
    health = next(s for s in scripts if s.name == "healthcheck.sh")
    result = call(health, f"schedule_interval '{schedule}'")
    assert result.stdout.strip() == str(seconds)


@pytest.mark.parametrize(
    ("version", "code"),
    [
        ("psql (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", 0),
        ("psql (PostgreSQL) 15.14", 0),
        ("psql (PostgreSQL) 15.13", 6),
        ("psql (PostgreSQL) 16.10", 0),
        ("psql (PostgreSQL) 16.9", 6),
        ("psql (PostgreSQL) 17.6", 0),
        ("psql (PostgreSQL) 17.5", 6),
        ("psql (PostgreSQL) 14.19", 0),
        ("psql (PostgreSQL) 13.21", 6),
        ("psql (PostgreSQL) 12.22", 6),
        ("psql (PostgreSQL) 18.0", 0),
        ("psql (PostgreSQL) 19devel", 0),
    ],
)
def test_a_psql_without_a_reliable_restrict_is_refused(
    scripts: list[Path], version: str, code: int
) -> None:
    restore = next(s for s in scripts if s.name == "restore_script.sh")
    result = call(restore, f"check_psql_version {shlex.quote(version)}")
    assert result.returncode == code, result.stderr
    if code:
        assert "13.22, 14.19, 15.14, 16.10, 17.6 and 18" in result.stderr


NUMBERS = ("KEEP_MIN", "BACKUP_RETENTION_DAYS", "LOCK_TIMEOUT")
# what the script's arithmetic makes of them after check_settings
SCRIPT_NUMBERS = (
    'check_settings && printf "%s %s %s %s" "${KEEP_MIN}" "${BACKUP_RETENTION_DAYS}" '
    '"${LOCK_TIMEOUT}" "$((BACKUP_RETENTION_DAYS * 86400))"'
)


@pytest.mark.parametrize(("given", "decimal"), [("010", 10), ("08", 8), ("0009", 9)])
def test_config_check_and_the_scripts_read_leading_zeros_as_decimal(
    scripts: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
    decimal: int,
) -> None:
    for key in KNOWN_KEYS:
        monkeypatch.delenv(key, raising=False)
    env_file = tmp_path / "test.env"
    env_file.write_text("POSTGRES_PASSWORD=x\n" + "".join(f"{name}={given}\n" for name in NUMBERS))
    backup = next(s for s in scripts if s.name == "backup_script.sh")
    expected = f"{decimal} {decimal} {decimal} {decimal * 86400}"

    shown = CliRunner().invoke(app, ["config", "check", "--env", str(env_file)])
    from_environment = call(backup, SCRIPT_NUMBERS, **dict.fromkeys(NUMBERS, given))
    rendered = tmp_path / "rendered"
    write(render(load_settings(env_file, {})), rendered)
    from_render = call(rendered / "backup_script.sh", SCRIPT_NUMBERS)

    assert shown.exit_code == 0, shown.output
    for name in NUMBERS:
        assert f"  {name:<24} {decimal}\n" in shown.stdout
    assert (from_environment.stdout, from_environment.returncode) == (expected, 0), (
        from_environment.stderr
    )
    assert (from_render.stdout, from_render.returncode) == (expected, 0), from_render.stderr


@pytest.mark.parametrize(("given", "seconds"), [("010", "10"), ("08", "8"), ("0", "173400")])
def test_the_health_check_reads_health_max_age_as_decimal(
    scripts: list[Path], given: str, seconds: str
) -> None:
    health = next(s for s in scripts if s.name == "healthcheck.sh")
    result = call(health, "max_age", HEALTH_MAX_AGE=given)
    assert (result.stdout.strip(), result.returncode) == (seconds, 0), result.stderr


@pytest.mark.parametrize(
    ("stamp", "epoch"),
    [
        ("20240229_235959", "1709251199"),
        ("20261127_020000", "1795744800"),
        ("20250229_020000", None),
        ("20261301_020000", None),
        ("20260230_020000", None),
        ("20260115_250000", None),
        ("20260115_240000", None),
        ("20260115_026000", None),
        ("20260115_020060", None),
    ],
)
def test_a_date_in_a_backup_name_counts_only_when_it_round_trips(
    scripts: list[Path], stamp: str, epoch: str | None
) -> None:
    backup = next(s for s in scripts if s.name == "backup_script.sh")
    result = call(backup, f"name_epoch files_backup_{stamp}.tar.gz")
    assert (result.stdout.strip() or None, result.returncode == 0) == (epoch, epoch is not None)


GOOD_JOURNAL = """\
# comment lines are skipped
version=1
mode=online
pid=4242
started=2026-01-02T03:04:05+00:00
backup=redis_backup_20260102_030000.rdb.gz
host=redis
port=6379
run_id=0123456789abcdef0123456789abcdef01234567
masterauth=empty
temp_host=10.0.0.5
temp_port=34567
temp_pid=4300
temp_dir=/tmp/gym-backup.AbCd/temp-redis
"""


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("", None),
        ("save=3600 1 300 100\n", None),
        ("host=$(touch /tmp/pwned)\n", None),  # a value is data: it is never evaluated
        ("save=$(touch /tmp/pwned)\n", "unexpected line 'save=$(touch /tmp/pwned)'"),
        ("masterauth=secret\n", "unexpected line 'masterauth=secret'"),
        ("PATH=/tmp\n", "unexpected line 'PATH=/tmp'"),
        ("run_id=x\n", "unexpected line 'run_id=x'"),
    ],
)
def test_the_redis_restore_journal_is_read_as_data_and_refused_when_odd(
    scripts: list[Path], tmp_path: Path, extra: str, problem: str | None
) -> None:
    journal = tmp_path / "journal"
    journal.write_text(GOOD_JOURNAL + extra)
    backup = next(s for s in scripts if s.name == "backup_script.sh")

    result = call(
        backup,
        f"rc=0; journal_read {shlex.quote(str(journal))} || rc=$?; "
        'echo "rc=$rc ${REPAIR_PROBLEM}"; '
        'echo "${JOURNAL[host]}|${JOURNAL[temp_dir]}|${JOURNAL[save]:-}"',
    )

    first, second = result.stdout.splitlines()
    if problem is None:
        assert first == "rc=0 "
        host = "$(touch /tmp/pwned)" if "host=" in extra else "redis"
        save = "3600 1 300 100" if "save=" in extra else ""
        assert second == f"{host}|/tmp/gym-backup.AbCd/temp-redis|{save}"
    else:
        assert first == f"rc=1 {problem}"
    assert not Path("/tmp/pwned").exists()


def test_a_sigterm_while_the_script_expands_command_substitutions_always_reaches_on_signal(
    rendered: Path,
) -> None:
    # Two substitutions in one command: bash 5.2 runs the trap of a signal that came during
    # the first while it parses the second, its parser still inside that "$(" (see
    # trap_signals). Unguarded, one run in two failed to parse the trap and exited 2.
    snippet = (
        "set -Eeuo pipefail; interrupted_state() { printf 'in the loop'; }; trap_signals; "
        """trap 'echo "exit trap: $?" >&2' EXIT; echo ready; """
        'while :; do x="$(printf a)$(printf b)"; done'
    )
    for run in range(20):
        proc = subprocess.Popen(
            ["bash", "-c", f'source "$1"; {snippet}', "bash", str(rendered / "backup_script.sh")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin", "BACKUP_DIR": "/nonexistent", "TZ": "UTC"},
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            time.sleep(run / 2000)  # 0 to 10 ms into the loop
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait()

        assert proc.returncode == 143, err
        assert "[ERROR] interrupted by SIGTERM: in the loop" in err
        assert "exit trap: 143" in err


def test_a_signal_while_final_names_are_given_waits_until_they_all_are(
    scripts: list[Path],
) -> None:
    backup = next(s for s in scripts if s.name == "backup_script.sh")

    result = call(
        backup,
        "interrupted_state() { printf 'all three published'; }; trap_signals; "
        "publishing_begin; kill -TERM $$; echo 'still publishing'; publishing_done; "
        "echo 'not reached'",
    )

    assert result.returncode == 143, result.stderr
    assert result.stdout == "still publishing\n"
    assert "[ERROR] interrupted by SIGTERM: all three published" in result.stderr


DRILL_JOB = (
    "BASH_ENV=/dev/shm/gym-backup/env.sh /usr/local/bin/backup_script.sh drill "
    ">>/backups/cron.log 2>&1"
)
DRILL_OFF = "# no restore drill (RESTORE_DRILL_SCHEDULE is empty):"


@pytest.mark.parametrize(
    ("rendered_drill", "at_start", "schedule"),
    [
        (None, {}, "30 4 * * 0"),
        (None, {"RESTORE_DRILL_SCHEDULE": "15 5 * * 1"}, "15 5 * * 1"),
        (None, {"RESTORE_DRILL_SCHEDULE": ""}, DRILL_OFF),
        ("", {}, DRILL_OFF),
        ("", {"RESTORE_DRILL_SCHEDULE": "0 6 * * *"}, "0 6 * * *"),
    ],
)
def test_the_entrypoint_installs_the_restore_drill_with_its_schedule_at_start_or_none_when_empty(
    tmp_path: Path, rendered_drill: str | None, at_start: dict[str, str], schedule: str
) -> None:
    given = {} if rendered_drill is None else {"RESTORE_DRILL_SCHEDULE": rendered_drill}
    write(render(load_settings(None, given)), tmp_path)
    crontab = tmp_path / "crontab"

    result = call(
        tmp_path / "entrypoint.sh",
        f"crontab_with_schedules {shlex.quote(str(crontab))}",
        BACKUP_SCHEDULE="5 1 * * *",
        **at_start,
    )

    assert result.returncode == 0, result.stderr
    installed = result.stdout.splitlines()
    assert len(installed) == len(crontab.read_text().splitlines())
    assert [ln for ln in installed if "backup_script.sh drill " in ln] == [
        f"{schedule} {DRILL_JOB}"
    ]
    assert any(ln.startswith("5 1 * * * BASH_ENV=") and " full " in ln for ln in installed)


def test_on_docker_stop_the_entrypoint_signals_only_the_runs_no_other_run_started(
    rendered: Path,
) -> None:
    # a run (a drill), a run it started below a subshell of its own (a verify), and another run
    drill = subprocess.Popen(
        ["bash", "-c", "(sleep 60 & echo $!; wait) & wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert drill.stdout is not None
        verify = int(drill.stdout.readline())
        runs = f"{verify} {drill.pid} {other.pid}"

        result = call(rendered / "entrypoint.sh", f"outermost_runs {runs}")

        assert result.returncode == 0, result.stderr
        assert sorted(map(int, result.stdout.split())) == sorted([drill.pid, other.pid])
    finally:
        os.killpg(drill.pid, signal.SIGKILL)
        other.kill()
        for process in (drill, other):
            process.wait()
