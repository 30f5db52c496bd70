"""Shared by the restore_script.sh tests: datasets that stress fidelity, and ways to compare.

Nothing here is mocked: the datasets go into the real throwaway servers of the fixtures, and the
comparisons read them back from those servers (``pg_dump``, ``DEBUG DIGEST``, the file tree).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pytest

from devtools.sandbox import (
    PG_SUPERUSER,
    PostgresServer,
    RedisServer,
    SandboxError,
    free_port,
    sql_ident,
    sql_literal,
)

if TYPE_CHECKING:
    from tests.integration.conftest import RunScript

RESTORE = "restore_script.sh"
BACKUP = "backup_script.sh"
# hostile on purpose, like the fixtures' passwords: the key must survive the shell untouched
KEY = "gym key 'q\" $k \\ `e` ! ; & end"
ENCRYPTION = [pytest.param(None, id="plain"), pytest.param(KEY, id="encrypted")]
EXTENSIONS = {"postgresql": "sql", "redis": "rdb", "files": "tar"}


# ------------------------------------------------------------------------------ running


def run_ok(
    run_script: RunScript, script: str, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a script and insist on exit 0 (showing its output when it is not)."""
    result = run_script(script, *args, env=env, timeout=timeout)
    assert result.returncode == 0, (
        f"{script} {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def only_backup(backup_dir: Path, kind: str, *, encrypted: bool) -> Path:
    """The one backup of ``kind`` in ``backup_dir`` (by its documented name)."""
    suffix = ".gpg" if encrypted else ""
    found = sorted(backup_dir.glob(f"{kind}_backup_*_*.{EXTENSIONS[kind]}.gz{suffix}"))
    assert len(found) == 1, f"expected one {kind} backup, found {[p.name for p in found]}"
    return found[0]


def backups_of(backup_dir: Path, kind: str) -> list[Path]:
    """Every backup of ``kind`` in ``backup_dir``, encrypted or not (safety backups included)."""
    return sorted(
        p
        for p in backup_dir.glob(f"{kind}_backup_*_*.{EXTENSIONS[kind]}.gz*")
        if p.name.endswith((".gz", ".gz.gpg"))
    )


def stamp(days_ago: float) -> str:
    """A backup-name timestamp ``days_ago`` days before now (negative: ahead); runs use TZ=UTC."""
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y%m%d_%H%M%S")


def with_sidecars(name: str) -> set[str]:
    """A backup's name and its two sidecars' names."""
    return {name, f"{name}.sha256", f"{name}.manifest.json"}


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` and its bytes, except what the runs keep for themselves: the log
    and the hidden bookkeeping files (the lock, the last-success marker)."""
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and p.name != "backup.log" and not p.name.startswith(".")
    }


def write_sidecar(backup: Path) -> None:
    """Write ``backup.sha256`` for the bytes the file holds now (as backup_script.sh does)."""
    digest = hashlib.sha256(backup.read_bytes()).hexdigest()
    Path(f"{backup}.sha256").write_text(f"{digest}  {backup.name}\n")


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def copy_backup(backup: Path, folder: Path, *, sidecars: bool = True) -> Path:
    """Copy a backup (and its sidecars) into ``folder`` under the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / backup.name
    shutil.copyfile(backup, copy)
    if sidecars:
        for suffix in (".sha256", ".manifest.json"):
            sidecar = Path(f"{backup}{suffix}")
            if sidecar.exists():
                shutil.copyfile(sidecar, f"{copy}{suffix}")
    return copy


@contextlib.contextmanager
def holding_the_lock(backup_dir: Path, who: str) -> Iterator[None]:
    """For the block, hold ``backup_dir``'s lock as a running run does: ``flock`` on
    ``.gym-backup.lock``, which says ``who`` holds it."""
    with (backup_dir / ".gym-backup.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(who + "\n")
        lock.flush()
        yield


def processes_in(folder: Path) -> list[str]:
    """Processes whose working folder is in ``folder`` (redis-server changes into its ``dir``)."""
    found = []
    prefix = str(folder)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = str((proc / "cwd").readlink())
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            found.append(f"{proc.name}: {cmdline.strip()} (in {cwd})")
    return found


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """The processes below ``pid`` (children, their children...), each with its argv."""
    parents: dict[int, int] = {}
    argvs: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat_line = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the command name in parentheses may hold spaces: the fields after it are fixed
        parents[int(proc.name)] = int(stat_line.rsplit(")", 1)[1].split()[1])
        argvs[int(proc.name)] = [a.decode(errors="replace") for a in argv if a]
    found: list[tuple[int, list[str]]] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and argvs.get(child):
                found.append((child, argvs[child]))
                frontier.append(child)
    return found


# ------------------------------------------------------------------------------ PostgreSQL

# What a database owner (not a superuser) can restore. Left out on purpose, because restoring
# them needs a superuser: untrusted extensions (CREATE EXTENSION postgres_fdw, plpython3u),
# COMMENT ON EXTENSION of an extension the restoring role does not own, event triggers, and
# ownership by other roles (the --no-owner test covers that). citext is a trusted extension:
# the database owner may create it, so it stays in.
FIDELITY_SQL = r"""
CREATE SCHEMA gym;
COMMENT ON SCHEMA gym IS 'objetos del gimnasio, ñandú';
CREATE EXTENSION citext SCHEMA gym;
CREATE TYPE gym.mood AS ENUM ('sad', 'ok', 'happy', 'ñandú');
CREATE DOMAIN gym.positive_amount AS numeric(12, 2) CHECK (VALUE > 0);
CREATE TYPE gym.slot AS (starts timestamptz, room text);
CREATE SEQUENCE gym.receipt_no START 1000 INCREMENT 7;
SELECT nextval('gym.receipt_no') FROM generate_series(1, 5);
CREATE SEQUENCE gym.unused_seq;
CREATE TABLE gym.kitchen_sink (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ints int[],
    grid text[][],
    js json,
    jsb jsonb,
    blob bytea,
    exact numeric(40, 20),
    amount gym.positive_amount,
    at timestamptz,
    day date,
    span interval,
    feeling gym.mood,
    booked tstzrange,
    ages int4range,
    uid uuid,
    addr inet,
    flags bit varying(16),
    place point,
    slot gym.slot,
    words tsvector,
    email gym.citext,
    note text,
    CONSTRAINT note_not_blank CHECK (note <> ''),
    CONSTRAINT no_double_booking EXCLUDE USING gist (booked WITH &&)
);
COMMENT ON TABLE gym.kitchen_sink IS 'every column type';
COMMENT ON COLUMN gym.kitchen_sink.blob IS 'bytes with zeros';
INSERT INTO gym.kitchen_sink (ints, grid, js, jsb, blob, exact, amount, at, day, span, feeling,
                              booked, ages, uid, addr, flags, place, slot, words, email, note)
VALUES
    ('{1,NULL,-3}', '{{a,"b c"},{"d\"e",NULL}}', '{"b": 1, "a": [true, null]}',
     '{"nested": {"ñ": "日本語", "n": 1.50}}', '\x00ff00000001fe00'::bytea,
     '12345678901234567890.12345678901234567890', 15000.50, '2024-02-29 23:59:59.999999+00',
     '2024-02-29', '1 year 2 mons 3 days 04:05:06.789', 'ñandú',
     '[2024-01-01 10:00+00,2024-01-01 11:00+00)', '[18,65)',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', B'1011', '(1.5,-2)',
     ROW('2024-01-01 10:00+00', 'sala 1'), to_tsvector('simple', 'José Núñez corre'),
     'Ana@Gym.Example', E'José Núñez 🏋 \u05e9\u05dc\u05d5\u05dd e\u0301 tab\there'),
    (NULL, NULL, 'null', '[]', '\x00'::bytea, 'NaN', 0.01, '-infinity', 'infinity', '-1 day',
     'sad', '[2024-01-02 10:00+00,)', 'empty', NULL, '::1', B'', NULL, NULL, NULL, NULL,
     E'line1\nline2\\ and \r a carriage return'),
    ('{}', '{}', '{}', '{}', ''::bytea, -0.00000000000000000001, 99999999.99,
     '1999-12-31 21:00:00-03', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, 'O''Brien "quoted" \N not null');
CREATE TABLE gym.members (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    level gym.mood NOT NULL DEFAULT 'ok',
    joined date NOT NULL DEFAULT '2024-01-01'
);
CREATE INDEX members_lower_name ON gym.members (lower(name));
CREATE INDEX members_recent ON gym.members (joined) WHERE joined > '2023-01-01';
INSERT INTO gym.members (email, name, level)
SELECT 'member' || i || '@gym.example', 'Socio ' || i || ' Núñez',
       (ARRAY['sad', 'ok', 'happy', 'ñandú'])[1 + i % 4]::gym.mood
FROM generate_series(1, 300) AS i;
CREATE TABLE gym.payments (
    receipt bigint PRIMARY KEY DEFAULT nextval('gym.receipt_no'),
    member_id int NOT NULL REFERENCES gym.members (id) ON DELETE CASCADE,
    amount gym.positive_amount NOT NULL,
    paid_at timestamptz NOT NULL
);
CREATE INDEX payments_member ON gym.payments (member_id);
INSERT INTO gym.payments (member_id, amount, paid_at)
SELECT 1 + i % 300, 1000 + i, '2024-01-01 00:00+00'::timestamptz + i * interval '1 hour'
FROM generate_series(1, 500) AS i;
CREATE TABLE gym.checkins (member_id int NOT NULL, at timestamptz NOT NULL, door text)
    PARTITION BY RANGE (at);
CREATE TABLE gym.checkins_2024 PARTITION OF gym.checkins
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE gym.checkins_2025 PARTITION OF gym.checkins
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX checkins_at ON gym.checkins (at);
INSERT INTO gym.checkins
SELECT 1 + i % 300, '2024-06-01 00:00+00'::timestamptz + i * interval '1 day',
       CASE WHEN i % 2 = 0 THEN 'norte' ELSE 'sur' END
FROM generate_series(1, 400) AS i;
CREATE VIEW gym.member_totals AS
    SELECT m.id, m.name, sum(p.amount) AS total
    FROM gym.members m JOIN gym.payments p ON p.member_id = m.id GROUP BY m.id, m.name;
COMMENT ON VIEW gym.member_totals IS 'totals per member';
CREATE MATERIALIZED VIEW gym.door_counts AS
    SELECT door, count(*) AS n FROM gym.checkins GROUP BY door;
CREATE UNIQUE INDEX door_counts_door ON gym.door_counts (door);
CREATE TABLE gym.audit (
    id bigserial PRIMARY KEY,
    what text NOT NULL,
    at timestamptz NOT NULL DEFAULT '2024-01-01 00:00+00'
);
CREATE FUNCTION gym.log_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gym.audit (what) VALUES ('payment ' || NEW.receipt || ' of ' || NEW.amount);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION gym.log_payment() IS 'audit trail, ñ';
CREATE TRIGGER payments_audit AFTER INSERT ON gym.payments
    FOR EACH ROW EXECUTE FUNCTION gym.log_payment();
CREATE FUNCTION gym.add(a integer, b integer) RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
INSERT INTO gym.payments (member_id, amount, paid_at) VALUES (7, 123.45, '2024-05-05 05:05+00');
ALTER TABLE gym.members ENABLE ROW LEVEL SECURITY;
CREATE POLICY members_own ON gym.members FOR SELECT USING (email = current_user);
SELECT lo_from_bytea(0, '\x00010203ff00fe00'::bytea);
CREATE TABLE public.plain_table (k text PRIMARY KEY, v text);
INSERT INTO public.plain_table VALUES ('clave', 'valor ñ'), ('tab', E'a\tb');
"""

# Rows in the tables that hold them (a partitioned table's rows are in its partitions).
FIDELITY_TABLES = 8  # pg_tables: the partitioned parent and its two partitions count
FIDELITY_ROWS = 3 + 300 + 501 + 400 + 1 + 2


def fidelity_grants(reader: str) -> str:
    """Grants of the fidelity objects to a second role (run as their owner)."""
    role = sql_ident(reader)
    return f"""
GRANT USAGE ON SCHEMA gym TO {role};
GRANT SELECT ON gym.members, gym.member_totals, gym.door_counts TO {role};
GRANT SELECT (receipt, amount), UPDATE (amount) ON gym.payments TO {role};
GRANT USAGE ON SEQUENCE gym.receipt_no TO {role};
GRANT EXECUTE ON FUNCTION gym.add(integer, integer) TO {role};
REVOKE EXECUTE ON FUNCTION gym.log_payment() FROM PUBLIC;
"""  # noqa: S608 - the role is quoted by sql_ident


def load_fidelity(pg: PostgresServer, db: str, reader: str) -> None:
    """The fidelity dataset in ``db``, created by the application role (not a superuser)."""
    pg.psql(FIDELITY_SQL + fidelity_grants(reader), db=db, superuser=False)


def dump_without_owners(pg: PostgresServer, db: str) -> str:
    """``pg_dump --no-owner --no-privileges`` of ``db`` as superuser (restrict keys removed)."""
    out = subprocess.run(
        [
            str(pg.bindir / "pg_dump"),
            "--no-owner",
            "--no-privileges",
            "-h",
            str(pg.socket_dir),
            "-p",
            str(pg.port),
            "-U",
            PG_SUPERUSER,
            "-d",
            db,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
    ).stdout
    return "".join(ln for ln in out.splitlines(keepends=True) if not ln.startswith("\\"))


# Billing data with a table big enough that the decoders are still running while the restore
# waits on a lock (the pipes between them hold far less than the dump).
PAYMENTS_SQL = """
CREATE SCHEMA billing;
CREATE TABLE billing.payments (id int PRIMARY KEY, member int NOT NULL, amount numeric(10, 2),
                               note text);
INSERT INTO billing.payments
SELECT i, i % 500, i * 1.5, 'pago ' || i || ' ñandú ' || md5(i::text)
FROM generate_series(1, 100000) AS i;
CREATE TABLE billing.summary (member int PRIMARY KEY, total numeric);
INSERT INTO billing.summary SELECT member, sum(amount) FROM billing.payments GROUP BY member;
"""
CHANGE = (
    "UPDATE billing.payments SET note = 'cambiado' WHERE id <= 100; DELETE FROM billing.summary;"
)


def hold_lock(
    pg: PostgresServer, db: str, table: str, mode: str = "ACCESS SHARE"
) -> subprocess.Popen[str]:
    """A superuser session that holds a lock on ``table`` until its stdin is closed (ACCESS
    SHARE blocks what would drop the table; ACCESS EXCLUSIVE blocks pg_dump too)."""
    session = subprocess.Popen(
        [
            str(pg.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(pg.socket_dir),
            "-p",
            str(pg.port),
            "-U",
            PG_SUPERUSER,
            "-d",
            db,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert session.stdin is not None
    session.stdin.write(f"BEGIN; LOCK TABLE {table} IN {mode} MODE;\n")
    session.stdin.flush()
    return session


def wait_for_blocked_restore(pg: PostgresServer, db: str, timeout: float = 60) -> None:
    """Until a session of the application role in ``db`` waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "  # noqa: S608
            f"AND datname = {sql_literal(db)} AND usename = {sql_literal(pg.user)}",
            "postgres",
        )
        if waiting != "0":
            return
        time.sleep(0.05)
    raise AssertionError("the restore never reached the lock")


def database_names(pg: PostgresServer) -> set[str]:
    return set(pg.psql("SELECT datname FROM pg_database", "postgres").splitlines())


@contextlib.contextmanager
def createdb_privilege(pg: PostgresServer, *, allowed: bool) -> Iterator[None]:
    """Give (or take) the application role CREATEDB for the block, then put it back as it was."""
    role = sql_ident(pg.user)
    before = pg.psql(
        f"SELECT rolcreatedb FROM pg_roles WHERE rolname = '{pg.user}'",  # noqa: S608 - fixed name
        "postgres",
    )
    pg.psql(f"ALTER ROLE {role} {'CREATEDB' if allowed else 'NOCREATEDB'}", "postgres")
    try:
        yield
    finally:
        pg.psql(f"ALTER ROLE {role} {'CREATEDB' if before == 't' else 'NOCREATEDB'}", "postgres")


# ------------------------------------------------------------------------------ Redis

Reply: TypeAlias = "str | int | bytes | list[Reply] | RespError | None"


class RespError(Exception):
    """An error reply of the server (``-ERR ...``, ``-READONLY ...``)."""

    @property
    def kind(self) -> str:
        return str(self).split(" ", 1)[0]


def _encode(args: Sequence[bytes | str]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


class Resp:
    """A minimal RESP2 client over one TCP connection: any bytes in, replies out."""

    def __init__(self, server: RedisServer, *, timeout: float = 30) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        if server.password is not None:
            self.call("AUTH", server.password)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> Reply:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise ConnectionError(f"unexpected reply {line!r}")

    def call(self, *args: bytes | str) -> Reply:
        """Send one command; an error reply raises :class:`RespError`."""
        self.sock.sendall(_encode(args))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[bytes | str]]) -> list[Reply]:
        """Send many commands at once; any error reply raises :class:`RespError`."""
        self.sock.sendall(b"".join(_encode(c) for c in commands))
        replies = [self._read() for _ in commands]
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies


DATASET_DBS = (0, 1, 5, 15)


def load_redis_dataset(server: RedisServer) -> None:
    """Replace the server's data: every type, binary values, TTLs, four logical databases."""
    big_hash = [x for i in range(300) for x in (f"field {i}".encode(), bytes([i % 256]) * 40)]
    with Resp(server) as r:
        r.call("FLUSHALL")
        r.pipeline(
            [
                ["SELECT", "0"],
                ["SET", "bin:zeros", b"\x00\x01\xff\xfe\x00" + bytes(range(256))],
                ["SET", b"bin:key \x00\xff", b"binary key name"],
                ["SET", "text:unicode", "José Núñez 🏋 日本語 שלום"],
                ["SET", "counter", "12345"],
                ["SET", "big:string", os.urandom(1024).hex() * 40],
                ["RPUSH", "list:small", "a", "", "c d", b"\x00"],
                ["RPUSH", "list:big", *[str(i) for i in range(2000)]],
                ["HSET", "hash:small", "name", "Ana", "plan", "premium", b"\xff", b"\x00"],
                ["HSET", "hash:big", *big_hash],
                ["SADD", "set:ints", "1", "2", "3", "-9", "1000000"],
                ["SADD", "set:strs", "yoga", "crossfit", "spinning", "ñandú"],
                ["SADD", "set:big", *[f"m{i}" for i in range(600)]],
                ["ZADD", "zset:small", "1.5", "ana", "-2", "bruno", "inf", "carla"],
                ["ZADD", "zset:big", *[x for i in range(300) for x in (str(i / 7), f"p{i}")]],
                ["XADD", "stream:checkins", "1700000000000-0", "member", "1", "door", "norte"],
                ["XADD", "stream:checkins", "1700000000001-0", "member", "2", "door", "sur"],
                ["XADD", "stream:checkins", "1700000000002-5", "member", "3", "foto", b"\x00\xff"],
                ["XGROUP", "CREATE", "stream:checkins", "staff", "0"],
                [
                    "XREADGROUP",
                    "GROUP",
                    "staff",
                    "ana",
                    "COUNT",
                    "2",
                    "STREAMS",
                    "stream:checkins",
                    ">",
                ],
                ["PFADD", "hll:visitors", "a", "b", "c", "d"],
                ["SETBIT", "bitmap:days", "1000", "1"],
                ["GEOADD", "geo:gyms", "-58.3816", "-34.6037", "centro"],
                ["SET", "session:abc", "token", "EX", "3600"],
                ["PEXPIRE", "hash:small", "7200000"],
                ["EXPIRE", "list:small", "86400"],
                ["SELECT", "1"],
                ["SET", "db1:key", "in db one"],
                ["SET", "db1:ttl", "expiring", "PX", "5000000"],
                ["LPUSH", "db1:jobs", "job-1", "job-2"],
                ["SELECT", "5"],
                ["HSET", "db5:hash", "a", "1", "b", "2"],
                ["EXPIRE", "db5:hash", "9000"],
                ["ZADD", "db5:rank", "10", "x", "20", "y"],
                ["SELECT", "15"],
                ["SET", "db15:last", "the last logical database"],
                ["SELECT", "0"],
            ]
        )


@dataclass(frozen=True)
class RedisState:
    """What a restore must bring back: the dataset digest, the keys and their TTLs."""

    digest: str
    keys: dict[int, int]  # db -> number of keys
    ttls: dict[tuple[int, bytes], int]  # (db, key) -> PTTL in ms, -1 without one


def load_random_values(server: RedisServer, megabytes: int) -> None:
    """Replace the server's data with ``megabytes`` MB of incompressible values (1 kB each):
    enough for a snapshot to take a while to compress, encrypt or replicate."""
    server.cli("FLUSHALL")
    for start in range(0, megabytes * 1024, 4096):
        server.pipe(
            [
                ["SET", f"blob:{i}", os.urandom(512).hex()]
                for i in range(start, min(start + 4096, megabytes * 1024))
            ]
        )


RDB_MAGIC = b"REDIS00"


class RdbWatch(threading.Thread):
    """Watches folders (and what is below them) while a script runs: every file that starts
    with an RDB header is plaintext of a Redis dataset; ``seen`` maps it to the mode of the
    first folder below the watched one that holds it (the script's private WORK_DIR)."""

    def __init__(self, *folders: Path) -> None:
        super().__init__(daemon=True)
        self.folders = folders
        self.halt = threading.Event()
        self.seen: dict[Path, int] = {}

    def run(self) -> None:
        while not self.halt.is_set():
            for folder in self.folders:
                for path in rdb_files(folder, head_only=True):
                    top = folder / path.relative_to(folder).parts[0]
                    with contextlib.suppress(OSError):
                        self.seen.setdefault(path, stat.S_IMODE(top.stat().st_mode))
            time.sleep(0.005)

    def __enter__(self) -> RdbWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=30)


def rdb_files(folder: Path, *, head_only: bool = False) -> list[Path]:
    """The files below ``folder`` that start with an RDB header or, unless ``head_only``, hold
    one anywhere (an RDB in clear inside any other file)."""
    found = []
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            try:
                # only regular files: reading a script's FIFO would steal its data
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue
                with path.open("rb") as handle:
                    data = handle.read(len(RDB_MAGIC)) if head_only else handle.read()
            except OSError:  # gone meanwhile
                continue
            if RDB_MAGIC in data:
                found.append(path)
    return found


def redis_state(server: RedisServer) -> RedisState:
    ttls: dict[tuple[int, bytes], int] = {}
    keys: dict[int, int] = {}
    with Resp(server) as r:
        digest = r.call("DEBUG", "DIGEST")
        for db in range(16):
            r.call("SELECT", str(db))
            names = r.call("KEYS", "*")
            assert isinstance(names, list)
            if names:
                keys[db] = len(names)
            for name in names:
                assert isinstance(name, bytes)
                pttl = r.call("PTTL", name)
                assert isinstance(pttl, int)
                ttls[(db, name)] = pttl
    assert isinstance(digest, str)
    return RedisState(digest=digest, keys=keys, ttls=ttls)


def assert_same_redis(after: RedisState, before: RedisState, *, elapsed_ms: int) -> None:
    """Same digest and keys; every TTL kept (less the time that passed, within a tolerance)."""
    assert after.digest == before.digest
    assert after.keys == before.keys
    assert after.ttls.keys() == before.ttls.keys()
    for key, old in before.ttls.items():
        new = after.ttls[key]
        if old == -1:
            assert new == -1, key
        else:
            assert old - elapsed_ms - 2000 <= new <= old, (key, old, new)


def redis_conf(
    port: int,
    data_dir: Path,
    *,
    password: str | None = None,
    appendonly: bool = False,
    extra: Sequence[str] = (),
) -> str:
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        "daemonize no",
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
        f'dir "{data_dir}"',
        "dbfilename dump.rdb",
        "enable-debug-command local",
        "repl-diskless-sync-delay 0",
        f'logfile "{data_dir}/server.log"',
        "loglevel notice",
        *extra,
    ]
    if password is not None:
        hexed = "".join(f"\\x{b:02x}" for b in password.encode())
        lines.append(f'requirepass "{hexed}"')
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def redis_on(
    data_dir: Path,
    *,
    password: str | None = None,
    appendonly: bool = False,
    extra: Sequence[str] = (),
) -> Iterator[RedisServer]:
    """A redis-server on ``data_dir`` as it is (it loads what is there), stopped at the end.

    Unlike :func:`devtools.sandbox.start_redis`, the folder is neither made nor removed, and the
    configuration can turn on ``appendonly`` or add lines (``rename-command CONFIG ""``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "test-redis.conf"
    port = free_port()
    conf.write_text(
        redis_conf(port, data_dir, password=password, appendonly=appendonly, extra=extra)
    )
    conf.chmod(0o600)
    proc = subprocess.Popen(
        ["redis-server", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=data_dir,
    )
    server = RedisServer(
        host="127.0.0.1",
        port=port,
        password=password,
        dir=data_dir,
        process=proc,
        log_file=data_dir / "server.log",
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SandboxError(f"redis-server exited {proc.returncode}:\n{server.log_tail()}")
            try:
                if server.cli("PING") == "PONG":
                    break
            except SandboxError:
                pass
            if time.monotonic() > deadline:
                raise SandboxError(f"redis-server did not start:\n{server.log_tail()}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def restarted_when_stopped(server: RedisServer) -> Iterator[threading.Event]:
    """As Docker's restart policy does: when the process of ``server`` (a :func:`redis_on` one)
    exits, start redis-server again, once, with the same configuration (folder, port, password):
    it loads what the folder holds. The event is set once the new process answers PING."""
    halt = threading.Event()
    restarted = threading.Event()

    def watch() -> None:
        old = server.process
        assert old is not None
        while old.poll() is None:
            if halt.wait(0.02):
                return
        server.process = subprocess.Popen(
            ["redis-server", str(server.dir / "test-redis.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=server.dir,
        )
        while not halt.is_set():
            with contextlib.suppress(SandboxError):
                if server.cli("PING") == "PONG":
                    restarted.set()
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield restarted
    finally:
        halt.set()
        watcher.join(timeout=30)


@contextlib.contextmanager
def private_redis(
    parent: Path, *, password: str | None = None, appendonly: bool = False
) -> Iterator[RedisServer]:
    """A new empty redis-server of its own (restores that stop or reconfigure a server use one)."""
    parent.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=parent))
    try:
        with redis_on(data_dir, password=password, appendonly=appendonly) as server:
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_aof_rewrite(server: RedisServer) -> None:
    deadline = time.monotonic() + 30
    while "aof_rewrite_in_progress:0" not in server.cli("INFO", "persistence"):
        assert time.monotonic() < deadline, "the AOF rewrite did not finish"
        time.sleep(0.05)


# ------------------------------------------------------------------------------ files

Entry: TypeAlias = tuple[str, int, bytes | str, int, int, int, int]


def tree_state(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (not ``root`` itself) by relative path: type, mode, content or
    link target, owner, group, modification time (seconds: what tar keeps) and, for files, the
    number of hard links; links are never followed."""
    entries: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", 0, str(path.readlink()), st.st_uid, st.st_gid, 0, 1)
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", mode, b"", st.st_uid, st.st_gid, int(st.st_mtime), 1)
            else:
                entries[rel] = (
                    "file",
                    mode,
                    path.read_bytes(),
                    st.st_uid,
                    st.st_gid,
                    int(st.st_mtime),
                    st.st_nlink,
                )
    return entries


def tar_members(tar_bytes: bytes) -> set[str]:
    """The entries of a decoded files backup, as real tar lists them: relative, no root."""
    proc = subprocess.run(
        ["tar", "-tf", "-"], input=tar_bytes, capture_output=True, check=True, timeout=60
    )
    names = {line.removeprefix("./").rstrip("/") for line in proc.stdout.decode().splitlines()}
    return names - {""}


def make_uploads(root: Path) -> Path:
    """Uploads that stress a files restore: unicode and spaced names, nested and empty folders,
    links inside the tree (to a file, to a folder, dangling), a hard link, varied modes, owners
    and times."""
    files: dict[str, tuple[bytes, int]] = {
        "Fotos del gimnasio/año 2024/mañana ñandú.jpg": (
            b"\xff\xd8\xff\xe0" + bytes(range(256)),
            0o644,
        ),
        "Fotos del gimnasio/año 2024/socio 0002.jpg": (b"\x00" * 4096, 0o640),
        "contratos/contrato #1 (firmado).pdf": (b"%PDF-1.4 privado", 0o600),
        "scripts/run me.sh": (b"#!/bin/sh\necho hola\n", 0o755),
        "solo lectura.txt": (b"read only\n", 0o444),
        "vacío.txt": (b"", 0o604),
        "a/b/c/d/profundo.txt": (b"deep\n", 0o644),
        "日本語/ファイル.txt": ("こんにちは\n".encode(), 0o644),
        "nombre con\ttab y 'comillas'.txt": (b"odd name\n", 0o644),
    }
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (root / "carpeta vacía").mkdir()
    (root / "deep/empty nested").mkdir(parents=True)
    (root / "privado").mkdir(mode=0o700)
    (root / "privado/llave.txt").write_bytes(b"secret-ish")
    (root / "privado/llave.txt").chmod(0o600)
    (root / "compartido").mkdir()
    (root / "compartido").chmod(0o2775)
    (root / "última foto.jpg").symlink_to("Fotos del gimnasio/año 2024/mañana ñandú.jpg")
    (root / "a/b/arriba").symlink_to("../../contratos")
    (root / "roto").symlink_to("no existe todavía")
    (root / "enlace duro.jpg").hardlink_to(root / "Fotos del gimnasio/año 2024/socio 0002.jpg")
    if os.geteuid() == 0:
        os.chown(root / "contratos/contrato #1 (firmado).pdf", 65534, 65534)
        os.chown(root / "privado", 65534, 65534)
    old = 1_600_000_000
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            os.utime(path, (old, old))
    return root


def evil_files_backup(backup_dir: Path, members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A files backup holding exactly ``members`` (built with tarfile, gzipped), with a correct
    .sha256 sidecar: only the content checks of the restore can refuse it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    backup_dir.mkdir(parents=True, exist_ok=True)
    path = backup_dir / "files_backup_20240101_000000.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    write_sidecar(path)
    return path


def tar_file(name: str, data: bytes = b"evil\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def tar_dir(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, b""


def tar_symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def script_env(
    base: Path,
    pg: PostgresServer,
    redis: RedisServer,
    files_dir: Path,
    *,
    encryption_key: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of one script run (the run sees exactly this, nothing else).

    BACKUP_DIR is ``base/backups`` (created), HOME ``base/home`` (gpg writes there), TZ is UTC;
    ``extra`` is applied last and overrides anything. conftest's ``backup_env`` builds on it.
    """
    home = base / "home"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    backups = base / "backups"
    backups.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "BACKUP_DIR": str(backups),
        "FILES_DIR": str(files_dir),
        **pg.env(),
        **redis.env(),
    }
    if encryption_key is not None:
        env["ENCRYPTION_KEY"] = encryption_key
    env.update(extra)
    return env


def run_direct(
    scripts: Path, script: str, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a rendered script like conftest's ``run_script`` (for fixtures wider than one test)."""
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(scripts / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Sources:
    """A database, a Redis and a folder with a little data, and good backups of each (by
    ``backup_script.sh full``, once plain and once encrypted with :data:`KEY`)."""

    db: str
    redis: RedisServer
    files: Path
    backups: dict[tuple[str, bool], Path]  # (type, encrypted) -> backup


@contextlib.contextmanager
def backed_up_sources(pg: PostgresServer, scripts: Path, base: Path) -> Iterator[Sources]:
    db = f"rf_{uuid.uuid4().hex[:12]}"
    pg.createdb(db)
    pg.psql(
        "CREATE TABLE members (id int PRIMARY KEY, name text);"
        "INSERT INTO members SELECT i, 'Socio ' || i || ' ñ' FROM generate_series(1, 2000) i;",
        db,
        superuser=False,
    )
    files = base / "uploads"
    for rel in ("a/uno.txt", "a/b/dos.txt", "tres con espacio.txt"):
        (files / rel).parent.mkdir(parents=True, exist_ok=True)
        (files / rel).write_bytes(os.urandom(30000))
    (files / "vacía").mkdir()
    try:
        with private_redis(base / "redis") as redis:
            redis.pipe([["SET", f"key:{i}", f"value {i} " * 20] for i in range(3000)])
            redis.pipe([["HSET", "h", "a", "1"], ["EXPIRE", "h", "3600"]], db=2)
            backups: dict[tuple[str, bool], Path] = {}
            for key in (None, KEY):
                run_base = base / ("encrypted" if key else "plain")
                env = script_env(run_base, pg, redis, files, encryption_key=key, POSTGRES_DB=db)
                result = run_direct(scripts, BACKUP, "full", env=env)
                assert result.returncode == 0, result.stdout + result.stderr
                for kind in EXTENSIONS:
                    backups[(kind, key is not None)] = only_backup(
                        run_base / "backups", kind, encrypted=key is not None
                    )
            yield Sources(db=db, redis=redis, files=files, backups=backups)
    finally:
        pg.dropdb(db)
