"""The benchmark's data, built at a given scale: a database, a Redis dataset, a folder of files.

``BENCH_SCALE`` is ``small`` (the default, a tenth of ``large``), ``large`` (about 1 GB of plain
dump, 1 M Redis keys and 500 MB of files) or a number, the fraction of ``large`` (``0.25``).
The data is like a gym's, and neither all air nor all noise for the compressors: pgbench's tables
(whose blank-padded rows compress very well), text-heavy events and jsonb profiles in PostgreSQL;
sessions, cached JSON with random tokens, leaderboards, activity lists and counters (some with a
TTL) in Redis; text receipts and CSV exports beside random "photos" (a third of the bytes) in the
files. Everything comes from a seeded generator, so two runs at one scale build the same data.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from devtools.sandbox import PostgresServer, RedisServer, redis_on, start_postgres

# What "large" holds; other scales are a fraction of it.
LARGE_PGBENCH = 40  # pgbench scale: 4 M accounts
LARGE_EVENTS = 3_500_000  # text-heavy rows
LARGE_PROFILES = 300_000  # jsonb rows; with the above, about 1 GB of plain dump
LARGE_REDIS_KEYS = 1_000_000
LARGE_FILES_MB = 500
NAMED_SCALES = {"small": 0.1, "large": 1.0}
# The second size at which memory is shown: this fraction of the main one.
SECOND_SIZE = 0.1
SEED = 20240601
# Production Redis waits this long (its default) before a diskless snapshot for a replica, which
# is what redis-cli --rdb is; the sandbox's servers do not wait.
REDIS_SYNC_DELAY = "repl-diskless-sync-delay 5"

WORDS = (
    "member",
    "check-in",
    "check-out",
    "locker",
    "towel",
    "class",
    "yoga",
    "spinning",
    "crossfit",
    "pilates",
    "trainer",
    "renewal",
    "monthly",
    "annual",
    "plan",
    "payment",
    "card",
    "cash",
    "transfer",
    "declined",
    "approved",
    "refund",
    "front",
    "desk",
    "reception",
    "morning",
    "evening",
    "weekend",
    "holiday",
    "pool",
    "sauna",
    "shower",
    "bench",
    "press",
    "squat",
    "deadlift",
    "treadmill",
    "rowing",
    "kettlebell",
    "dumbbell",
    "stretching",
    "cardio",
    "strength",
    "nutrition",
    "shake",
    "protein",
    "water",
    "bottle",
    "guest",
    "pass",
    "referral",
    "discount",
    "coupon",
    "visit",
    "late",
    "early",
    "cancelled",
    "waitlist",
    "booked",
    "attended",
    "missed",
    "injury",
    "note",
    "reminder",
    "email",
    "sms",
    "push",
    "Buenos",
    "Aires",
    "Palermo",
    "Belgrano",
)
EVENT_KINDS = ("check_in", "check_out", "payment", "class_booking", "class_cancel", "locker")


@dataclass(frozen=True)
class Scale:
    """How much data one run builds (see the module's docstring)."""

    name: str
    pgbench: int
    events: int
    profiles: int
    redis_keys: int
    files_mb: int

    @classmethod
    def of(cls, text: str) -> Scale:
        """``small``, ``large`` or a fraction of large such as ``0.25``."""
        fraction = NAMED_SCALES.get(text.strip().lower())
        if fraction is None:
            try:
                fraction = float(text)
            except ValueError:
                raise ValueError(
                    f"BENCH_SCALE={text!r}: use small, large or a fraction of large (0.25)"
                ) from None
            if not 0 < fraction <= 4:
                raise ValueError(f"BENCH_SCALE={text!r}: a fraction of large between 0 and 4")
        return cls.fraction_of_large(fraction, text.strip().lower())

    @classmethod
    def fraction_of_large(cls, fraction: float, name: str) -> Scale:
        return cls(
            name=name,
            pgbench=max(1, round(LARGE_PGBENCH * fraction)),
            events=max(1000, round(LARGE_EVENTS * fraction)),
            profiles=max(100, round(LARGE_PROFILES * fraction)),
            redis_keys=max(1000, round(LARGE_REDIS_KEYS * fraction)),
            files_mb=max(1, round(LARGE_FILES_MB * fraction)),
        )

    def smaller(self) -> Scale:
        """The second size: :data:`SECOND_SIZE` of this one."""
        return replace(
            self,
            name=f"{self.name} x {SECOND_SIZE:g}",
            pgbench=max(1, round(self.pgbench * SECOND_SIZE)),
            events=max(1000, round(self.events * SECOND_SIZE)),
            profiles=max(100, round(self.profiles * SECOND_SIZE)),
            redis_keys=max(1000, round(self.redis_keys * SECOND_SIZE)),
            files_mb=max(1, round(self.files_mb * SECOND_SIZE)),
        )

    def describe(self) -> str:
        return (
            f"pgbench scale {self.pgbench} + {self.events:,} events + {self.profiles:,} profiles, "
            f"{self.redis_keys:,} Redis keys, {self.files_mb} MB of files"
        )


@dataclass
class Dataset:
    """One copy of the data: a database of the shared server, a Redis of its own, a folder.

    The sizes are the raw ones: the plain dump, the RDB and the tar of the folder."""

    scale: Scale
    pg: PostgresServer
    db: str
    redis: RedisServer
    files: Path
    dump_bytes: int = 0
    rdb_bytes: int = 0
    tar_bytes: int = 0


# ------------------------------------------------------------------------------- PostgreSQL


def _user_env(pg: PostgresServer) -> dict[str, str]:
    return pg.client_env(superuser=False)


def load_postgres(pg: PostgresServer, db: str, scale: Scale) -> None:
    """pgbench's tables, then the events and profiles, into ``db`` (owned by the server's user)."""
    subprocess.run(
        [
            str(pg.bindir / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale.pgbench),
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            pg.user,
            db,
        ],
        env=_user_env(pg),
        check=True,
        capture_output=True,
    )
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    kinds = "ARRAY[" + ",".join(f"'{k}'" for k in EVENT_KINDS) + "]"
    word = f"w.a[1 + floor(random() * {len(WORDS)})::int]"
    pg.psql(
        "SELECT setseed(0.42);\n"
        "CREATE TABLE events (id bigserial PRIMARY KEY, member_id int NOT NULL, kind text NOT NULL,"
        " happened_at timestamptz NOT NULL, note text NOT NULL);\n"
        "CREATE TABLE profiles (id serial PRIMARY KEY, data jsonb NOT NULL);\n",
        db,
        superuser=False,
    )
    batch = 250_000
    for first in range(1, scale.events + 1, batch):
        last = min(scale.events, first + batch - 1)
        note = "concat_ws(' ', " + ", ".join([word] * 14) + ")"
        pg.psql(
            f"WITH w AS (SELECT {words} AS a) "  # noqa: S608 - built from constants
            "INSERT INTO events (member_id, kind, happened_at, note) "
            "SELECT 1 + floor(random() * 50000)::int, "
            f"({kinds})[1 + floor(random() * {len(EVENT_KINDS)})::int], "
            "timestamptz '2024-01-01 00:00+00' + random() * interval '365 days', "
            f"{note} FROM generate_series({first}, {last}), w;",
            db,
            superuser=False,
        )
    for first in range(1, scale.profiles + 1, batch):
        last = min(scale.profiles, first + batch - 1)
        pg.psql(
            f"WITH w AS (SELECT {words} AS a) "  # noqa: S608 - built from constants
            "INSERT INTO profiles (data) SELECT jsonb_build_object("
            "'name', 'member ' || i, 'email', md5(i::text) || '@example.com', "
            f"'plan', {word}, 'visits', floor(random() * 500)::int, "
            f"'tags', jsonb_build_array({word}, {word}, {word}), "
            f"'notes', concat_ws(' ', {word}, {word}, {word}, {word}, {word}, {word}), "
            "'joined', (date '2015-01-01' + floor(random() * 3000)::int)::text) "
            f"FROM generate_series({first}, {last}) AS i, w;",
            db,
            superuser=False,
        )
    pg.psql(
        "CREATE INDEX events_member ON events (member_id, happened_at);\n"
        "CREATE INDEX profiles_email ON profiles ((data->>'email'));\nANALYZE;",
        db,
        superuser=False,
    )


def output_size(argv: list[str], env: dict[str, str] | None = None) -> int:
    """How many bytes ``argv`` writes to its stdout (it must succeed)."""
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        total = 0
        if proc.stdout is not None:
            while chunk := proc.stdout.read(1 << 20):
                total += len(chunk)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
    return total


def dump_size(pg: PostgresServer, db: str) -> int:
    """The size of the plain dump of ``db``, as the backups take it."""
    return output_size(
        [
            str(pg.bindir / "pg_dump"),
            "--no-password",
            "--clean",
            "--if-exists",
            "--quote-all-identifiers",
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            pg.user,
            "-d",
            db,
        ],
        _user_env(pg),
    )


# ------------------------------------------------------------------------------------ Redis


def redis_commands(first: int, last: int, rng: random.Random) -> Iterator[list[str]]:
    """The commands that write keys ``first`` to ``last - 1``, of five kinds in turn, and feed
    a hundred big leaderboards on the way."""
    for i in range(first, last):
        kind = i % 5
        if kind == 0:
            agent = f"Mozilla/5.0 (Linux; Android {rng.randint(8, 14)}) GymApp/{rng.randint(1, 9)}"
            ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            member = str(rng.randint(1, 50000))
            yield ["HSET", f"session:{i}", "member", member, "agent", agent, "ip", ip]
        elif kind == 1:
            token = rng.randbytes(16).hex()
            plan = rng.choice(WORDS)
            value = f'{{"member":{i},"plan":"{plan}","token":"{token}","visits":{i % 97}}}'
            yield ["SET", f"cache:member:{i}", value, "EX", "604800"]
        elif kind == 2:
            members = [str(rng.randint(1, 50000)) for _ in range(4)]
            yield ["ZADD", f"class:{i}:waitlist", *(x for m in members for x in ("1", m))]
        elif kind == 3:
            lines = [
                f"{1_700_000_000 + i + n} {' '.join(rng.choices(WORDS, k=6))}" for n in range(3)
            ]
            yield ["RPUSH", f"activity:{i}", *lines]
        else:
            yield ["SET", f"counter:visits:{i}", str(rng.randint(0, 5000))]
        if i % 10 == 0:
            yield ["ZADD", f"leaderboard:{i % 100}", str(rng.randint(0, 100000)), f"member:{i}"]


def load_redis(redis: RedisServer, keys: int) -> None:
    """``keys`` keys (and the leaderboards): sessions, cached JSON with a TTL, waitlists, activity
    lists, counters."""
    rng = random.Random(SEED)
    batch = 50_000
    for first in range(0, keys, batch):
        redis.pipe(redis_commands(first, min(keys, first + batch), rng))


def rdb_size(redis: RedisServer) -> int:
    """The size of the RDB the server writes now (SAVE, then the file's size)."""
    redis.cli("SAVE")
    return (redis.dir / "dump.rdb").stat().st_size


# ------------------------------------------------------------------------------------ files


def text_pool(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of receipt lines and CSV rows, the text the files are cut from."""
    lines: list[str] = []
    total = 0
    while total < size:
        if rng.random() < 0.5:
            line = (
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(6, 22):02d}:{rng.randint(0, 59):02d} receipt "
                f"{rng.randint(100000, 999999)} member {rng.randint(1, 50000)} "
                f"{' '.join(rng.choices(WORDS, k=5))} ARS {rng.randint(1000, 90000) / 100:.2f}\n"
            )
        else:
            line = (
                f"{rng.randint(1, 50000)},{rng.choice(WORDS)},{rng.choice(EVENT_KINDS)},"
                f"{rng.randint(0, 500)},{rng.random():.6f},{' '.join(rng.choices(WORDS, k=3))}\n"
            )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def make_files(root: Path, megabytes: int) -> None:
    """About ``megabytes`` MB in many folders: random "photos" (a third of the bytes) of 200 KB
    to 4 MB, and text receipts and exports of 2 KB to 1 MB cut from a 16 MB pool of lines."""
    rng = random.Random(SEED)
    pool = text_pool(rng, 16 << 20)
    target = megabytes << 20
    written = random_bytes = 0
    index = 0
    while written < target:
        folder = root / f"members/{index % 37:02d}/{index % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        if random_bytes < written / 3:
            size = min(rng.randint(200 << 10, 4 << 20), target - written)
            (folder / f"photo_{index}.jpg").write_bytes(rng.randbytes(size))
            random_bytes += size
        else:
            size = min(int(rng.lognormvariate(10, 1.5)) + 2048, 1 << 20, target - written)
            start = rng.randrange(len(pool) - size)
            (folder / f"receipt_{index}.txt").write_bytes(pool[start : start + size])
        written += size
        index += 1


def tar_size(root: Path) -> int:
    """The size of the tar of ``root`` (what the files backup compresses)."""
    return output_size(["tar", "-C", str(root), "-cf", "-", "."])


# ---------------------------------------------------------------------------------- building


@contextlib.contextmanager
def redis_server(workdir: Path, name: str, password: str) -> Iterator[RedisServer]:
    """A redis-server of its own in ``workdir/name`` with production's snapshot delay."""
    folder = workdir / name
    folder.mkdir(parents=True)
    try:
        with redis_on(folder, password=password, extra=(REDIS_SYNC_DELAY,)) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


PG_USER = "gym_secure_user"
PG_PASSWORD = "bench pg 'pw'"
REDIS_PASSWORD = "bench redis 'pw'"


@contextlib.contextmanager
def build(work: Path, scale: Scale, log: Callable[[str], None]) -> Iterator[list[Dataset]]:
    """The data at ``scale`` and at its second size (:meth:`Scale.smaller`): one PostgreSQL
    server with a database each, a Redis each, a folder each. Stopped and removed at the end."""
    sizes = [scale, scale.smaller()]
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(
            start_postgres(work / "pg", db="gym_secure_db", user=PG_USER, password=PG_PASSWORD)
        )
        # restore --target-db creates the database it restores into
        pg.psql(f'ALTER ROLE "{PG_USER}" CREATEDB;', "postgres")
        datasets = []
        for number, size in enumerate(sizes):
            db = "gym_secure_db" if number == 0 else f"gym_secure_db_{number}"
            if number:
                pg.createdb(db)
            redis = stack.enter_context(redis_server(work, f"redis-{number}", REDIS_PASSWORD))
            files = work / f"files-{number}"
            log(f"building the data ({size.name}): {size.describe()}")
            load_postgres(pg, db, size)
            load_redis(redis, size.redis_keys)
            make_files(files, size.files_mb)
            datasets.append(
                Dataset(
                    scale=size,
                    pg=pg,
                    db=db,
                    redis=redis,
                    files=files,
                    dump_bytes=dump_size(pg, db),
                    rdb_bytes=rdb_size(redis),
                    tar_bytes=tar_size(files),
                )
            )
        yield datasets


def scratch_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder below ``parent``."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def remove(path: Path) -> None:
    """Remove a file or a folder tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
