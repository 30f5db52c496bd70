"""The scripts in environments users really have: another language, odd folders, busy files.

The language tests run the scripts (and a PostgreSQL server) in German, in a locale generated
from the system's locale data (``make system-deps`` generates it). Each first asserts that the
tools really print German there: otherwise it would prove nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, RedisServer, free_port, start_postgres
from tests.support import (
    BACKUP,
    EXTENSIONS,
    KEY,
    PG_DB,
    PG_PASSWORD,
    PG_USER,
    RESTORE,
    MakeEnv,
    RunScript,
    backups_of,
    needs_root_and_setpriv,
    nobody_run,
    only_backup,
    run_ok,
    script_env,
    tar_members,
)

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


# ------------------------------------------------------------------------------------ folders


def test_a_backup_dir_inside_files_dir_is_left_out_of_the_files_backup(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    (uploads / "fotos").mkdir(parents=True)
    (uploads / "fotos/socio.jpg").write_bytes(b"\xff\xd8 foto")
    backups = uploads / "backups"
    backups.mkdir()
    # named through a link: the paths are compared once links are resolved
    (tmp_path / "backups-link").symlink_to(backups)
    env = backup_env(tmp_path, files_dir=uploads, BACKUP_DIR=str(tmp_path / "backups-link"))

    run_ok(run_script, BACKUP, "files", env=env)
    second = run_ok(run_script, BACKUP, "files", env=env)

    assert "files: BACKUP_DIR is inside FILES_DIR: excluded (./backups)" in second.stdout
    made = backups_of(backups, "files")
    assert len(made) == 2
    for backup in made:
        assert tar_members(gzip.decompress(backup.read_bytes())) == {"fotos", "fotos/socio.jpg"}


def test_the_staging_folder_of_an_unfinished_files_restore_is_left_out_of_the_files_backup(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    (uploads / "fotos").mkdir(parents=True)
    (uploads / "fotos/socio.jpg").write_bytes(b"\xff\xd8 foto")
    staged = uploads / ".gym-restore.AbCd1234"
    (staged / "tree/fotos").mkdir(parents=True)
    (staged / "tree/fotos/restored.jpg").write_bytes(b"waiting to be moved")
    (uploads / ".gym-restore-notes").write_text("an upload of the gym, kept")
    env = backup_env(tmp_path, files_dir=uploads)

    result = run_ok(run_script, BACKUP, "files", env=env)

    assert f"files: left out {staged}, the staging folder of a files restore" in result.stderr
    (made,) = backups_of(tmp_path / "backups", "files")
    assert tar_members(gzip.decompress(made.read_bytes())) == {
        "fotos",
        "fotos/socio.jpg",
        ".gym-restore-notes",
    }


def test_backup_dir_and_files_dir_being_one_folder_is_refused(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    env = backup_env(tmp_path, files_dir=backups)

    result = run_script(BACKUP, "files", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert "BACKUP_DIR and FILES_DIR are the same folder" in result.stderr
    assert backups_of(backups, "files") == []


def test_a_file_changing_while_tar_reads_it_is_a_warning_naming_it(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "quieto.txt").write_text("still\n")
    busy = uploads / "subiendo.bin"
    with busy.open("wb") as handle:  # 64 MiB of zeros (sparse): tar takes a while to read it
        handle.truncate(64 << 20)
    env = backup_env(tmp_path, files_dir=uploads, COMPRESSION_LEVEL="1")
    stop = threading.Event()

    def keep_writing() -> None:
        fd = os.open(busy, os.O_WRONLY)
        try:
            while not stop.is_set():
                os.pwrite(fd, b"upload in progress", 0)
                time.sleep(0.001)
        finally:
            os.close(fd)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run_script(BACKUP, "files", env=env)
    finally:
        stop.set()
        writer.join()

    assert result.returncode == 0, result.stdout + result.stderr
    warning = "tar (exit 1): ./subiendo.bin: file changed as we read it"
    assert f"[WARN] files: {warning}" in result.stderr
    assert f"backup files finished: files ok with warning: {warning}" in result.stdout
    backup = only_backup(tmp_path / "backups", "files", encrypted=False)
    assert tar_members(gzip.decompress(backup.read_bytes())) == {"quieto.txt", "subiendo.bin"}


@needs_root_and_setpriv
def test_a_file_tar_cannot_read_still_fails_the_files_backup(
    rendered_scripts: Path, backup_env: MakeEnv, tmp_path: Path
) -> None:
    with nobody_run(rendered_scripts) as (base, run_as_nobody):
        uploads = base / "uploads"
        uploads.mkdir()
        (uploads / "legible.txt").write_text("ok\n")
        (uploads / "privado.txt").write_text("root only\n")
        (uploads / "privado.txt").chmod(0o600)
        env = backup_env(tmp_path, files_dir=uploads)

        result = run_as_nobody("files", env=env)

        assert result.returncode == 1, result.stdout + result.stderr
        assert "files: tar failed (exit 2)" in result.stderr
        assert "privado.txt: Cannot open: Permission denied" in result.stderr
        assert backups_of(base / "backups", "files") == []
        assert not list((base / "backups").glob("*.partial"))


def test_an_empty_files_dir_after_a_backup_with_entries_is_a_warning_in_the_summary(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    env = backup_env(tmp_path, files_dir=uploads)
    backups = tmp_path / "backups"
    # a first backup of an empty folder (a new installation) is no cause for alarm
    first = run_ok(run_script, BACKUP, "files", env=env)
    assert "warning" not in first.stdout + first.stderr
    (uploads / "a").mkdir()
    (uploads / "a/uno.txt").write_text("1")
    (uploads / "dos.txt").write_text("2")
    run_ok(run_script, BACKUP, "files", env=env)
    with_entries = backups_of(backups, "files")[-1]
    assert json.loads(Path(f"{with_entries}.manifest.json").read_text())["entries"] == 3
    shutil.rmtree(uploads / "a")
    (uploads / "dos.txt").unlink()  # the volume is not mounted: the folder is there, empty

    result = run_ok(run_script, BACKUP, "files", env=env)

    warning = (
        f"FILES_DIR {uploads} is empty, but the previous files backup ({with_entries.name}) "
        "had 3 entries: is the uploads volume mounted?"
    )
    assert f"[WARN] files: {warning}" in result.stderr
    assert f"backup files finished: files ok with warning: {warning}" in result.stdout
    assert f"files ok with warning: {warning}" in (backups / "backup.log").read_text()
    assert len(backups_of(backups, "files")) == 3


def test_a_missing_backup_dir_is_created_with_a_warning_when_its_parent_exists(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    missing = tmp_path / "volume" / "backups"
    missing.parent.mkdir()
    env = backup_env(tmp_path, BACKUP_DIR=str(missing))

    result = run_ok(run_script, BACKUP, "files", env=env)

    warning = f"BACKUP_DIR {missing} did not exist and was created: is the backups volume mounted?"
    assert f"[WARN] {warning}" in result.stderr
    assert f"backup files finished: files ok (warning: {warning})" in result.stdout
    assert len(backups_of(missing, "files")) == 1


def test_a_missing_backup_dir_without_its_parent_is_refused(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    missing = tmp_path / "not mounted" / "backups"
    env = backup_env(tmp_path, BACKUP_DIR=str(missing))

    result = run_script(BACKUP, "files", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert (
        f"BACKUP_DIR {missing} does not exist, nor does its parent folder {missing.parent}"
        in result.stderr
    )
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    "raw", ["100000000000000", "1000000000000000000", "99999999999999999999999", "lots"]
)
def test_an_absurd_raw_size_in_the_previous_manifest_does_not_block_a_redis_backup(
    raw: str, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "redis", env=env)
    manifest = Path(f"{only_backup(backups, 'redis', encrypted=False)}.manifest.json")
    text = manifest.read_text()
    size = json.loads(text)["size_raw_bytes"]
    manifest.write_text(text.replace(f'"size_raw_bytes": {size},', f'"size_raw_bytes": {raw},'))

    result = run_ok(run_script, BACKUP, "redis", env=env)

    # the snapshot streams into the stored file: the free-space check has no use for a raw size
    assert "raw size" not in result.stderr
    assert len(backups_of(backups, "redis")) == 2
