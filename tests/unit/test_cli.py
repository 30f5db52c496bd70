"""The CLI: messages and exit codes, through typer's CliRunner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.config import KNOWN_KEYS
from tests.support import GYM_BACKUP, ROOT, write_env

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No setting leaks in from the developer's environment or a .env in the working folder."""
    for key in KNOWN_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_generate_renders_and_reports_each_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert "created     out/backup_script.sh" in result.stderr
    assert "created     out/crontab" in result.stderr
    again = runner.invoke(app, ["generate", "--out", "out"])
    assert "identical   out/backup_script.sh" in again.stderr


def test_generate_needs_no_secret() -> None:
    result = runner.invoke(app, ["generate", "--out", "out", "--env", str(ROOT / ".env.example")])
    assert result.exit_code == 0, result.output


def test_generate_check_exits_1_on_drift_and_writes_nothing(tmp_path: Path) -> None:
    runner.invoke(app, ["generate", "--out", "out"])
    (tmp_path / "out" / "crontab").write_text("hand edit\n")
    result = runner.invoke(app, ["generate", "--out", "out", "--check"])
    assert result.exit_code == 1
    assert "would be overwritten out/crontab" in result.stderr
    assert "differ from what the templates and settings render" in result.stderr
    assert (tmp_path / "out" / "crontab").read_text() == "hand edit\n"


def test_generate_check_passes_on_the_committed_render(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["generate", "--env", ".env.example", "--check"])
    assert result.exit_code == 0, result.stderr


def test_generate_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", "out", "--dry-run"])
    assert result.exit_code == 0
    assert "would be created" in result.stderr
    assert not (tmp_path / "out").exists()


def test_invalid_settings_list_every_problem_and_exit_1(tmp_path: Path) -> None:
    path = write_env(tmp_path, "POSTGRES_PORT=x\nTZ=Nowhere\nBACKUP_RETENTON_DAYS=5\n")
    result = runner.invoke(app, ["generate", "--env", str(path), "--out", "out"])
    assert result.exit_code == 1
    assert "invalid settings (3 problem(s))" in result.stderr
    assert "POSTGRES_PORT: 'x' is not a port" in result.stderr
    assert "TZ: 'Nowhere' is not a time zone name" in result.stderr
    assert "did you mean BACKUP_RETENTION_DAYS?" in result.stderr
    assert "Traceback" not in result.output


def test_config_check_masks_secrets_and_shows_next_runs(tmp_path: Path) -> None:
    path = write_env(tmp_path, "POSTGRES_PASSWORD=hunter2-secret\nENCRYPTION_KEY=passphrase-xyz\n")
    result = runner.invoke(app, ["config", "check", "--env", str(path)])
    assert result.exit_code == 0, result.output
    assert "hunter2-secret" not in result.output
    assert "passphrase-xyz" not in result.output
    assert "POSTGRES_PASSWORD        ********" in result.stdout
    assert "Next runs (America/Argentina/Buenos_Aires):" in result.stdout
    next_runs = result.stdout.split("Next runs")[1]
    backup_line = next(ln for ln in next_runs.splitlines() if "BACKUP_SCHEDULE" in ln)
    assert backup_line.count("02:00 -03") == 3
    assert "Encryption: on" in result.stdout


def test_config_check_requires_the_postgres_password(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "--env", str(write_env(tmp_path, ""))])
    assert result.exit_code == 1
    assert "POSTGRES_PASSWORD: required for a backup run" in result.stderr


def test_a_missing_env_file_is_a_clear_error() -> None:
    result = runner.invoke(app, ["config", "check", "--env", "nope.env"])
    assert result.exit_code == 1
    assert "nope.env: no such .env file" in result.stderr


def test_without_local_a_missing_container_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUP_CONTAINER", "gym_backup_that_does_not_exist")
    result = runner.invoke(app, ["backup", "full"])
    assert result.exit_code == 1
    # Docker missing, its engine stopped, or no such container: each says what to do.
    assert "Or add --local to run on this host." in result.stderr
    assert "Traceback" not in result.output


def test_backup_of_an_unknown_type_is_a_usage_error() -> None:
    result = runner.invoke(app, ["backup", "mysql", "--local"])
    assert result.exit_code == 2


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("gym-backup ")


@pytest.mark.parametrize("args", [["--version", "true"], ["--version", "generate"]])
def test_version_is_a_plain_flag_that_takes_nothing_after_it(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "gym-backup 0" not in result.stdout
    assert "Usage: gym-backup" in result.stderr


COMMANDS = [
    [],
    ["generate"],
    ["backup"],
    ["list"],
    ["cleanup"],
    ["drill"],
    ["alert-test"],
    ["verify"],
    ["info"],
    ["restore"],
    ["build"],
    ["up"],
    ["down"],
    ["logs"],
    ["config"],
    ["config", "check"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gym-backup")
def test_help_shows_flags_without_a_value_placeholder(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    flags = [ln.split()[0] for ln in result.stdout.splitlines() if ln.startswith("  --")]
    assert "--help" in flags
    # The command list shows each command's whole summary, never one cut short.
    listed = result.stdout.partition("\nCommands:\n")[2]
    assert not [ln for ln in listed.splitlines() if ln.endswith("...")]


def loaded_modules(args: list[str], cwd: Path) -> set[str]:
    """Which of the heavy libraries a fresh process has imported after running ``args``."""
    code = (
        "import sys\n"
        "from generator.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('jinja2', 'sh', 'asyncio', 'rich')\n"
        "print(' '.join(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stderr.splitlines()[-1].split())


def test_help_version_and_config_check_load_neither_the_renderer_nor_sh(tmp_path: Path) -> None:
    path = write_env(tmp_path, "POSTGRES_PASSWORD=pw\n")
    for args in (["--help"], ["--version"], ["config", "check", "--env", str(path)]):
        assert loaded_modules(args, tmp_path) == set(), args
    # The commands that render or run something still load what they need.
    assert "jinja2" in loaded_modules(["generate", "--out", "out"], tmp_path)
    assert (tmp_path / "out" / "backup_script.sh").is_file()
    assert "sh" in loaded_modules(["list"], tmp_path)


def test_without_a_dotenv_here_the_error_says_where_it_looked(tmp_path: Path) -> None:
    result = runner.invoke(app, ["backup", "full", "--local"])
    assert result.exit_code == 1
    assert "POSTGRES_PASSWORD: required for a backup run" in result.stderr
    assert f"no .env file in {tmp_path}: pass --env FILE" in result.stderr


FAKE_DOCKER = """\
#!/bin/sh
# A stand-in for the docker client: the engine answers; `build` prints 30 lines and exits with
# FAKE_BUILD_EXIT (0 by default); every container runs; `exec` writes its arguments to
# FAKE_EXEC_LOG and exits with FAKE_EXEC_EXIT (0 by default).
case "$1" in
  info) echo 20.10.24 ;;
  inspect) echo running ;;
  exec)
    shift
    echo "$*" >>"$FAKE_EXEC_LOG"
    exit "${FAKE_EXEC_EXIT:-0}" ;;
  build)
    i=1
    while [ "$i" -le 30 ]; do echo "build output line $i"; i=$((i + 1)); done
    if [ "${FAKE_BUILD_EXIT:-0}" -ne 0 ]; then
      echo "The command '/bin/sh -c apt-get install' returned a non-zero code: 2" >&2
    fi
    exit "${FAKE_BUILD_EXIT:-0}" ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `docker` first on PATH (the CLI's own handling of its results is under test)."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    client = folder / "docker"
    client.write_text(FAKE_DOCKER, encoding="utf-8")
    client.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return client


def test_a_failed_docker_build_is_a_build_failure_with_its_last_lines(
    fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BUILD_EXIT", "2")
    result = runner.invoke(app, ["build", "--out", "out"])
    assert result.exit_code == 1, result.output
    assert "usage" not in result.stderr
    assert "error: docker build gym-backup:latest failed (exit 2)" in result.stderr
    report = result.stderr.split("error: docker build")[1]
    assert "build output line 12\n" in report
    assert "returned a non-zero code: 2" in report
    assert "build output line 11\n" not in report


def test_build_and_check_use_the_flavour_of_the_existing_render(fake_docker: Path) -> None:
    rendered = runner.invoke(app, ["generate", "--out", "out", "--flavor", "debian"])
    assert rendered.exit_code == 0, rendered.output
    check = runner.invoke(app, ["generate", "--out", "out", "--check"])
    assert check.exit_code == 0, check.stderr
    built = runner.invoke(app, ["build", "--out", "out"])
    assert built.exit_code == 0, built.output
    assert "FROM debian:bookworm-slim" in Path("out/Dockerfile").read_text()
    assert "ARG PG_MAJOR=15" in Path("out/Dockerfile").read_text()


def test_an_explicit_flavor_wins_over_the_existing_render() -> None:
    runner.invoke(app, ["generate", "--out", "out", "--flavor", "debian"])
    check = runner.invoke(app, ["generate", "--out", "out", "--check", "--flavor", "alpine"])
    assert check.exit_code == 1
    again = runner.invoke(app, ["generate", "--out", "out", "--flavor", "alpine"])
    assert again.exit_code == 0, again.output
    assert "FROM alpine:3.20" in Path("out/Dockerfile").read_text()
    assert "ARG PG_MAJOR=16" in Path("out/Dockerfile").read_text()


@pytest.mark.parametrize(
    ("command", "code", "said"),
    [
        ("drill", 0, ""),
        ("drill", 4, "error: backup_script.sh drill: verification failed"),
        ("alert-test", 1, "error: backup_script.sh alert-test: failed"),
        ("alert-test", 6, "error: backup_script.sh alert-test: refused: a precondition"),
    ],
)
def test_drill_and_alert_test_run_in_the_container_and_pass_its_exit_code_on(
    fake_docker: Path, tmp_path: Path, command: str, code: int, said: str
) -> None:
    calls = tmp_path / "exec.log"
    result = subprocess.run(
        [str(GYM_BACKUP), command],
        cwd=tmp_path,
        env={**os.environ, "FAKE_EXEC_LOG": str(calls), "FAKE_EXEC_EXIT": str(code)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == code, result.stderr
    assert calls.read_text() == f"gym_backup /usr/local/bin/backup_script.sh {command}\n"
    assert said in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restore", "postgresql"], "`restore postgresql` needs a backup FILE."),
        (["restore", "redis", "x.rdb.gz", "/tmp"], "DEST is for `restore files` and"),
    ],
)
def test_restore_arguments_that_do_not_fit_the_command_are_usage_errors(
    args: list[str], message: str
) -> None:
    result = runner.invoke(app, [*args, "--local"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
