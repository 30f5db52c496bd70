"""``make run``: a full backup of sample gym data on throwaway servers, end to end.

Starts a throwaway PostgreSQL and Redis (:mod:`devtools.sandbox`), loads sample data, creates
some uploaded files, writes ``demo-output/.env``, renders the service into
``demo-output/service`` and runs its ``backup_script.sh full`` and ``list``. Everything it makes
is under ``demo-output/`` in the current folder (emptied first); the servers are removed at exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from devtools.sandbox import PostgresServer, RedisServer, SandboxError, start_postgres, start_redis
from generator import config, ops, render
from generator.errors import UserError

DEMO_DIR = "demo-output"
PG_DB = "gym_secure_db"
PG_USER = "gym_secure_user"
DEMO_TZ = "America/Argentina/Buenos_Aires"

# Loaded as gym_secure_user, so the role that runs pg_dump owns everything it dumps.
SAMPLE_SQL = """
BEGIN;

CREATE TABLE members (
    id          serial PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text,
    birth_date  date,
    joined_at   timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE members IS 'Socios del gimnasio';

CREATE TABLE memberships (
    id         serial PRIMARY KEY,
    member_id  integer NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    plan       text NOT NULL CHECK (plan IN ('day-pass', 'monthly', 'quarterly', 'annual')),
    starts_on  date NOT NULL,
    ends_on    date NOT NULL CHECK (ends_on >= starts_on),
    price_ars  numeric(10, 2) NOT NULL
);

CREATE TABLE payments (
    id             serial PRIMARY KEY,
    membership_id  integer NOT NULL REFERENCES memberships (id) ON DELETE CASCADE,
    amount_ars     numeric(10, 2) NOT NULL CHECK (amount_ars > 0),
    method         text NOT NULL,
    paid_at        timestamptz NOT NULL,
    reference      text NOT NULL UNIQUE
);

CREATE TABLE class_bookings (
    id          serial PRIMARY KEY,
    member_id   integer NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    class_name  text NOT NULL,
    coach       text NOT NULL,
    starts_at   timestamptz NOT NULL,
    attended    boolean  -- NULL: the class has not happened yet
);
CREATE INDEX class_bookings_starts_at ON class_bookings (starts_at);

INSERT INTO members (first_name, last_name, email, phone, birth_date, joined_at, active)
SELECT (ARRAY['José', 'María', 'Sofía', 'Martín', 'Lucía', 'Joaquín', 'Valentina', 'Agustín',
              'Zoë', 'Björn', 'Chloé', 'Iñaki'])[1 + g % 12],
       (ARRAY['Núñez', 'González', 'Pérez', 'Fernández', 'Müller', 'O''Brien', 'Łukasiewicz',
              'Gómez', 'Díaz', 'Álvarez', 'Rossi', 'Sánchez'])[1 + (g / 12) % 12],
       format('socio%s@example.com', lpad(g::text, 4, '0')),
       format('+54 9 11 %s-%s', 4000 + (g * 37) % 6000, lpad(((g * 7919) % 10000)::text, 4, '0')),
       date '1965-01-01' + (g * 97) % 15000,
       now() - make_interval(days => (g * 13) % 900, hours => g % 12),
       g % 11 <> 0
FROM generate_series(1, 300) AS g;

INSERT INTO memberships (member_id, plan, starts_on, ends_on, price_ars)
SELECT 1 + (g * 7) % 300,
       plan.name,
       current_date - (g * 17) % 400,
       current_date - (g * 17) % 400 + plan.days,
       plan.price
FROM generate_series(1, 450) AS g
JOIN (VALUES (0, 'day-pass', 0, 4500.00),
             (1, 'monthly', 30, 28000.00),
             (2, 'monthly', 30, 28000.00),
             (3, 'quarterly', 90, 75000.00),
             (4, 'annual', 365, 260000.00)) AS plan (slot, name, days, price)
  ON plan.slot = g % 5;

-- every membership is paid once; every third one also got a 10 % late fee
INSERT INTO payments (membership_id, amount_ars, method, paid_at, reference)
SELECT ms.id,
       CASE WHEN n = 1 THEN ms.price_ars ELSE round(ms.price_ars * 0.10, 2) END,
       (ARRAY['efectivo', 'tarjeta de débito', 'tarjeta de crédito', 'transferencia',
              'Mercado Pago'])[1 + (ms.id + n) % 5],
       ms.starts_on + make_interval(days => n - 1, hours => 8 + (ms.id * 5) % 12,
                                    mins => (ms.id * 11) % 60),
       format('REC-%s-%s', to_char(ms.starts_on, 'YYYYMM'), lpad((ms.id * 10 + n)::text, 6, '0'))
FROM memberships AS ms
CROSS JOIN generate_series(1, 2) AS n
WHERE n = 1 OR ms.id % 3 = 0;

INSERT INTO class_bookings (member_id, class_name, coach, starts_at, attended)
SELECT 1 + (g * 11) % 300,
       (ARRAY['Spinning', 'Yoga', 'CrossFit', 'Pilates', 'Boxeo', 'Funcional', 'Zumba'])[1 + g % 7],
       (ARRAY['Ana Belén', 'Facundo', 'Ramón Ibáñez', 'Jürgen', 'Camila'])[1 + g % 5],
       slot.starts_at,
       CASE WHEN slot.starts_at > now() THEN NULL ELSE g % 6 <> 0 END
FROM generate_series(1, 900) AS g
CROSS JOIN LATERAL (
    SELECT current_date::timestamptz
           + make_interval(days => (g * 3) % 74 - 60, hours => 7 + g % 14) AS starts_at
) AS slot;

CREATE VIEW active_members AS
SELECT m.id, m.first_name || ' ' || m.last_name AS full_name, m.email, ms.plan, ms.ends_on
FROM members AS m
JOIN memberships AS ms ON ms.member_id = m.id
WHERE m.active AND current_date BETWEEN ms.starts_on AND ms.ends_on;

COMMIT;
"""

COUNT_SQL = """
SELECT (SELECT count(*) FROM members), (SELECT count(*) FROM memberships),
       (SELECT count(*) FROM payments), (SELECT count(*) FROM class_bookings),
       (SELECT count(*) FROM active_members);
"""

SESSION_COUNT = 40
USER_AGENTS = (
    "GymApp/3.2 (Android 14)",
    "GymApp/3.2 (iOS 17.4)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/125.0",
)
CACHE_ENTRIES: Mapping[str, object] = {
    "cache:plans": {"day-pass": 4500, "monthly": 28000, "quarterly": 75000, "annual": 260000},
    "cache:class_schedule:monday": [
        {"class": "Spinning", "coach": "Facundo", "at": "07:00"},
        {"class": "Yoga", "coach": "Ana Belén", "at": "09:30"},
        {"class": "Boxeo", "coach": "Ramón Ibáñez", "at": "19:00"},
    ],
    "cache:member:42:profile": {"name": "Zoë Łukasiewicz", "plan": "annual", "visits": 118},
    "cache:gym:info": {"name": "Gimnasio Ñandú", "city": "Buenos Aires", "open": "06:00-23:00"},
}
LEADERBOARD_KEY = "leaderboard:attendance:monthly"
LEADERBOARD: Mapping[str, int] = {
    "José Núñez": 27,
    "María González": 25,
    "Björn Müller": 22,
    "Chloé O'Brien": 19,
    "Iñaki Díaz": 18,
    "Sofía Pérez": 15,
    "李小龍": 12,
    "Valentina Rossi": 9,
}

UPLOADS: Mapping[str, bytes] = {
    "members/photos/socio_0001.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 demo photo 1",
    "members/photos/socio_0002.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 demo photo 2",
    "members/photos/socio_0042.png": b"\x89PNG\r\n\x1a\n demo photo 42",
    "members/documents/apto físico - José Núñez.pdf": b"%PDF-1.4\n% certificado medico\n",
    "receipts/2024/11/recibo 0001.pdf": b"%PDF-1.4\n% recibo 0001\n",
    "receipts/2024/12/recibo 0002.pdf": b"%PDF-1.4\n% recibo 0002\n",
    "contracts/contrato_Zoë_Łukasiewicz.pdf": b"%PDF-1.4\n% contrato\n",
    "classes/horarios de verano.txt": b"Spinning 07:00\nYoga 09:30\nBoxeo 19:00\n",
}


def progress(message: str) -> None:
    """A progress line on stderr."""
    print(f"==> {message}", file=sys.stderr, flush=True)


def detail(message: str) -> None:
    """An indented detail line under the last progress line, on stderr."""
    print(f"    {message}", file=sys.stderr, flush=True)


def _empty_dir(folder: Path) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"{folder} exists and is not a folder; move it away and run again.")
    folder.mkdir(exist_ok=True)
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def load_postgres_sample(pg: PostgresServer) -> str:
    """Create and fill the sample tables as the backup role; return a one-line summary."""
    pg.psql(SAMPLE_SQL, superuser=False)
    members, memberships, payments, bookings, active = pg.psql(COUNT_SQL).split("|")
    return (
        f"{members} members ({active} with an active plan), {memberships} memberships, "
        f"{payments} payments, {bookings} class bookings, view active_members"
    )


def redis_sample_commands() -> list[list[str]]:
    """The commands that fill Redis: sessions with TTLs, cache strings, a leaderboard."""
    commands: list[list[str]] = []
    for i in range(1, SESSION_COUNT + 1):
        key = f"session:{secrets.token_hex(16)}"
        commands.append(
            [
                "HSET",
                key,
                "member_id",
                str(1 + (i * 7) % 300),
                "ip",
                f"10.0.{i // 250}.{i % 250 + 1}",
                "user_agent",
                USER_AGENTS[i % len(USER_AGENTS)],
                "created_at",
                f"2024-11-{1 + i % 28:02d}T{8 + i % 12:02d}:00:00-03:00",
            ]
        )
        commands.append(["EXPIRE", key, str(3600 + i * 300)])
    for key, value in CACHE_ENTRIES.items():
        commands.append(["SET", key, json.dumps(value, ensure_ascii=False), "EX", "86400"])
    zadd = ["ZADD", LEADERBOARD_KEY]
    for name, score in LEADERBOARD.items():
        zadd += [str(score), name]
    commands.append(zadd)
    return commands


def load_redis_sample(redis: RedisServer) -> str:
    """Fill Redis with the sample data; return a one-line summary."""
    redis.pipe(redis_sample_commands())
    return (
        f"{redis.cli('DBSIZE')} keys: {SESSION_COUNT} session:* hashes with TTLs, "
        f"{len(CACHE_ENTRIES)} cache:* strings, sorted set {LEADERBOARD_KEY}"
    )


def load_files_sample(folder: Path) -> str:
    """Create the sample uploaded files under ``folder``; return a one-line summary."""
    for rel, data in UPLOADS.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    total = sum(len(d) for d in UPLOADS.values())
    return f"{len(UPLOADS)} files ({total} bytes) in {folder}"


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@+,=-]*")


def dotenv_quote(value: str) -> str:
    """``value`` for a .env line: bare when plain, else single-quoted (python-dotenv escapes)."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_env_file(path: Path, values: Mapping[str, str]) -> Path:
    """Write ``values`` as a mode-600 .env file (it holds passwords); ``path`` itself."""
    lines = [
        "# Written by devtools/demo.py for throwaway servers; safe to delete.",
        *(f"{key}={dotenv_quote(value)}" for key, value in values.items()),
    ]
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _backup_listing(backup_dir: Path) -> list[str]:
    files = sorted(
        p
        for p in backup_dir.rglob("*")
        if p.is_file() and not p.relative_to(backup_dir).as_posix().startswith(".")
    )
    return [f"    {p.relative_to(backup_dir)}  ({p.stat().st_size} bytes)" for p in files]


def _shown(path: Path) -> str:
    """``path`` as the user types it: relative to this folder when it is inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def next_steps(env_path: Path, backups: Path) -> list[str]:
    """What to try next with the demo's backups: commands to run from this folder."""
    beside = Path(sys.executable).parent / "gym-backup"
    cli = _shown(beside) if beside.is_file() else "gym-backup"
    opts = f"--local --env {_shown(env_path)}"

    def newest(kind: str) -> str:
        names = (p.name for p in backups.glob(f"{kind}_backup_*") if p.suffix in (".gz", ".gpg"))
        return max(names, default=f"{kind}_backup_...")

    return [
        f"Next steps, from this folder (the demo's settings are in {_shown(env_path)}, with its",
        "passphrase ENCRYPTION_KEY: without that key the backups cannot be read):",
        f"  {cli} list {opts}",
        f"  {cli} verify {opts} {newest('postgresql')}",
        f"  {cli} info {opts} {newest('postgresql')}",
        f"  {cli} restore files {opts} {newest('files')} {_shown(backups.parent / 'restored')}",
        f"  gpg --decrypt {_shown(backups / newest('postgresql'))} | gunzip > dump.sql",
        "    (gpg asks for the passphrase: ENCRYPTION_KEY in the .env)",
        "Restoring into PostgreSQL or Redis needs running servers (the demo's are removed now):",
        "see Restore in README.md.",
    ]


def run_demo(demo_out: Path, work: Path, stack: contextlib.ExitStack) -> int:
    """Everything of :func:`main` but the error handling; servers go on ``stack``."""
    progress(f"preparing {demo_out} (previous content removed)")
    _empty_dir(demo_out)
    uploads, backups, service = demo_out / "uploads", demo_out / "backups", demo_out / "service"
    backups.mkdir()

    progress("starting PostgreSQL")
    pg = stack.enter_context(
        start_postgres(
            work / "postgres", db=PG_DB, user=PG_USER, password=secrets.token_urlsafe(24)
        )
    )
    progress(f"PostgreSQL running on {pg.host}:{pg.port} (db {pg.db}, user {pg.user})")
    progress("starting Redis")
    redis = stack.enter_context(start_redis(work / "redis", password=secrets.token_urlsafe(24)))
    progress(f"Redis running on {redis.host}:{redis.port} (password required)")

    progress("loading sample data into PostgreSQL")
    pg_summary = load_postgres_sample(pg)
    detail(pg_summary)
    progress("loading sample data into Redis")
    redis_summary = load_redis_sample(redis)
    detail(redis_summary)
    progress("creating sample uploaded files")
    files_summary = load_files_sample(uploads)
    detail(files_summary)

    env_path = demo_out / ".env"
    write_env_file(
        env_path,
        {
            **pg.env(),
            **redis.env(),
            "ENCRYPTION_KEY": secrets.token_urlsafe(32),
            "BACKUP_DIR": str(backups.resolve()),
            "FILES_DIR": str(uploads.resolve()),
            "TZ": DEMO_TZ,
        },
    )
    progress(f"wrote {env_path} (mode 600: it holds the passwords and the passphrase)")

    settings = config.load_settings(env_path, environ={}, for_run=True)
    progress(f"rendering the service into {service}")
    for rel, status in render.write(render.render(settings), service):
        print(f"  {status.value:<11} {rel}", flush=True)

    script = service / "backup_script.sh"
    progress(f"running {script} full")
    code = ops.run_script(script, ["full"], settings.environment())
    if code != 0:
        progress(f"the backup FAILED (exit {code}); see the output above and {backups}")
    progress(f"running {script} list")
    list_code = ops.run_script(script, ["list"], settings.environment())

    listing = _backup_listing(backups)
    encrypted = (
        f"encrypted (GPG AES256) with the passphrase ENCRYPTION_KEY in {env_path}"
        if settings.encrypted
        else "NOT encrypted"
    )
    print()
    print("Summary")
    print(f"  PostgreSQL {pg.db}: {pg_summary}")
    print(f"  Redis: {redis_summary}")
    print(f"  Files: {files_summary}")
    print(f"  Backups in {backups}, {encrypted}:")
    print("\n".join(listing) if listing else "    (no files)")
    print(f"  Rendered service in {service}; the servers are stopped and removed now.")
    if code == 0 and list_code == 0:
        print()
        print("\n".join(next_steps(env_path, backups)))
    # Before the next line on stderr: a pipe would hold stdout back until the exit.
    sys.stdout.flush()
    return code if code != 0 else list_code


def main() -> int:
    """``make run``: back up sample data of throwaway servers into ./demo-output."""
    demo_out = Path.cwd() / DEMO_DIR
    try:
        with (
            tempfile.TemporaryDirectory(prefix="gym-demo-") as work,
            contextlib.ExitStack() as stack,  # servers stop before their folder is removed
        ):
            code = run_demo(demo_out, Path(work), stack)
            progress("stopping the servers")
    except UserError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the servers were stopped", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
