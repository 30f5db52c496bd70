"""backup_script.sh against real PostgreSQL, Redis, tar and gpg: what it stores restores exactly.

Every backup here is decoded the way an operator would (gpg with the passphrase on stdin, then
gunzip) and loaded back into a real server or folder; the tests compare the result with the
source. Listing and cleanup are checked on real backup files copied to older timestamp names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, RedisServer, load_rdb, sql_literal
from tests.support import (
    BACKUP,
    CODECS,
    ENCRYPTION,
    KEY,
    LIST_ROW,
    TYPES,
    MakeEnv,
    NewDb,
    RunScript,
    backups_of,
    decode,
    folder_state,
    make_uploads,
    name_parts,
    only_backup,
    restamped_copy,
    run_gpg,
    run_ok,
    stamp,
    tar_members,
    tree_state,
    with_sidecars,
)

MANIFEST_FIELDS = {
    "schema_version",
    "type",
    "created_utc",
    "created_local",
    "size_raw_bytes",
    "size_stored_bytes",
    "duration_seconds",
    "compression",
    "encrypted",
    "source",
    "server_version",
    "tool_versions",
}


# ------------------------------------------------------------------------------------ helpers


def strace_escaped(text: str) -> str:
    """How strace prints a string argument: backslashes and double quotes escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def human_size(size: int) -> str:
    """The size format of ``list`` (binary units, one truncated decimal)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    unit, scaled, tenths = 0, size, 0
    while scaled >= 1024 and unit < 4:
        tenths = (scaled % 1024) * 10 // 1024
        scaled //= 1024
        unit += 1
    return f"{size} B" if unit == 0 else f"{scaled}.{tenths} {units[unit]}"


def extract_tar(tar_bytes: bytes, tmp_path: Path, name: str) -> Path:
    """Extract a decoded files backup with real tar (as root tar keeps the stored modes)."""
    archive = tmp_path / f"{name}.tar"
    archive.write_bytes(tar_bytes)
    dest = tmp_path / name
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(dest)], check=True, timeout=60)
    return dest


# ----------------------------------------------------------------------------------- fixtures


GYM_SCHEMA = r"""
CREATE TYPE membership_level AS ENUM ('basic', 'premium', 'élite');
CREATE SEQUENCE receipt_no START 1000;
SELECT nextval('receipt_no') FROM generate_series(1, 7);

CREATE TABLE members (
    id serial PRIMARY KEY,
    name text NOT NULL,
    level membership_level NOT NULL,
    photo bytea,
    prefs jsonb,
    tags text[],
    balance numeric(14, 4),
    joined timestamptz
);
INSERT INTO members (name, level, photo, prefs, tags, balance, joined) VALUES
    ('José Núñez 🏋', 'élite', '\x00ff0000deadbeef00'::bytea,
     '{"locker": 12, "notes": "tab\there \"quoted\"", "nested": {"a": [1, null, true]}}',
     ARRAY['morning', 'a b', 'c"d', 'back\slash', NULL], 12345.6789,
     '2024-02-29 23:59:59.123456+00'),
    ('O''Brien', 'basic', '\x00'::bytea, 'null', '{}', -0.0001, '1999-12-31 21:00:00-03'),
    ('Zoë 日本語', 'premium', NULL, '[]', NULL, 99999999.9999, 'infinity');

CREATE TABLE payments (
    receipt bigint PRIMARY KEY DEFAULT nextval('receipt_no'),
    member_id int NOT NULL REFERENCES members (id),
    amount numeric NOT NULL,
    paid_at timestamptz NOT NULL,
    memo text
);
INSERT INTO payments (member_id, amount, paid_at, memo) VALUES
    (1, 15000.50, '2024-03-01 10:00:00+00', 'cuota de marzo; pagó en efectivo'),
    (2, 0.000000001, '2024-03-02 10:00:00-03', E'line one\nline two\ttabbed'),
    (3, 1e20, now(), NULL);
CREATE VIEW member_totals AS
    SELECT m.name, sum(p.amount) AS total FROM members m JOIN payments p ON p.member_id = m.id
    GROUP BY m.name;
"""


def redis_dataset(server: RedisServer, marker: str = "") -> None:
    """Replace the server's data with a bit of everything, in db 0 and db 3."""
    server.cli("FLUSHALL")
    server.pipe(
        [
            ["SET", "bin:blob", "\x00zero\r\nbytes\x7f\x1b\x00end"],
            ["SET", "text:unicode", "José Núñez 🏋 日本語"],
            ["SET", "counter", "42"],
            ["INCRBY", "counter", "8"],
            ["SET", "marker", f"stored marker {marker}"],
            ["RPUSH", "queue:emails", "first", "second item", "", "fourth"],
            ["HSET", "member:1", "name", "Ana", "plan", "premium", "balance", "15000.50"],
            ["HSET", "member:big", *[x for i in range(200) for x in (f"f{i}", f"value {i}")]],
            ["SADD", "tags", "yoga", "crossfit", "spinning"],
            ["SADD", "ids", "1", "2", "3", "1000000"],
            ["ZADD", "leaderboard", "1.5", "ana", "2", "bruno", "-3", "carla"],
            ["XADD", "stream:checkins", "1700000000000-0", "member", "1", "door", "north"],
            ["XADD", "stream:checkins", "1700000000001-0", "member", "2", "door", "south"],
            ["XGROUP", "CREATE", "stream:checkins", "staff", "0"],
            ["SET", "session:abc", "token", "EX", "3600"],
            ["HSET", "cache:plans", "monthly", "15000"],
            ["EXPIRE", "cache:plans", "7200"],
        ]
    )
    server.pipe(
        [
            ["SET", "db3:key", "in db three"],
            ["LPUSH", "db3:jobs", "job-1", "job-2"],
            ["ZADD", "db3:rank", "10", "x"],
            ["SET", "db3:ttl", "expiring", "PX", "5000000"],
        ],
        db=3,
    )


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("key", ENCRYPTION)
def test_postgresql_backup_restores_to_an_identical_database(
    key: str | None,
    codec: str,
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    fresh_db, restore_db = new_db(), new_db()
    pg.psql(GYM_SCHEMA, db=fresh_db, superuser=False)
    env = backup_env(tmp_path, encryption_key=key, POSTGRES_DB=fresh_db, COMPRESSION=codec)

    run_ok(run_script, BACKUP, "postgresql", env=env)

    stored = only_backup(tmp_path / "backups", "postgresql", encrypted=key is not None)
    assert stored.name.split(".")[2] == CODECS[codec]
    sql = decode(stored, key, gpg_home).decode()
    assert re.search(r'^DROP TABLE IF EXISTS "public"\."members";$', sql, re.MULTILINE)
    assert re.search(r'^DROP TYPE IF EXISTS "public"\."membership_level";$', sql, re.MULTILINE)
    assert "\n-- PostgreSQL database dump complete\n" in sql[-300:]
    pg.psql(sql, db=restore_db, superuser=False)
    source_dump = pg.dump(fresh_db).replace(fresh_db, "DBNAME")
    restored_dump = pg.dump(restore_db).replace(restore_db, "DBNAME")
    assert restored_dump == source_dump
    assert "SELECT pg_catalog.setval('public.receipt_no', 1009, true);" in restored_dump
    assert pg.psql("SELECT encode(photo, 'hex') FROM members WHERE id = 1", db=restore_db) == (
        "00ff0000deadbeef00"
    )


@pytest.mark.parametrize("key", ENCRYPTION)
@pytest.mark.parametrize(
    ("redis_name", "codec"),
    [("redis_auth", "gzip"), ("redis_open", "gzip"), ("redis_auth", "zstd")],
)
def test_redis_backup_loads_into_a_server_with_the_same_digest(
    redis_name: str,
    codec: str,
    key: str | None,
    request: pytest.FixtureRequest,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    server: RedisServer = request.getfixturevalue(redis_name)
    redis_dataset(server)
    env = backup_env(tmp_path, encryption_key=key, redis=server, COMPRESSION=codec)

    run_ok(run_script, BACKUP, "redis", env=env)

    stored = only_backup(tmp_path / "backups", "redis", encrypted=key is not None)
    assert stored.name.split(".")[2] == CODECS[codec]
    rdb = tmp_path / "restored.rdb"
    rdb.write_bytes(decode(stored, key, gpg_home))
    with load_rdb(rdb, tmp_path / "restore") as restored:
        assert restored.digest() == server.digest()
        assert restored.cli("GET", "text:unicode") == "José Núñez 🏋 日本語"
        assert restored.cli("GET", "db3:key", db=3) == "in db three"
        assert 0 < int(restored.cli("TTL", "session:abc")) <= 3600
        assert restored.cli("XLEN", "stream:checkins") == "2"


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("key", ENCRYPTION)
def test_files_backup_extracts_to_the_same_tree(
    key: str | None,
    codec: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    source = make_uploads(tmp_path / "uploads")
    (source / "enlace absoluto").symlink_to("/nonexistent/target with space")
    env = backup_env(tmp_path, encryption_key=key, files_dir=source, COMPRESSION=codec)

    run_ok(run_script, BACKUP, "files", env=env)

    stored = only_backup(tmp_path / "backups", "files", encrypted=key is not None)
    assert stored.name.split(".")[2] == CODECS[codec]
    extracted = extract_tar(decode(stored, key, gpg_home), tmp_path, "extracted")
    expected = tree_state(source)
    assert tree_state(extracted) == expected
    assert expected["scripts/run me.sh"][:2] == ("file", 0o755)
    assert expected["privado/llave.txt"][:2] == ("file", 0o600)
    assert expected["carpeta vacía"][0] == "dir"
    assert expected["última foto.jpg"][0] == "link"


@pytest.mark.parametrize("exclude", ["*.tmp,cache", " *.tmp , cache ,"])
def test_files_exclude_leaves_matching_names_out(
    exclude: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    source = tmp_path / "uploads"
    for rel in ("keep.txt", "upload.tmp", "sub/part.tmp", "sub/keep.pdf", "cache/x.bin",
                "sub/cache/y.bin", "cached.txt"):  # fmt: skip
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(rel)
    env = backup_env(tmp_path, files_dir=source, FILES_EXCLUDE=exclude)

    run_ok(run_script, BACKUP, "files", env=env)

    stored = only_backup(tmp_path / "backups", "files", encrypted=False)
    members = tar_members(decode(stored, None, gpg_home))
    assert members == {"keep.txt", "sub", "sub/keep.pdf", "cached.txt"}


@pytest.mark.parametrize("key", ENCRYPTION)
def test_full_backup_writes_all_three_with_one_timestamp_checksums_and_manifests(
    key: str | None,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, encryption_key=key)
    backups = tmp_path / "backups"
    encrypted = key is not None

    run_ok(run_script, BACKUP, "full", env=env)

    stored = {kind: only_backup(backups, kind, encrypted=encrypted) for kind in TYPES}
    stamps = {name_parts(path.name)[1:] for path in stored.values()}
    assert len(stamps) == 1, stamps
    day, clock = stamps.pop()
    run_stamp = datetime.strptime(day + clock, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    for kind, path in stored.items():
        checked = subprocess.run(
            ["sha256sum", "-c", f"{path.name}.sha256"],
            cwd=backups,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.strip() == f"{path.name}: OK"

        manifest = json.loads(Path(f"{path}.manifest.json").read_text())
        assert manifest.keys() >= MANIFEST_FIELDS
        assert manifest["schema_version"] == 1
        assert manifest["type"] == kind
        assert manifest["encrypted"] is encrypted
        assert manifest["created_utc"] == run_stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert datetime.fromisoformat(manifest["created_local"]) == run_stamp
        assert manifest["size_stored_bytes"] == path.stat().st_size
        assert manifest["size_raw_bytes"] == len(decode(path, key, gpg_home))
        assert isinstance(manifest["duration_seconds"], float)
        assert manifest["duration_seconds"] >= 0
        assert manifest["compression"]["format"] == "gzip"
        assert manifest["compression"]["level"] == 6
        assert isinstance(manifest["source"], dict)
        assert manifest["tool_versions"]["gym_backup"]
        if kind == "files":
            assert manifest["server_version"] is None
            assert manifest["entries"] == len(tar_members(decode(path, key, gpg_home)))
        else:
            assert isinstance(manifest["server_version"], str)
            assert manifest["server_version"][:1].isdigit()

        for produced in (path, Path(f"{path}.sha256"), Path(f"{path}.manifest.json")):
            assert stat.S_IMODE(produced.stat().st_mode) == 0o600, produced.name
    assert not list(backups.glob("*.partial"))


def test_encrypted_backups_are_aes256_and_hold_no_plaintext(
    pg: PostgresServer,
    new_db: NewDb,
    redis_open: RedisServer,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    fresh_db = new_db()
    pg.psql(
        f"CREATE TABLE notes (body text); INSERT INTO notes VALUES ({sql_literal(marker)});",  # noqa: S608 - quoted by sql_literal
        db=fresh_db,
        superuser=False,
    )
    redis_dataset(redis_open, marker)
    files = make_uploads(tmp_path / "uploads")
    (files / "marker.txt").write_text(f"stored marker {marker}\n")
    env = backup_env(
        tmp_path, encryption_key=KEY, redis=redis_open, files_dir=files, POSTGRES_DB=fresh_db
    )

    run_ok(run_script, BACKUP, "full", env=env)

    backups = tmp_path / "backups"
    for kind in TYPES:
        stored = only_backup(backups, kind, encrypted=True)
        assert not backups_of(backups, kind, encrypted=False)
        packets = run_gpg(gpg_home, KEY, "--list-packets", str(stored))
        assert packets.returncode == 0, packets.stderr.decode(errors="replace")
        symkey = [ln for ln in packets.stdout.decode().splitlines() if ":symkey enc packet:" in ln]
        assert len(symkey) == 1
        assert re.search(r"\bcipher 9\b", symkey[0]), symkey[0]  # 9 = AES256

        raw = stored.read_bytes()
        assert marker.encode() not in raw
        gunzipped = subprocess.run(["gzip", "-dc"], input=raw, capture_output=True, check=False)
        assert gunzipped.returncode != 0
        assert marker.encode() not in gunzipped.stdout
        content = decode(stored, KEY, gpg_home)
        if kind == "redis":
            rdb = tmp_path / "marker.rdb"
            rdb.write_bytes(content)
            with load_rdb(rdb, tmp_path / "restore") as restored:
                assert restored.cli("GET", "marker") == f"stored marker {marker}"
        else:
            assert marker.encode() in content


def test_a_key_file_given_at_run_time_turns_encryption_on_without_rerendering(
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    env = backup_env(tmp_path)
    run_ok(run_script, BACKUP, "files", env=env)
    plain = only_backup(backups, "files", encrypted=False)
    key_file = tmp_path / "encryption.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)

    run_ok(run_script, BACKUP, "files", env={**env, "ENCRYPTION_KEY_FILE": str(key_file)})

    encrypted = only_backup(backups, "files", encrypted=True)
    assert decode(encrypted, KEY, gpg_home) == decode(plain, None, gpg_home)
    manifest = json.loads(Path(f"{encrypted}.manifest.json").read_text())
    assert manifest["encrypted"] is True
    assert manifest["encryption"]["cipher"] == "AES256"


def test_encryption_works_when_tmpdir_is_a_long_path(
    backup_env: MakeEnv, run_script: RunScript, gpg_home: Path, tmp_path: Path
) -> None:
    # gpg-agent's socket lives in the run's GnuPG home; a unix socket path has at most 107 bytes
    work = tmp_path / "a-temporary-folder-with-a-rather-long-name"
    work.mkdir()
    assert len(str(work)) > 70
    env = backup_env(tmp_path, encryption_key=KEY, TMPDIR=str(work))

    run_ok(run_script, BACKUP, "files", env=env)

    stored = only_backup(tmp_path / "backups", "files", encrypted=True)
    assert "notes.txt" in tar_members(decode(stored, KEY, gpg_home))
    assert list(work.iterdir()) == []


def test_secrets_never_appear_in_argv_logs_or_output(
    pg: PostgresServer,
    redis_auth: RedisServer,
    rendered_scripts: Path,
    backup_env: MakeEnv,
    tmp_path: Path,
) -> None:
    strace = shutil.which("strace") or "/usr/bin/strace"
    if not Path(strace).exists():
        pytest.skip("strace is not installed; it is needed to see the argv of every exec")
    assert redis_auth.password is not None
    secrets = {"POSTGRES_PASSWORD": pg.password, "REDIS_PASSWORD": redis_auth.password}
    secrets["ENCRYPTION_KEY"] = KEY
    for value in secrets.values():
        assert all(c in value for c in " '\"$\\`!;&"), "the secrets must be hostile"
    env = backup_env(tmp_path, encryption_key=KEY, redis=redis_auth)
    trace = tmp_path / "execve.trace"

    result = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=execve", "-s", "65536", "-o", str(trace),
         shutil.which("bash") or "/bin/bash", str(rendered_scripts / BACKUP), "full"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip

    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    backups = tmp_path / "backups"
    for kind in TYPES:
        only_backup(backups, kind, encrypted=True)
    traced = trace.read_text(errors="replace")
    for tool in ("pg_dump", "redis-cli", "gpg", "tar"):
        assert re.search(rf'execve\("[^"]*/{re.escape(tool)}"', traced), f"{tool} not traced"
    log = (backups / "backup.log").read_text()
    for name, value in secrets.items():
        for form in {value, strace_escaped(value)}:
            assert form not in traced, f"{name} appears in an exec argv"
            assert form not in log, f"{name} appears in backup.log"
            assert form not in result.stdout, f"{name} appears on stdout"
            assert form not in result.stderr, f"{name} appears on stderr"


# ----------------------------------------------------------------------------- list and cleanup


def test_list_shows_backups_newest_first_with_size_encryption_and_totals(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    backups = tmp_path / "backups"
    env = backup_env(tmp_path)
    run_ok(run_script, BACKUP, "full", env=env)
    run_ok(run_script, BACKUP, "files", env={**env, "ENCRYPTION_KEY": KEY})  # a later second

    out = run_ok(run_script, BACKUP, "list", env=env).stdout

    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "CREATED", "SIZE", "ENCRYPTED", "FILE"]
    rows = [LIST_ROW.fullmatch(line) for line in lines[1:-1]]
    assert all(rows), lines
    newest = only_backup(backups, "files", encrypted=True)
    older = [
        only_backup(backups, kind, encrypted=False) for kind in ("files", "postgresql", "redis")
    ]
    expected = []
    for path in [newest, *older]:
        kind, day, clock = name_parts(path.name)
        created = f"{day[:4]}-{day[4:6]}-{day[6:]} {clock[:2]}:{clock[2:4]}:{clock[4:]}"
        encrypted = "yes" if path.name.endswith(".gpg") else "no"
        expected.append((kind, created, human_size(path.stat().st_size), encrypted, path.name))
    assert [row.group("type", "created", "size", "encrypted", "name") for row in rows if row] == (
        expected
    )
    total = human_size(sum(p.stat().st_size for p in [newest, *older]))
    assert re.fullmatch(
        rf"4 backup\(s\) \(postgresql 1, redis 1, files 2\), {re.escape(total)} in all; "
        rf"\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free in {re.escape(str(backups))}",
        lines[-1],
    ), lines[-1]


def test_list_of_an_empty_folder_says_there_are_no_backups(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    out = run_ok(run_script, BACKUP, "list", env=env).stdout
    lines = out.splitlines()
    assert lines[0] == f"No backups in {tmp_path / 'backups'}."
    assert lines[-1].startswith("0 backup(s) (postgresql 0, redis 0, files 0), 0 B in all; ")


@dataclass
class CleanupScene:
    """A BACKUP_DIR full of real backups under old names, and what cleanup must do to it."""

    env: dict[str, str]
    backups: Path
    doomed: dict[str, str]  # name -> the reason cleanup must give
    kept: set[str]


@pytest.fixture
def cleanup_scene(backup_env: MakeEnv, run_script: RunScript, tmp_path: Path) -> CleanupScene:
    """RETENTION 90 days, KEEP_MIN 2; postgresql, redis and files backups of many ages, plus
    foreign files, stale partials, orphan sidecars and rotated logs."""
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="90", KEEP_MIN="2")
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "full", env=env)
    real = {kind: only_backup(backups, kind, encrypted=False) for kind in TYPES}
    doomed: dict[str, str] = {}
    kept: set[str] = set()
    for kind in TYPES:
        kept |= with_sidecars(real[kind].name)

    def add(kind: str, days: int, *, deleted: bool) -> None:
        name = restamped_copy(real[kind], stamp(days)).name
        if deleted:
            doomed[name] = (
                f"{days} days old, older than BACKUP_RETENTION_DAYS=90 and not among the "
                "newest KEEP_MIN=2"
            )
            for sidecar in (".sha256", ".manifest.json"):
                doomed[name + sidecar] = f"sidecar of {name}"
        else:
            kept.update(with_sidecars(name))

    # postgresql: newest two kept by KEEP_MIN, a 30-day one kept by age, older ones deleted
    add("postgresql", 10, deleted=False)
    add("postgresql", 30, deleted=False)
    add("postgresql", 100, deleted=True)
    add("postgresql", 200, deleted=True)
    # redis: a 120-day one is old but among the newest KEEP_MIN=2, so it stays
    add("redis", 120, deleted=False)
    add("redis", 400, deleted=True)
    # files: only the real one

    foreign = {
        "notes.txt": b"remember to rotate the tapes\n",
        "postgresql_backup_latest.sql.gz": real["postgresql"].read_bytes(),
        "postgresql_backup_20000101_000000.sql.gz.bak": b"old copy",
        "redis_backup_20000101_000000.rdb": b"REDIS0009 raw",
        "Files_backup_20000101_000000.tar.gz": b"wrong case",
        "notes.partial": b"someone else's partial",
        "backup.log.old": b"kept by hand\n",
    }
    old = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    for name, data in foreign.items():
        (backups / name).write_bytes(data)
        os.utime(backups / name, (old, old))
    kept |= set(foreign)

    stale = {
        f"postgresql_backup_{stamp(1)}.sql.gz.partial": "stale partial file of an interrupted run",
        f"redis_backup_{stamp(1)}.rdb.partial": "stale partial file of an interrupted run",
        f"files_backup_{stamp(2)}.tar.gz.gpg.partial": "stale partial file of an interrupted run",
    }
    orphans = {
        f"files_backup_{stamp(3)}.tar.gz.sha256": "sidecar of a backup that no longer exists",
        f"redis_backup_{stamp(3)}.rdb.gz.gpg.manifest.json": (
            "sidecar of a backup that no longer exists"
        ),
    }
    day = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y%m%d")
    logs = {
        f"backup.log.{day}": "log older than 7 days",
        f"cron.log.{(datetime.now(UTC) - timedelta(days=30)).strftime('%Y%m%d')}": (
            "log older than 7 days"
        ),
    }
    for name in [*stale, *orphans, *logs]:
        (backups / name).write_bytes(b"x")
    doomed |= stale | orphans | logs
    recent_log = f"backup.log.{(datetime.now(UTC) - timedelta(days=2)).strftime('%Y%m%d')}"
    (backups / recent_log).write_text("two days ago\n")
    kept.add(recent_log)
    assert set(folder_state(backups)) == kept | set(doomed)
    return CleanupScene(env=env, backups=backups, doomed=doomed, kept=kept)


def test_cleanup_deletes_only_expired_backups_partials_orphans_and_old_logs(
    cleanup_scene: CleanupScene, run_script: RunScript
) -> None:
    before = folder_state(cleanup_scene.backups)

    out = run_ok(run_script, BACKUP, "cleanup", env=cleanup_scene.env).stdout

    after = folder_state(cleanup_scene.backups)
    assert set(after) == cleanup_scene.kept
    assert all(after[name] == before[name] for name in after), "a kept file was changed"
    for name, reason in cleanup_scene.doomed.items():
        assert f"deleted {name}: {reason}" in out
    assert "would delete" not in out


def test_cleanup_dry_run_deletes_nothing_and_says_what_it_would_delete_and_why(
    cleanup_scene: CleanupScene, run_script: RunScript
) -> None:
    before = folder_state(cleanup_scene.backups)

    out = run_ok(run_script, BACKUP, "cleanup", "--dry-run", env=cleanup_scene.env).stdout

    assert folder_state(cleanup_scene.backups) == before
    said = set(re.findall(r"would delete (\S+): ", out))
    for name, reason in cleanup_scene.doomed.items():
        if name.endswith((".sha256", ".manifest.json")) and "no longer exists" not in reason:
            continue  # sidecars of backups that still exist in a dry run
        assert f"would delete {name}: {reason}" in out
    assert not said & cleanup_scene.kept
    assert "deleted " not in out


@pytest.mark.parametrize(
    ("ages", "survivor"),
    [
        pytest.param([200, 300], 200, id="two-old-keeps-the-newer"),
        pytest.param([365], 365, id="one-old-is-kept"),
    ],
)
def test_cleanup_never_deletes_the_last_backup_of_a_type_even_when_all_are_old(
    ages: list[int],
    survivor: int,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="1")
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "files", env=env)
    real = only_backup(backups, "files", encrypted=False)
    copies = {days: restamped_copy(real, stamp(days)).name for days in ages}
    for path in (real, *(real.with_name(real.name + s) for s in (".sha256", ".manifest.json"))):
        path.unlink()

    run_ok(run_script, BACKUP, "cleanup", env=env)

    assert set(folder_state(backups)) == with_sidecars(copies[survivor])
