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
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.restore_support import (
    BACKUP,
    EXTENSIONS,
    KEY,
    RESTORE,
    only_backup,
    run_ok,
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
