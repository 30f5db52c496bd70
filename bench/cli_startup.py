"""Benchmark: how long ``gym-backup --help``, ``--version`` and ``config check`` take to start.

Not a test: run ``make bench`` (or ``python bench/cli_startup.py --runs N``). It runs the installed
``gym-backup`` command N times each, in a clean environment from a scratch folder, and prints the
median and fastest wall time and the median CPU time (user + system, less disturbed by other load
on the machine) against the target: under 0.3 s. These commands load neither the renderer
(jinja2) nor ``sh``; ``python -X importtime`` shows where the rest of the time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.3


def gym_backup() -> str:
    """The installed command: beside this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "gym-backup"
    found = str(beside) if beside.is_file() else shutil.which("gym-backup")
    if found is None:
        sys.exit("gym-backup is not installed: run `make install` first.")
    return found


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (median)")
    options = parser.parse_args()
    program = gym_backup()
    with tempfile.TemporaryDirectory(prefix="gym-bench-cli-") as tmp:
        work = Path(tmp)
        env_file = work / ".env"
        example = (ROOT / ".env.example").read_text(encoding="utf-8")
        env_file.write_text(f"{example}\nPOSTGRES_PASSWORD=bench pw\n", encoding="utf-8")
        env = {"PATH": os.environ["PATH"], "HOME": str(work), "LANG": "C.UTF-8"}
        commands = {
            "gym-backup --help": ["--help"],
            "gym-backup --version": ["--version"],
            "gym-backup config check": ["config", "check", "--env", str(env_file)],
        }
        print(f"{options.runs} runs each; target: under {TARGET_SECONDS} s")
        print(f"{'command':<26} {'median s':>9} {'min s':>7} {'cpu s':>7}  target")
        timed([program, "--version"], work, env)  # warm the caches (bytecode, files)
        for label, args in commands.items():
            runs = [timed([program, *args], work, env) for _ in range(options.runs)]
            wall = statistics.median(w for w, _ in runs)
            fastest = min(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            verdict = "ok" if wall < TARGET_SECONDS else "OVER"
            print(f"{label:<26} {wall:9.3f} {fastest:7.3f} {cpu:7.3f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
