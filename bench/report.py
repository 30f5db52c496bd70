"""The benchmark's tables (Markdown): times side by side with their ratios, sizes, peak memory,
the issue's targets with met / not met, and the machine the figures came from."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import Dataset
from bench.measure import Run
from bench.pipelines import CODECS, TYPE_TITLES, TYPES, Case

MB = 1e6
# The targets of the issue (ratios from the same run).
GZIP_VS_USUAL = 0.65
ZSTD_VS_BARE = 1.1
RESTORE_VS_RAW = 1.2
PEAK_MEMORY_MB = 150
SMALL_SNAPSHOT_SECONDS = 1.0


@dataclass
class Result:
    """The runs of one case, or why it is not available."""

    case: Case
    runs: list[Run] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and bool(self.runs)

    @property
    def seconds(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.ok else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(r.cpu_seconds for r in self.runs) if self.ok else None

    @property
    def peak_mb(self) -> float | None:
        return max(r.peak_bytes for r in self.runs) / MB if self.ok else None

    @property
    def cgroup_mb(self) -> float | None:
        """The cgroup's own maximum, page cache included (cgroup only)."""
        values = [r.cgroup_max_bytes for r in self.runs if r.cgroup_max_bytes is not None]
        return max(values) / MB if self.ok and values else None

    @property
    def stored_mb(self) -> float | None:
        stored = self.case.stored_bytes
        return stored / MB if self.ok and stored is not None else None


Results = dict[str, Result]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(value: float | None, limit: float, *, strict: bool = False) -> str:
    if value is None:
        return "n/a"
    met = value < limit if strict else value <= limit
    return "met" if met else "NOT met"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def _label(result: Result) -> str:
    if result.problem is not None:
        return f"{result.case.label}: not available ({result.problem})"
    return result.case.label


def _sum(values: Iterable[float | None]) -> float | None:
    items = list(values)
    return None if any(v is None for v in items) else sum(v for v in items if v is not None)


# ---------------------------------------------------------------------------------- backups


def backup_tables(results: Results, data: Dataset) -> list[str]:
    raw = {"postgresql": data.dump_bytes, "redis": data.rdb_bytes, "files": data.tar_bytes}
    what = {"postgresql": "plain dump", "redis": "RDB", "files": "tar"}
    header = [
        "",
        "median s",
        "cpu s",
        "x limit",
        "x usual",
        "x zstd pipe",
        "stored MB",
        "peak MB",
        "target",
    ]
    lines: list[str] = []
    for kind in TYPES:
        limit, usual, bare, checked = (
            results[f"{kind}.{k}"] for k in ("limit", "usual", "zstd", "zstdcheck")
        )
        rows = []
        for key in ("limit", "usual", "zstd", "zstdcheck", "gym.gzip", "gym.zstd"):
            result = results[f"{kind}.{key}"]
            target = ""
            if key == "gym.gzip":
                value = ratio(result.seconds, usual.seconds)
                target = f"≤ {GZIP_VS_USUAL} x usual: {verdict(value, GZIP_VS_USUAL)}"
            elif key == "gym.zstd":
                value = ratio(result.seconds, bare.seconds)
                target = f"≤ {ZSTD_VS_BARE} x zstd pipe: {verdict(value, ZSTD_VS_BARE)}"
                by_hand = ratio(result.seconds, checked.seconds)
                if by_hand is not None:
                    target += f" ({by_hand:.2f} x the checked zstd pipe)"
            rows.append(_row(result, limit.seconds, usual.seconds, bare.seconds, target))
        lines += [f"**{TYPE_TITLES[kind]}** ({what[kind]} {raw[kind] / MB:.0f} MB)", ""]
        lines += [*table(header, rows), ""]
    limits = _sum(results[f"{k}.limit"].seconds for k in TYPES)
    usuals = _sum(results[f"{k}.usual"].seconds for k in TYPES)
    bares = _sum(results[f"{k}.zstd"].seconds for k in TYPES)
    rows = [_row(results[f"full.gym.{c.name}"], limits, usuals, bares, "") for c in CODECS]
    lines += [
        "**full** (the three types in one run; ratios to the sums of the three rows above)",
        "",
    ]
    lines += [*table(header, rows), ""]
    return lines


def _row(
    result: Result, limit: float | None, usual: float | None, bare: float | None, target: str
) -> list[str]:
    seconds = result.seconds
    return [
        _label(result),
        num(seconds),
        num(result.cpu),
        num(ratio(seconds, limit)),
        num(ratio(seconds, usual)),
        num(ratio(seconds, bare)),
        num(result.stored_mb, 1),
        num(result.peak_mb, 0),
        target,
    ]


def summary(first: Results, second: Results, sizes: Sequence[Dataset]) -> list[str]:
    """The short tables for the README: backups, restores, peak memory."""

    def cell(key: str, against: str | None = None, what: str = "usual") -> str:
        result = first.get(key)
        if result is None or result.seconds is None:
            return "n/a"
        text = f"{result.seconds:.2f} s"
        base = first.get(against) if against else None
        value = ratio(result.seconds, base.seconds if base else None)
        return text if value is None else f"{text} ({value:.2f} x {what})"

    data = sizes[0]
    header = [
        f"encrypted, {data.scale.name} data",
        "limit",
        "usual: gzip -6 | gpg",
        "zstd -3 -T2 | gpg",
        "the same, checked as written",
        "gym-backup gzip",
        "gym-backup zstd",
    ]
    raw = {"postgresql": data.dump_bytes, "redis": data.rdb_bytes, "files": data.tar_bytes}
    rows = [
        [
            f"{TYPE_TITLES[kind]} ({raw[kind] / MB:.0f} MB)",
            cell(f"{kind}.limit"),
            cell(f"{kind}.usual"),
            cell(f"{kind}.zstd"),
            cell(f"{kind}.zstdcheck", f"{kind}.zstd", "zstd pipe"),
            cell(f"{kind}.gym.gzip", f"{kind}.usual"),
            cell(f"{kind}.gym.zstd", f"{kind}.zstd", "zstd pipe"),
        ]
        for kind in TYPES
    ]
    lines = [*table(header, rows), ""]
    rows = [
        [
            f"{TYPE_TITLES[kind]} ({codec.extension})",
            cell(f"{kind}.raw.{codec.name}"),
            cell(f"{kind}.restore.{codec.name}", f"{kind}.raw.{codec.name}", "raw"),
        ]
        for kind in ("postgresql", "redis")
        for codec in CODECS
    ]
    lines += [*table(["restore", "raw load", "gym-backup"], rows), ""]
    peaks = []
    for results, size in zip((first, second), sizes, strict=True):
        values = [
            r.peak_mb
            for key, r in results.items()
            if (".gym." in key or ".restore." in key) and r.peak_mb is not None
        ]
        shown = f"{max(values):.0f} MB" if values else "n/a"
        peaks.append(f"{shown} with {size.dump_bytes / MB:.0f} MB of dump")
    lines += [f"Peak memory of a backup or restore process tree: {'; '.join(peaks)}.", ""]
    return lines


# --------------------------------------------------------------------------------- restores


def restore_table(results: Results) -> list[str]:
    header = ["restore (encrypted)", "median s", "cpu s", "x raw load", "peak MB", "target"]
    rows = []
    for kind in ("postgresql", "redis"):
        for codec in CODECS:
            raw = results.get(f"{kind}.raw.{codec.name}")
            gym = results.get(f"{kind}.restore.{codec.name}")
            if raw is None or gym is None:
                continue
            value = ratio(gym.seconds, raw.seconds)
            for result, target in (
                (raw, ""),
                (gym, f"≤ {RESTORE_VS_RAW} x raw: {verdict(value, RESTORE_VS_RAW)}"),
            ):
                rows.append(
                    [
                        _label(result),
                        num(result.seconds),
                        num(result.cpu),
                        num(ratio(result.seconds, raw.seconds)),
                        num(result.peak_mb, 0),
                        target,
                    ]
                )
    return [*table(header, rows), ""]


# ----------------------------------------------------------------------------------- memory

# Measured at both sizes (the per-type backups at the first size are in their own tables).
MEMORY_ROWS = (
    ("redis.gym.gzip", "backup redis (gzip)"),
    ("full.gym.gzip", "backup full (gzip)"),
    ("full.gym.zstd", "backup full (zstd)"),
    ("postgresql.restore.gzip", "restore postgresql (gz)"),
    ("redis.restore.gzip", "restore redis --mode file (gz)"),
)


def memory_table(first: Results, second: Results, sizes: Sequence[Dataset]) -> list[str]:
    def size(data: Dataset) -> str:
        return (
            f"{data.scale.name}: dump {data.dump_bytes / MB:.0f} MB, "
            f"RDB {data.rdb_bytes / MB:.0f} MB, files {data.tar_bytes / MB:.0f} MB"
        )

    header = [
        "peak MB of the process tree (with page cache)",
        *(size(d) for d in sizes),
        "target",
    ]
    rows = []
    for key, label in MEMORY_ROWS:
        found = [results.get(key) for results in (first, second)]
        peaks = [r.peak_mb if r is not None else None for r in found]
        worst = None if all(p is None for p in peaks) else max(p for p in peaks if p is not None)
        rows.append(
            [
                label,
                *(_memory(r) for r in found),
                f"< {PEAK_MEMORY_MB}: {verdict(worst, PEAK_MEMORY_MB, strict=True)}",
            ]
        )
    return [*table(header, rows), ""]


def _memory(result: Result | None) -> str:
    if result is None or result.peak_mb is None:
        return "-"
    cached = result.cgroup_mb
    return f"{result.peak_mb:.0f}" + ("" if cached is None else f" ({cached:.0f})")


# ---------------------------------------------------------------------------------- targets


def targets_table(first: Results, second: Results) -> list[str]:
    rows: list[list[str]] = []

    def add(
        target: str,
        what: str,
        value: float | None,
        limit: float,
        unit: str = "x",
        *,
        strict: bool = False,
    ) -> None:
        shown = "-" if value is None else f"{value:.2f} {unit}".rstrip()
        rows.append([target, what, shown, verdict(value, limit, strict=strict)])

    for kind in TYPES:
        add(
            f"gzip encrypted ≤ {GZIP_VS_USUAL} x usual",
            kind,
            ratio(first[f"{kind}.gym.gzip"].seconds, first[f"{kind}.usual"].seconds),
            GZIP_VS_USUAL,
        )
    for kind in TYPES:
        add(
            f"zstd encrypted ≤ {ZSTD_VS_BARE} x bare zstd pipeline",
            kind,
            ratio(first[f"{kind}.gym.zstd"].seconds, first[f"{kind}.zstd"].seconds),
            ZSTD_VS_BARE,
        )
    for kind in ("postgresql", "redis"):
        for codec in CODECS:
            gym = first.get(f"{kind}.restore.{codec.name}")
            raw = first.get(f"{kind}.raw.{codec.name}")
            add(
                f"restore ≤ {RESTORE_VS_RAW} x raw load",
                f"{kind} ({codec.extension})",
                ratio(gym.seconds if gym else None, raw.seconds if raw else None),
                RESTORE_VS_RAW,
            )
    peaks = [
        r.peak_mb
        for results in (first, second)
        for key, r in results.items()
        if (".gym." in key or ".restore." in key) and r.peak_mb is not None
    ]
    add(
        f"peak memory < {PEAK_MEMORY_MB} MB",
        "worst backup or restore, both sizes",
        max(peaks) if peaks else None,
        PEAK_MEMORY_MB,
        "MB",
        strict=True,
    )
    snapshot = second.get("redis.gym.gzip")
    add(
        f"small-dataset Redis snapshot < {SMALL_SNAPSHOT_SECONDS:g} s",
        "backup redis, second size, REDIS_DATA_DIR readable",
        snapshot.seconds if snapshot else None,
        SMALL_SNAPSHOT_SECONDS,
        "s",
        strict=True,
    )
    return [*table(["target", "what", "measured", "verdict"], rows), ""]


# ---------------------------------------------------------------------------------- machine


def _first_line(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        total = Path("/proc/meminfo").read_text().split()[1]
        memory = f"{int(total) / 1024 / 1024:.0f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    return {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "pg_dump": _first_line(["pg_dump", "--version"]),
        "redis-server": _first_line(["redis-server", "--version"]),
        "gzip": _first_line(["gzip", "--version"]),
        "pigz": _first_line(["pigz", "--version"]),
        "zstd": _first_line(["zstd", "--version"]),
        "gpg": _first_line(["gpg", "--version"]),
        "tar": _first_line(["tar", "--version"]),
        "python": platform.python_version(),
    }


def machine_table(info: dict[str, str]) -> list[str]:
    return [*table(["machine", ""], info.items()), ""]
