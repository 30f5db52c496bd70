"""Benchmark: gym-backup's backups and restores side by side with the limit and the usual pipeline.

Not a test: ``make bench`` runs it (``python -m bench.main``; ``make bench BENCH_SCALE=large``).
It builds its data (bench/data.py) at BENCH_SCALE, renders the scripts, and times on that data,
each case the median of BENCH_RUNS runs taken in turn (A, B, C, A, B, C...: compare within a run,
not across runs): per type the limit, ``| gzip -6 | gpg``, ``| zstd -3 -T2 | gpg``, the same
checked as it is written (``| tee FILE | gpg -d | zstd -d | CHECK``: gym-backup's one-pass check,
by hand) and ``backup_script.sh TYPE`` with COMPRESSION gzip and zstd, then ``full`` in both,
then restores against a raw ``gpg -d | pigz -d | psql --single-transaction`` load; then, at a
tenth of the size, the backups and restores again for their peak memory (and the small Redis
snapshot's time).
It prints the tables with the issue's targets (met / not met: never a failure) and writes them to
bench/results/latest.md (BENCH_OUT). A row that fails says "not available" and the run goes on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.data import Dataset, Scale, build
from bench.measure import Probe, run
from bench.pipelines import (
    CODECS,
    ENCRYPT,
    GZIP,
    TYPES,
    Case,
    Codec,
    Environments,
    GymBackup,
    bash,
    gym_pg_restore,
    gym_redis_restore,
    raw_pg_load,
    raw_redis_load,
    reference_cases,
)
from bench.report import Result, Results
from generator import config, render

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.md"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def in_turn(cases: Sequence[Case], runs: int, probe: Probe) -> Results:
    """Run each case ``runs`` times, the cases in turn; a case that fails once is dropped."""
    results = {case.key: Result(case) for case in cases}
    for number in range(1, runs + 1):
        for case in cases:
            result = results[case.key]
            if result.problem is not None:
                continue
            try:
                case.before()
                measured = run(case.argv, case.env, probe)
                problem = None
                if measured.returncode != 0:
                    tail = measured.stderr.strip().splitlines()[-1:] or ["no message"]
                    problem = f"exit {measured.returncode}: {tail[0][:160]}"
                else:
                    problem = case.after()
            except (OSError, RuntimeError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:200]
            if problem is not None:
                result.problem = problem
                log(f"{case.label}: not available ({problem})")
                continue
            result.runs.append(measured)
            log(f"run {number}/{runs} {case.label}: {measured.seconds:.2f} s")
    return results


def unavailable(key: str, label: str, why: str) -> Result:
    result = Result(Case(key, label, [], {}))
    result.problem = why
    return result


def restores(
    envs: Environments,
    scripts: Path,
    kinds: dict[str, dict[str, GymBackup]],
    runs: int,
    probe: Probe,
    *,
    with_raw: bool = True,
) -> Results:
    """For each kind (postgresql into a new database, redis in file mode), its restores from the
    kept backups by codec, each beside the raw load of the same file."""
    out = envs.work / "out"
    results: Results = {}
    for kind, kept in kinds.items():
        cases: list[Case] = []
        for codec in CODECS:
            source = kept.get(codec.name)
            backup = source.kept(kind) if source is not None else None
            if backup is not None:
                cases += _restore_cases(envs, scripts, kind, backup, codec, out, with_raw=with_raw)
                continue
            why = "no backup in this codec"
            for key, label in (
                (f"{kind}.raw.{codec.name}", f"raw load ({codec.extension})"),
                (f"{kind}.restore.{codec.name}", f"gym-backup restore {kind} ({codec.extension})"),
            ):
                results[key] = unavailable(key, label, why)
        results |= in_turn(cases, runs, probe)
    return results


def _restore_cases(
    envs: Environments,
    scripts: Path,
    kind: str,
    backup: Path,
    codec: Codec,
    out: Path,
    *,
    with_raw: bool,
) -> list[Case]:
    if kind == "postgresql":
        raw: Case = raw_pg_load(envs, backup, codec, f"bench_raw_{codec.name}")
        gym: Case = gym_pg_restore(envs, scripts, backup, codec, f"bench_gym_{codec.name}")
    else:
        raw = raw_redis_load(envs, backup, codec, out / f"redis-raw-{codec.name}")
        gym = gym_redis_restore(envs, scripts, backup, codec, out / f"redis-gym-{codec.name}")
    return [raw, gym] if with_raw else [gym]


def first_size(envs: Environments, scripts: Path, runs: int, probe: Probe) -> Results:
    out = envs.work / "out"
    results: Results = {}
    made: dict[str, dict[str, GymBackup]] = {}
    for kind in TYPES:
        log(f"{kind}: backups")
        made[kind] = {c.name: GymBackup(envs, scripts, kind, c, out) for c in CODECS}
        results |= in_turn([*reference_cases(envs, kind, out), *made[kind].values()], runs, probe)
    log("full: backups")
    results |= in_turn([GymBackup(envs, scripts, "full", c, out) for c in CODECS], runs, probe)
    log("restores")
    kinds = {kind: made[kind] for kind in ("postgresql", "redis")}
    return results | restores(envs, scripts, kinds, runs, probe)


def second_size(envs: Environments, scripts: Path, runs: int, probe: Probe) -> Results:
    """At the second size: full backups (peak memory), the Redis snapshot alone (time), and
    restores from the full gzip backup (peak memory)."""
    out = envs.work / "out"
    full = {c.name: GymBackup(envs, scripts, "full", c, out) for c in CODECS}
    cases: list[Case] = [*full.values(), GymBackup(envs, scripts, "redis", GZIP, out)]
    results = in_turn(cases, runs, probe)
    kept = {GZIP.name: full[GZIP.name]}
    kinds = {"postgresql": kept, "redis": kept}
    return results | restores(envs, scripts, kinds, 1, probe, with_raw=False)


def warm_gpg(envs: Environments) -> None:
    """Start the reference pipelines' gpg-agent outside the measured runs (it stays up)."""
    subprocess.run(
        bash(f"echo warm | {ENCRYPT} >/dev/null"),
        env=envs.reference(),
        check=True,
        capture_output=True,
    )


def stop_gpg(envs: Environments) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(envs.gnupg), "--kill", "gpg-agent"],
        env=envs.reference(),
        check=False,
        capture_output=True,
    )


def document(
    scale: Scale,
    runs: int,
    probe: Probe,
    datasets: Sequence[Dataset],
    first: Results,
    second: Results,
    seconds: float,
) -> str:
    info = report.machine()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# gym-backup benchmark, {stamp}",
        "",
        f"BENCH_SCALE={scale.name}: {datasets[0].scale.describe()}; memory also at a second "
        f"size: {datasets[1].scale.describe()}. Median of {runs} runs taken in turn (compare "
        "within this run, not across runs); every backup encrypted (gpg AES256; the reference "
        "pipelines with gpg's own compression off, as gym-backup). cpu s: user + system time of "
        "the command's tree. Peak MB: anonymous memory and tmpfs of the command's process tree "
        f"(servers excluded), by {probe.method}; in parentheses the cgroup's maximum with the "
        f"page cache of the files read and written. The bench took {seconds / 60:.1f} min.",
        "",
        "## Summary",
        "",
        *report.summary(first, second, datasets),
        "## Backups",
        "",
        *report.backup_tables(first, datasets[0]),
        "## Restores",
        "",
        "PostgreSQL into a new empty database; Redis --mode file into an empty REDIS_DATA_DIR "
        "with no Redis running (checks, decrypts, decompresses, writes dump.rdb; stopping and "
        "starting a live server is not timed).",
        "",
        *report.restore_table(first),
        "## Peak memory at two sizes",
        "",
        *report.memory_table(first, second, datasets),
        "## Targets",
        "",
        *report.targets_table(first, second),
        "## Machine",
        "",
        *report.machine_table(info),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        default=os.environ.get("BENCH_SCALE") or "small",
        help="small (default), large, or a fraction of large (BENCH_SCALE)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=int(os.environ.get("BENCH_RUNS") or 3),
        help="runs of each case, taken in turn; the median counts (BENCH_RUNS)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("BENCH_OUT") or DEFAULT_OUT),
        help="where the tables are written too (BENCH_OUT)",
    )
    options = parser.parse_args(argv)
    try:
        scale = Scale.of(options.scale)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.monotonic()
    probe = Probe()
    log(f"peak memory: {probe.method}")
    with tempfile.TemporaryDirectory(prefix="gym-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        datasets = stack.enter_context(build(work / "data", scale, log))
        scripts = work / "service"
        render.write(render.render(config.load_settings(None, {})), scripts)
        envs = [Environments(work / f"size-{n}", d) for n, d in enumerate(datasets)]
        for env in envs:
            warm_gpg(env)
            stack.callback(stop_gpg, env)
        first = first_size(envs[0], scripts, options.runs, probe)
        log("second size: memory")
        second = second_size(envs[1], scripts, options.runs, probe)
        text = document(
            scale, options.runs, probe, datasets, first, second, time.monotonic() - started
        )
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n", encoding="utf-8")
    log(f"written to {options.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
