"""The scripts in environments users really have: another language, odd folders, busy files.

The language tests run the scripts (and a PostgreSQL server) in German, in a locale generated
from the system's locale data (``make system-deps`` generates it). Each first asserts that the
tools really print German there: otherwise it would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from generator.sandbox import PostgresServer, RedisServer, free_port, start_postgres
from tests.integration.conftest import PG_DB, PG_PASSWORD, PG_USER
from tests.integration.restore_support import (
    BACKUP,
    EXTENSIONS,
    KEY,
    RESTORE,
    only_backup,
    run_ok,
    script_env,
)

if TYPE_CHECKING:
    from tests.integration.conftest import MakeEnv, RunScript

GERMAN = "de_DE.UTF-8"
# How users end up with German tools: a LANGUAGE preference over a C.UTF-8 LANG (script_env's),
# a German LANG, a German LC_ALL.
GERMAN_ENVS = [
    pytest.param({"LANGUAGE": "de"}, id="LANGUAGE=de"),
    pytest.param({"LANG": GERMAN}, id="LANG=de_DE"),
    pytest.param({"LC_ALL": GERMAN, "LANGUAGE": "de_DE:de"}, id="LC_ALL=de_DE"),
]


# ------------------------------------------------------------------------------------ helpers


def has_locale(name: str) -> bool:
    listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    wanted = name.lower().replace("utf-8", "utf8")
    return wanted in {line.strip().lower().replace("utf-8", "utf8") for line in listed.split()}


@pytest.fixture(scope="session")
def german_locale() -> str:
    """The de_DE.UTF-8 locale, generated when it is missing and this is root."""
    if not has_locale(GERMAN) and os.geteuid() == 0 and shutil.which("localedef"):
        subprocess.run(
            ["localedef", "-i", "de_DE", "-f", "UTF-8", GERMAN], capture_output=True, check=False
        )
    if not has_locale(GERMAN):
        pytest.skip(
            f"the {GERMAN} locale is missing and cannot be generated here "
            "(make system-deps installs the locales package and generates it, as root)"
        )
    return GERMAN


def assert_tools_speak_german(env: dict[str, str]) -> None:
    """dd, tar and gpg print German in ``env``: the test that uses it proves something."""
    dd = subprocess.run(["dd"], input=b"x", env=env, capture_output=True, check=False)
    assert "kopiert" in dd.stderr.decode(errors="replace"), (
        f"dd does not print German with {env}: {dd.stderr!r} (are the translations installed?)"
    )
    tar = subprocess.run(
        ["tar", "-cf", "/dev/null", "/no/such/file"], env=env, capture_output=True, check=False
    )
    assert "Fehler" in tar.stderr.decode(errors="replace"), tar.stderr
    gpg = subprocess.run(
        ["gpg", "--homedir", env["HOME"], "--batch", "--decrypt"],
        input=b"not openpgp",
        env=env,
        capture_output=True,
        check=False,
    )
    assert "OpenPGP-Daten" in gpg.stderr.decode(errors="replace"), gpg.stderr


# ------------------------------------------------------------------------------------ language


@pytest.mark.parametrize("language", GERMAN_ENVS)
def test_a_backup_in_german_counts_its_bytes_and_verify_reports_them(
    language: dict[str, str],
    german_locale: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = {**backup_env(tmp_path, encryption_key=KEY), **language}
    assert_tools_speak_german(env)
    backups = tmp_path / "backups"

    run_ok(run_script, BACKUP, "full", env=env)

    for kind in EXTENSIONS:
        backup = only_backup(backups, kind, encrypted=True)
        manifest = json.loads(Path(f"{backup}.manifest.json").read_text())
        assert manifest["size_raw_bytes"] > 0, kind
        verified = run_ok(run_script, RESTORE, "verify", backup.name, env=env)
        assert "check decompress: ok (gzip, " in verified.stdout
        assert "0 B decoded" not in verified.stdout, verified.stdout


def test_verify_in_german_of_a_backup_reports_what_it_decoded(
    german_locale: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=False)
    german = {**env, "LANGUAGE": "de"}
    assert_tools_speak_german(german)

    result = run_ok(run_script, RESTORE, "verify", backup.name, env=german)

    assert "check decompress: ok (gzip, 10.0 KiB decoded)" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def pg_german(
    german_locale: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresServer]:
    """A PostgreSQL server whose messages are German (lc_messages), like the fixtures' ``pg``."""
    with start_postgres(
        tmp_path_factory.mktemp("pg-de"),
        db=PG_DB,
        user=PG_USER,
        password=PG_PASSWORD,
        lc_messages=german_locale,
    ) as server:
        yield server


@pytest.mark.parametrize("language", ["english", "german"])
@pytest.mark.parametrize(
    ("problem", "hint"),
    [
        pytest.param(
            "password",
            "check POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) and POSTGRES_USER",
            id="wrong-password",
        ),
        pytest.param(
            "database", "check POSTGRES_DB: the database no_such_db does not exist", id="no-db"
        ),
        pytest.param("down", "check POSTGRES_HOST and POSTGRES_PORT", id="server-down"),
    ],
)
def test_a_refused_connection_names_the_setting_whatever_the_servers_language(
    language: str,
    problem: str,
    hint: str,
    request: pytest.FixtureRequest,
    redis_auth: RedisServer,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    server: PostgresServer = request.getfixturevalue("pg" if language == "english" else "pg_german")
    files = tmp_path / "files"
    files.mkdir()
    env = script_env(tmp_path, server, redis_auth, files)
    if problem == "password":
        env["POSTGRES_PASSWORD"] = "not it"
    elif problem == "database":
        env["POSTGRES_DB"] = "no_such_db"
    else:
        env["POSTGRES_PORT"] = str(free_port())

    result = run_script(BACKUP, "postgresql", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    if language == "german" and problem != "down":
        assert "»" in result.stderr, "the server does not speak German: the test proves nothing"
    assert hint in result.stderr
    wrong = {"password", "database", "down"} - {problem}
    hints = {
        "password": "check POSTGRES_PASSWORD",
        "database": "check POSTGRES_DB",
        "down": "is PostgreSQL running",
    }
    for other in wrong:
        assert hints[other] not in result.stderr, other
    assert not [p for p in (tmp_path / "backups").iterdir() if "_backup_" in p.name]
