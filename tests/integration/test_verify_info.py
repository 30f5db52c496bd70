"""restore_script.sh verify and info on real backups: what they check, report and leave behind."""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, sql_ident, start_redis
from tests.support import (
    BACKUP,
    ENCRYPTION,
    FIDELITY_ROWS,
    FIDELITY_TABLES,
    KEY,
    RESTORE,
    TYPES,
    MakeEnv,
    RunScript,
    Sources,
    copy_backup,
    createdb_privilege,
    database_names,
    load_fidelity,
    load_redis_dataset,
    only_backup,
    processes_in,
    redis_state,
    run_ok,
    runs_own,
    write_sidecar,
)

SCRATCH_DBS = "SELECT datname FROM pg_database WHERE datname LIKE 'gym\\_backup\\_verify%'"


def offline_env(backup_env: MakeEnv, tmp_path: Path, key: str | None) -> dict[str, str]:
    """Settings whose servers cannot be reached: verify and info must not need them."""
    return backup_env(
        tmp_path,
        encryption_key=key,
        POSTGRES_PORT="1",
        REDIS_PORT="1",
        POSTGRES_PASSWORD="unused",
    )


# -------------------------------------------------------------------------------------- verify


@pytest.mark.parametrize("key", ENCRYPTION)
@pytest.mark.parametrize("kind", TYPES)
def test_verify_of_a_good_backup_passes_and_names_every_check(
    kind: str,
    key: str | None,
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = offline_env(backup_env, tmp_path, key)
    backup = copy_backup(sources.backups[(kind, key is not None)], tmp_path / "backups")

    result = run_ok(run_script, RESTORE, "verify", backup.name, env=env)

    lines = result.stdout.splitlines()
    checks = [ln.split("] check ", 1)[1] for ln in lines if "] check " in ln]
    assert [c.split(":", 1)[0] for c in checks] == ["checksum", "decrypt", "decompress", "content"]
    assert checks[0].startswith("checksum: ok (sha256 matches")
    if key is None:
        assert checks[1] == "decrypt: skipped (the backup is not encrypted)"
    else:
        assert checks[1].startswith("decrypt: ok (OpenPGP symmetric")
    assert checks[2].startswith("decompress: ok (gzip")
    assert checks[3].startswith("content: ok")
    assert lines[-1].endswith(f"verify {backup.name}: every check passed")
    left = {p.name for p in (tmp_path / "backups").iterdir() if not runs_own(p.name)}
    assert left == {backup.name, f"{backup.name}.sha256", f"{backup.name}.manifest.json"} | {
        "restore.log"
    }


def test_verify_deep_postgresql_reports_tables_and_rows_and_drops_its_scratch_database(
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    source = f"vd_{uuid.uuid4().hex[:12]}"
    reader = f"gym_reader_{uuid.uuid4().hex[:8]}"
    pg.createdb(source)
    pg.psql(f"CREATE ROLE {sql_ident(reader)}", "postgres")
    try:
        load_fidelity(pg, source, reader)
        env = backup_env(tmp_path, encryption_key=KEY, POSTGRES_DB=source)
        run_ok(run_script, BACKUP, "postgresql", env=env)
        backup = only_backup(tmp_path / "backups", "postgresql", encrypted=True)
        databases = database_names(pg)

        with createdb_privilege(pg, allowed=True):
            result = run_ok(run_script, RESTORE, "verify", backup.name, "--deep", env=env)

        assert "check deep: ok (loaded into scratch database gym_backup_verify_" in result.stdout
        assert f": {FIDELITY_TABLES} tables, {FIDELITY_ROWS} rows; dropped)" in result.stdout
        assert pg.psql(SCRATCH_DBS, "postgres") == ""
        assert database_names(pg) == databases
    finally:
        pg.dropdb(source)
        pg.psql(f"DROP ROLE {sql_ident(reader)}", "postgres")


def test_verify_deep_without_createdb_is_refused_and_says_which_grant_is_missing(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=sources.db)
    backup = copy_backup(sources.backups[("postgresql", False)], tmp_path / "backups")

    with createdb_privilege(pg, allowed=False):
        result = run_script(RESTORE, "verify", backup.name, "--deep", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert f"{pg.user} may not create databases" in result.stderr
    assert f'ALTER ROLE "{pg.user}" CREATEDB' in result.stderr
    assert "cannot connect" not in result.stderr
    assert pg.psql(SCRATCH_DBS, "postgres") == ""


def test_verify_deep_of_a_dump_that_does_not_load_fails_and_drops_its_scratch_database(
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=sources.db)
    broken = tmp_path / "backups" / "postgresql_backup_20240101_000000.sql.gz"
    broken.write_bytes(
        gzip.compress(
            b"CREATE TABLE fine (x int);\n"
            b"INSERT INTO no_such_table VALUES (1);\n"
            b"--\n-- PostgreSQL database dump complete\n--\n"
        )
    )
    write_sidecar(broken)

    with createdb_privilege(pg, allowed=True):
        result = run_script(RESTORE, "verify", broken.name, "--deep", env=env)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "check content: ok" in result.stdout, "the trailer is there: only --deep finds it"
    assert "check deep: FAILED (the dump does not load into a scratch database" in result.stderr
    assert 'relation "no_such_table" does not exist' in result.stderr
    assert pg.psql(SCRATCH_DBS, "postgres") == ""


def test_verify_deep_redis_reports_the_keys_of_each_database_and_stops_its_server(
    backup_env: MakeEnv,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    with start_redis(tmp_path / "redis") as live:
        load_redis_dataset(live)
        keys = redis_state(live).keys
        env = backup_env(tmp_path, redis=live, TMPDIR=str(short_tmp))
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=False)

    # the live server is gone: --deep needs none
    result = run_ok(run_script, RESTORE, "verify", backup.name, "--deep", env=env)

    per_db = ",".join(f"db{db} {count}" for db, count in sorted(keys.items()))
    expected = f"loaded into a scratch redis-server: {sum(keys.values())} keys ({per_db}); stopped"
    assert expected in result.stdout
    assert processes_in(short_tmp) == [], "the scratch redis-server was left running"
    assert list(short_tmp.iterdir()) == [], "the scripts' temporary folder was left behind"


def test_verify_deep_files_reads_the_archive_to_its_end(
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = offline_env(backup_env, tmp_path, KEY)
    backup = copy_backup(sources.backups[("files", True)], tmp_path / "backups")

    result = run_ok(run_script, RESTORE, "verify", backup.name, "--deep", env=env)

    assert "check deep: ok (3 entries besides folders; the tar was read to its end)" in (
        result.stdout
    )


def test_verify_without_the_sidecar_fails_unless_no_checksum_is_given(
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = offline_env(backup_env, tmp_path, KEY)
    backup = copy_backup(sources.backups[("redis", True)], tmp_path / "backups", sidecars=False)

    refused = run_script(RESTORE, "verify", backup.name, env=env)
    allowed = run_script(RESTORE, "verify", backup.name, "--no-checksum", env=env)

    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert f"check checksum: FAILED ({backup.name}.sha256 is missing" in refused.stderr
    assert "pass --no-checksum" in refused.stderr
    assert "check decrypt" not in refused.stdout + refused.stderr
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "check checksum: skipped (--no-checksum)" in allowed.stderr
    assert "check content: ok (valid RDB" in allowed.stdout


def test_verify_finds_a_bare_name_in_backup_dir_and_takes_a_path_anywhere(
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = offline_env(backup_env, tmp_path, None)
    elsewhere = copy_backup(sources.backups[("postgresql", False)], tmp_path / "elsewhere")

    by_bare_name = run_script(RESTORE, "verify", elsewhere.name, env=env)
    by_path = run_script(RESTORE, "verify", str(elsewhere), env=env)
    copy_backup(elsewhere, tmp_path / "backups")
    by_name_in_backup_dir = run_script(RESTORE, "verify", elsewhere.name, env=env)

    assert by_bare_name.returncode == 6, by_bare_name.stdout + by_bare_name.stderr
    assert (
        f"no backup file '{elsewhere.name}' (looked for {tmp_path}/backups/{elsewhere.name})"
        in by_bare_name.stderr
    )
    assert by_path.returncode == 0, by_path.stdout + by_path.stderr
    assert by_name_in_backup_dir.returncode == 0, by_name_in_backup_dir.stderr
    assert f"check checksum: ok (sha256 matches {elsewhere.name}.sha256)" in (
        by_name_in_backup_dir.stdout
    )


def test_verify_refuses_a_sidecar_made_for_another_file(
    sources: Sources, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    original = sources.backups[("files", False)]
    renamed = tmp_path / "backups" / "files_backup_20200101_000000.tar.gz"
    renamed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(original, renamed)
    shutil.copyfile(f"{original}.sha256", f"{renamed}.sha256")
    env = offline_env(backup_env, tmp_path, None)

    result = run_script(RESTORE, "verify", renamed.name, env=env)

    assert result.returncode == 4, result.stdout + result.stderr
    assert f"{renamed.name}.sha256 is for '{original.name}', not for {renamed.name}" in (
        result.stderr
    )


def test_verify_refuses_a_file_whose_name_says_no_backup_type(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    stray = tmp_path / "backups" / "notes.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("not a backup")

    result = run_script(RESTORE, "verify", str(stray), env=backup_env(tmp_path))

    assert result.returncode == 6, result.stdout + result.stderr
    assert "cannot tell the type of notes.txt" in result.stderr


# ---------------------------------------------------------------------------------------- info


def info_fields(stdout: str) -> dict[str, str]:
    fields = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


@pytest.mark.parametrize("key", ENCRYPTION)
def test_info_shows_what_the_manifest_and_the_file_say(
    key: str | None,
    sources: Sources,
    pg: PostgresServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    backup = copy_backup(sources.backups[("postgresql", key is not None)], tmp_path / "backups")
    manifest = json.loads(Path(f"{backup}.manifest.json").read_text())
    # info needs no key, no server and no lock
    env = offline_env(backup_env, tmp_path, None)

    result = run_ok(run_script, RESTORE, "info", backup.name, env=env)

    fields = info_fields(result.stdout)
    assert fields["file"] == str(backup)
    assert fields["type"] == "postgresql"
    assert fields["created"] == f"{manifest['created_local']} ({manifest['created_utc']})"
    assert fields["stored size"].endswith(f"({backup.stat().st_size} bytes)")
    assert fields["raw size"].endswith(f"({manifest['size_raw_bytes']} bytes)")
    compression = manifest["compression"]
    assert fields["compression"] == (
        f"format gzip, tool {compression['tool']}, level {compression['level']}"
    )
    assert fields["encrypted"] == ("yes, OpenPGP symmetric AES256" if key else "no")
    assert fields["checksum"] == f"ok (matches {backup.name}.sha256)"
    assert fields["source"] == ", ".join(f"{k} {v}" for k, v in manifest["source"].items())
    assert manifest["source"]["database"] == sources.db
    assert fields["purpose"] == "backup"
    assert fields["server"] == manifest["server_version"]
    assert "manifest" not in fields
    assert not (tmp_path / "backups" / "restore.log").exists()


@pytest.mark.parametrize("key", ENCRYPTION)
def test_info_without_sidecars_says_what_it_could_not_tell(
    key: str | None,
    sources: Sources,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    original = sources.backups[("redis", key is not None)]
    bare = copy_backup(original, tmp_path / "copied", sidecars=False)
    env = offline_env(backup_env, tmp_path, None)

    result = run_ok(run_script, RESTORE, "info", str(bare), env=env)

    fields = info_fields(result.stdout)
    stamp = original.name.split("_backup_", 1)[1][:15]
    assert fields["type"] == "redis"
    assert fields["created"] == (
        f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
        " (from the name, in TZ)"
    )
    assert fields["raw size"] == "unknown (no manifest; verify decodes it)"
    assert fields["compression"] == "gzip (from the name)"
    assert fields["encrypted"] == ("yes, OpenPGP symmetric AES256" if key else "no")
    assert fields["checksum"] == f"no {bare.name}.sha256: cannot tell whether the file is intact"
    assert fields["source"] == "unknown (no manifest)"
    assert fields["server"] == "unknown (no manifest)"
    assert fields["manifest"].startswith(f"none ({bare.name}.manifest.json is missing)")


def corrupt_manifest(text: str, how: str) -> str:
    manifest = json.loads(text)
    if how == "not-json":
        return "this is not a manifest\n"
    if how == "truncated":
        return text[: len(text) // 2]
    if how == "field-missing":
        return "".join(line for line in text.splitlines(True) if '"created_utc"' not in line)
    size = f'"size_raw_bytes": {manifest["size_raw_bytes"]},'
    absurd = {"absurd-size": "99999999999999999999999", "negative-size": "-5", "text-size": '"x"'}
    return text.replace(size, f'"size_raw_bytes": {absurd[how]},')


@pytest.mark.parametrize(
    "how", ["not-json", "truncated", "field-missing", "absurd-size", "negative-size", "text-size"]
)
def test_info_on_a_corrupt_manifest_says_so_and_shows_what_the_file_tells(
    how: str, sources: Sources, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    backup = copy_backup(sources.backups[("files", True)], tmp_path / "backups")
    manifest = Path(f"{backup}.manifest.json")
    manifest.write_text(corrupt_manifest(manifest.read_text(), how))

    result = run_ok(
        run_script, RESTORE, "info", backup.name, env=offline_env(backup_env, tmp_path, None)
    )

    fields = info_fields(result.stdout)
    assert all(fields.values()), f"blank fields: {result.stdout}"
    assert "()" not in result.stdout
    assert fields["manifest"].startswith("unreadable: "), fields
    assert fields["manifest"].endswith("the values above come from the file itself and its name")
    stamp = backup.name.split("_backup_", 1)[1][:15]
    assert fields["created"] == (
        f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
        " (from the name, in TZ)"
    )
    assert fields["raw size"] == "unknown (the manifest is unreadable; verify decodes it)"
    assert fields["encrypted"] == "yes, OpenPGP symmetric AES256"
    assert fields["checksum"] == f"ok (matches {backup.name}.sha256)"
    assert fields["source"] == "unknown (the manifest is unreadable)"


def test_info_reports_a_checksum_mismatch(
    sources: Sources, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    backup = copy_backup(sources.backups[("files", False)], tmp_path / "backups")
    with backup.open("ab") as handle:
        handle.write(b"tampered")

    result = run_ok(
        run_script, RESTORE, "info", backup.name, env=offline_env(backup_env, tmp_path, None)
    )

    assert info_fields(result.stdout)["checksum"] == (
        f"MISMATCH: the file differs from {backup.name}.sha256"
    )
