"""Benchmark: how long backups and verifies take on this machine, with real servers.

Not a test: run ``make bench`` (or ``python bench/backup_throughput.py --scale N``). It starts a
throwaway PostgreSQL (pgbench data at the given scale) and Redis (a mixed dataset), a folder of
partly random files, then times ``backup_script.sh`` per type, encrypted and not, and
``restore_script.sh verify``. Speed and memory targets live here, never in timed unit tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from devtools.sandbox import PostgresServer, RedisServer, start_postgres, start_redis
from generator import config, render

ROOT = Path(__file__).resolve().parent.parent


def load_postgres(pg: PostgresServer, scale: int) -> None:
    env = {**os.environ, "PGPASSWORD": pg.password}
    subprocess.run(
        [
            str(pg.bindir / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            pg.user,
            pg.db,
        ],
        env=env,
        check=True,
        capture_output=True,
    )


def load_redis(redis: RedisServer, keys: int) -> None:
    commands: list[list[str]] = []
    for i in range(keys):
        if i % 3 == 0:
            commands.append(["HSET", f"session:{i}", "user", str(i), "agent", "x" * 64])
        elif i % 3 == 1:
            commands.append(["SET", f"cache:{i}", os.urandom(48).hex()])
        else:
            commands.append(["ZADD", "leaderboard", str(i), f"member:{i}"])
    redis.pipe(commands)


def make_files(root: Path, megabytes: int) -> None:
    for i in range(megabytes):
        sub = root / f"members/{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        # a third random (incompressible), the rest text-like
        data = os.urandom(1 << 20) if i % 3 == 0 else (b"gym receipt line %d\n" % i) * 50000
        (sub / f"upload_{i}.bin").write_bytes(data[: 1 << 20])


def timed(script: Path, args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one script run (it must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{script.name} {' '.join(args)} failed:\n{result.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10 = ~150 MB dump)")
    parser.add_argument("--redis-keys", type=int, default=200_000)
    parser.add_argument("--files-mb", type=int, default=60)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gym-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        pg = stack.enter_context(
            start_postgres(
                work / "pg", db="gym_secure_db", user="gym_secure_user", password="bench pw"
            )
        )
        redis = stack.enter_context(start_redis(work / "redis", password="bench redis"))
        print(
            f"loading: pgbench scale {options.scale}, {options.redis_keys} Redis keys, "
            f"{options.files_mb} MB of files",
            file=sys.stderr,
        )
        load_postgres(pg, options.scale)
        load_redis(redis, options.redis_keys)
        make_files(work / "files", options.files_mb)
        scripts = work / "service"
        render.write(render.render(config.load_settings(None, {})), scripts)
        print(f"{'what':<32} {'seconds':>8} {'stored MB':>10} {'raw MB':>8} {'MB/s raw':>9}")
        for encrypted in (False, True):
            backups = work / f"backups-{encrypted}"
            env = {
                "PATH": os.environ["PATH"],
                "HOME": str(work),
                "TZ": "UTC",
                "LANG": "C.UTF-8",
                "BACKUP_DIR": str(backups),
                "FILES_DIR": str(work / "files"),
                **pg.env(),
                **redis.env(),
                **({"ENCRYPTION_KEY": "bench passphrase"} if encrypted else {}),
            }
            for kind in ("postgresql", "redis", "files"):
                seconds = timed(scripts / "backup_script.sh", [kind], env)
                made = max(
                    (
                        p
                        for p in backups.glob(f"{kind}_backup_*")
                        if p.name.endswith((".gz", ".gpg"))
                    ),
                    key=lambda p: p.name,
                )
                manifest = Path(f"{made}.manifest.json").read_text()
                raw = int(manifest.split('"size_raw_bytes": ')[1].split(",")[0]) / 1e6
                stored = made.stat().st_size / 1e6
                label = f"backup {kind}{' (encrypted)' if encrypted else ''}"
                print(f"{label:<32} {seconds:8.2f} {stored:10.1f} {raw:8.1f} {raw / seconds:9.1f}")
                seconds = timed(scripts / "restore_script.sh", ["verify", made.name], env)
                label = f"verify {kind}{' (encrypted)' if encrypted else ''}"
                print(f"{label:<32} {seconds:8.2f} {'':>10} {raw:8.1f} {raw / seconds:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
