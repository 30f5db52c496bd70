"""The commands the benchmark times, as cases: the limits, the reference pipelines, gym-backup's
own backups and restores, and the raw loads its restores are compared with.

Every case is encrypted with the same passphrase, which is never on a command line: the scripts
read it from ENCRYPTION_KEY, the reference pipelines hand it to gpg on file descriptor 3 from
BENCH_KEY (``--passphrase-fd 3``). The reference pipelines turn gpg's own compression off
(``--compress-algo none``, as gym-backup does): with it on, gpg would deflate the compressed stream
a second time and the references would be slower than anyone needs them to be.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.data import Dataset, remove
from devtools.sandbox import free_port

KEY = "bench passphrase 'x' $y"
TYPES = ("postgresql", "redis", "files")
TYPE_TITLES = {"postgresql": "PostgreSQL", "redis": "Redis", "files": "files"}
GPG = (
    'gpg --homedir "$GNUPGHOME" --batch --quiet --yes --no-tty --pinentry-mode loopback '
    '--passphrase-fd 3 3<<<"$BENCH_KEY"'
)
ENCRYPT = f"{GPG} --symmetric --cipher-algo AES256 --compress-algo none"
DECRYPT = f"{GPG} --decrypt"
BACKUP_NAME = re.compile(
    r"^(postgresql|redis|files)_backup_\d{8}_\d{6}\.(sql|rdb|tar)\.(?P<codec>gz|zst)(\.gpg)?$"
)


@dataclass(frozen=True)
class Codec:
    """A codec as the reference pipelines and gym-backup's names spell it."""

    name: str  # COMPRESSION=...
    extension: str  # in the backup's name
    compress: str  # the reference pipeline's compressor
    decompress: str  # the raw load's decompressor


GZIP = Codec("gzip", "gz", "gzip -6", "pigz -d")
ZSTD = Codec("zstd", "zst", "zstd -3 -T2 -q", "zstd -d -q")
CODECS = (GZIP, ZSTD)

# What the reference pipelines read, as gym-backup reads it (the same pg_dump options).
SOURCES = {
    "postgresql": "pg_dump --no-password --clean --if-exists --quote-all-identifiers",
    "redis": 'redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --rdb -',
    "files": 'tar -C "$FILES_DIR" -cf - .',
}
# What gym-backup checks of a new backup while it is written, done by hand: the content as its
# type does it, read to its end (a check that stops early must not break the pipe before it).
CHECKS = {
    "postgresql": "tail -c 1024 | grep -c 'PostgreSQL database dump complete' >/dev/null",
    "redis": "{ redis-check-rdb /dev/stdin >/dev/null && cat >/dev/null; }",
    "files": "{ tar -tf - >/dev/null && cat >/dev/null; }",
}
# The limits: reading only. tar skips reading the files when it writes to /dev/null itself, so
# its archive goes through cat; redis-cli --rdb writes a file.
LIMITS = {
    "postgresql": f"{SOURCES['postgresql']} >/dev/null",
    "redis": 'redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --rdb "$1" >/dev/null',
    "files": f"{SOURCES['files']} | cat >/dev/null",
}


def bash(script: str, *args: str) -> list[str]:
    """``script`` run by bash with ``args`` as $1...; any failure in a pipeline fails it."""
    return ["bash", "-c", f"set -euo pipefail\n{script}", "bench", *args]


class Case:
    """One command timed in turn with others. ``before`` and ``after`` run around every run,
    untimed; ``after`` checks what the run made and says why it does not count, if it does not.
    """

    def __init__(self, key: str, label: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.key = key
        self.label = label
        self.argv = argv
        self.env = dict(env)
        self.stored_bytes: int | None = None

    def before(self) -> None:
        """Prepare a run."""

    def after(self) -> str | None:
        """Check and clean up after a good run: None, or why it does not count."""
        return None


class WritesFile(Case):
    """A case that writes one file: its size is the output's."""

    def __init__(
        self, key: str, label: str, argv: list[str], env: Mapping[str, str], output: Path
    ) -> None:
        super().__init__(key, label, argv, env)
        self.output = output

    def before(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.unlink(missing_ok=True)

    def after(self) -> str | None:
        if not self.output.is_file() or self.output.stat().st_size == 0:
            return f"wrote nothing to {self.output.name}"
        self.stored_bytes = self.output.stat().st_size
        self.output.unlink()
        return None


class Environments:
    """The environments of the commands, for one dataset."""

    def __init__(self, work: Path, data: Dataset) -> None:
        self.work = work
        self.data = data
        self.home = work / "home"
        self.gnupg = work / "gnupg"
        for folder in (self.home, self.gnupg):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def base(self) -> dict[str, str]:
        return {
            "PATH": self.data.pg.client_path(_path()),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
        }

    def reference(self) -> dict[str, str]:
        """libpq's and redis-cli's own variables, the passphrase, gpg's home."""
        pg, redis = self.data.pg, self.data.redis
        env = {
            **self.base(),
            "PGHOST": pg.host,
            "PGPORT": str(pg.port),
            "PGUSER": pg.user,
            "PGPASSWORD": pg.password,
            "PGDATABASE": self.data.db,
            "REDIS_HOST": redis.host,
            "REDIS_PORT": str(redis.port),
            "FILES_DIR": str(self.data.files),
            "BENCH_KEY": KEY,
            "GNUPGHOME": str(self.gnupg),
        }
        if redis.password is not None:
            env["REDISCLI_AUTH"] = redis.password
        return env

    def gym(self, backup_dir: Path, codec: Codec) -> dict[str, str]:
        """A script's settings: the servers of the dataset, REDIS_DATA_DIR readable, encrypted."""
        env = {
            **self.base(),
            "BACKUP_DIR": str(backup_dir),
            "FILES_DIR": str(self.data.files),
            **self.data.pg.env(),
            "POSTGRES_DB": self.data.db,
            **self.data.redis.env(),
            "REDIS_DATA_DIR": str(self.data.redis.dir),
            "ENCRYPTION_KEY": KEY,
        }
        if codec is not GZIP:
            env["COMPRESSION"] = codec.name
        return env


def _path() -> str:
    return os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")


# ---------------------------------------------------------------------------------- backups


def reference_cases(envs: Environments, kind: str, out: Path) -> list[Case]:
    """The limit and the two reference pipelines of one type."""
    env = envs.reference()
    source = SOURCES[kind]
    limit_label = {
        "postgresql": "limit: pg_dump > /dev/null",
        "redis": "limit: redis-cli --rdb FILE",
        "files": "limit: tar | cat > /dev/null",
    }[kind]
    cases: list[Case] = []
    if kind == "redis":
        cases.append(
            WritesFile(
                f"{kind}.limit",
                limit_label,
                bash(LIMITS[kind], str(out / "limit.rdb")),
                env,
                out / "limit.rdb",
            )
        )
    else:
        cases.append(Case(f"{kind}.limit", limit_label, bash(LIMITS[kind]), env))
    for codec, label in (
        (GZIP, "usual: | gzip -6 | gpg"),
        (ZSTD, "bare zstd: | zstd -3 -T2 | gpg"),
    ):
        output = out / f"{kind}.{codec.extension}.gpg"
        script = f'{source} | {codec.compress} | {ENCRYPT} >"$1"'
        key = f"{kind}.{'usual' if codec is GZIP else 'zstd'}"
        cases.append(WritesFile(key, label, bash(script, str(output)), env, output))
    # The bare zstd pipeline with the one-pass check of gym-backup, by hand: the stored bytes,
    # as they are written, decrypted, decompressed and their content checked.
    output = out / f"{kind}.checked.zst.gpg"
    script = (
        f'{source} | {ZSTD.compress} | {ENCRYPT} | tee "$1" | {DECRYPT} | {ZSTD.decompress} | '
        f"{CHECKS[kind]}"
    )
    label = "checked zstd: | zstd | gpg | tee FILE | gpg -d | zstd -d | check"
    cases.append(WritesFile(f"{kind}.zstdcheck", label, bash(script, str(output)), env, output))
    return cases


class GymBackup(Case):
    """``backup_script.sh WHAT`` into a new BACKUP_DIR each run; the last run's backups are kept
    (in ``keep``) for the restores."""

    def __init__(
        self, envs: Environments, scripts: Path, what: str, codec: Codec, out: Path
    ) -> None:
        self.backup_dir = out / f"{what}-{codec.name}.run"
        self.keep = out / f"{what}-{codec.name}"
        self.codec = codec
        super().__init__(
            f"{what}.gym.{codec.name}",
            f"gym-backup {what} ({codec.name})",
            ["bash", str(scripts / "backup_script.sh"), what],
            envs.gym(self.backup_dir, codec),
        )

    def before(self) -> None:
        remove(self.backup_dir)
        self.backup_dir.mkdir(parents=True)

    def after(self) -> str | None:
        made = [p for p in self.backup_dir.iterdir() if BACKUP_NAME.match(p.name)]
        if not made:
            return "wrote no backup"
        for path in made:
            match = BACKUP_NAME.match(path.name)
            if match is not None and match["codec"] != self.codec.extension:
                ext = path.name.split(".", 1)[1]
                return f"COMPRESSION={self.codec.name} not supported: it wrote .{ext}"
        self.stored_bytes = sum(p.stat().st_size for p in made)
        remove(self.keep)
        self.backup_dir.rename(self.keep)
        return None

    def kept(self, kind: str) -> Path | None:
        """The kept backup of ``kind``, if a run made one."""
        if not self.keep.is_dir():
            return None
        found = [
            p
            for p in self.keep.iterdir()
            if BACKUP_NAME.match(p.name) and p.name.startswith(f"{kind}_")
        ]
        return found[0] if found else None


# --------------------------------------------------------------------------------- restores


def _counts(data: Dataset, db: str) -> str:
    return data.pg.psql(
        "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM events), "
        "(SELECT count(*) FROM profiles)",
        db,
    )


class PgRestore(Case):
    """A restore into a new database (dropped after each run), checked by its row counts."""

    def __init__(
        self,
        key: str,
        label: str,
        argv: list[str],
        env: Mapping[str, str],
        data: Dataset,
        target: str,
    ) -> None:
        super().__init__(key, label, argv, env)
        self.data = data
        self.target = target
        self.expected = _counts(data, data.db)

    def before(self) -> None:
        self.data.pg.dropdb(self.target)

    def after(self) -> str | None:
        try:
            counts = _counts(self.data, self.target)
        finally:
            self.data.pg.dropdb(self.target)
        if counts != self.expected:
            return f"restored {counts} rows, not {self.expected}"
        return None


def raw_pg_load(envs: Environments, backup: Path, codec: Codec, target: str) -> PgRestore:
    """``gpg -d | DECOMPRESS | psql --single-transaction`` into a new database."""
    script = (
        'psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $2" >/dev/null\n'
        f'{DECRYPT} <"$1" | {codec.decompress} | '
        'psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$2" >/dev/null'
    )
    return PgRestore(
        f"postgresql.raw.{codec.name}",
        f"PostgreSQL raw: gpg -d | {codec.decompress} | psql -1 ({codec.extension})",
        bash(script, str(backup), target),
        envs.reference(),
        envs.data,
        target,
    )


def gym_pg_restore(
    envs: Environments, scripts: Path, backup: Path, codec: Codec, target: str
) -> PgRestore:
    """``restore_script.sh postgresql FILE --target-db NEW --no-safety-backup``."""
    return PgRestore(
        f"postgresql.restore.{codec.name}",
        f"gym-backup restore postgresql ({codec.extension})",
        [
            "bash",
            str(scripts / "restore_script.sh"),
            "postgresql",
            backup.name,
            "--target-db",
            target,
            "--no-safety-backup",
        ],
        envs.gym(backup.parent, codec),
        envs.data,
        target,
    )


class RedisFileRestore(Case):
    """A restore that writes dump.rdb into a new empty folder each run."""

    def __init__(
        self, key: str, label: str, argv: list[str], env: Mapping[str, str], folder: Path
    ) -> None:
        super().__init__(key, label, argv, env)
        self.folder = folder

    def before(self) -> None:
        remove(self.folder)
        self.folder.mkdir(parents=True)

    def after(self) -> str | None:
        rdb = self.folder / "dump.rdb"
        size = rdb.stat().st_size if rdb.is_file() else 0
        shutil.rmtree(self.folder, ignore_errors=True)
        return None if size > 0 else "wrote no dump.rdb"


def raw_redis_load(envs: Environments, backup: Path, codec: Codec, folder: Path) -> Case:
    """``gpg -d | DECOMPRESS > dump.rdb``."""
    script = f'{DECRYPT} <"$1" | {codec.decompress} >"$2/dump.rdb"'
    return RedisFileRestore(
        f"redis.raw.{codec.name}",
        f"Redis raw: gpg -d | {codec.decompress} > dump.rdb ({codec.extension})",
        bash(script, str(backup), str(folder)),
        envs.reference(),
        folder,
    )


def gym_redis_restore(
    envs: Environments, scripts: Path, backup: Path, codec: Codec, folder: Path
) -> Case:
    """``restore_script.sh redis FILE --mode file --no-safety-backup`` into an empty
    REDIS_DATA_DIR, with no Redis listening on REDIS_PORT: the script checks the backup, writes
    the RDB and says to start Redis (stopping and starting a live one is left out)."""
    env = envs.gym(backup.parent, codec)
    env.pop("REDIS_PASSWORD", None)
    env.update(REDIS_DATA_DIR=str(folder), REDIS_HOST="127.0.0.1", REDIS_PORT=str(free_port()))
    return RedisFileRestore(
        f"redis.restore.{codec.name}",
        f"gym-backup restore redis --mode file ({codec.extension})",
        [
            "bash",
            str(scripts / "restore_script.sh"),
            "redis",
            backup.name,
            "--mode",
            "file",
            "--no-safety-backup",
        ],
        env,
        folder,
    )
