"""Tiered retention (KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY) on generated histories.

The histories are fixed dates in the past, in TZ=America/Argentina/Buenos_Aires (the default;
UTC-3, so a run at 23:58 there is already the next day in UTC): half a year of nightly
PostgreSQL backups at 02:00 with a failed week, failed days, days with several runs, runs just
before and after midnight, and the ISO week that spans New Year (Monday 2024-12-30 is in
2025-W01); beside them a weekly Redis backup (Sundays). The tiers depend only on the dates in the
names, so with BACKUP_RETENTION_DAYS=1 and KEEP_MIN=1 each policy keeps exactly the backups
written out below, found by hand from a calendar. Where the age rule is combined with the tiers,
BACKUP_RETENTION_DAYS is counted from today so that its limit falls on the two failed days
2025-02-10 and 2025-02-11, whatever the time of day.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support import (
    BACKUP,
    BACKUP_NAME,
    MakeEnv,
    RunScript,
    make_backup,
    name_of,
    names_in,
    run_ok,
    stamp,
    with_sidecars,
)

ZONE = "America/Argentina/Buenos_Aires"
NIGHTLY = "020000"
# The nightly run failed: a whole ISO week (2024-W41, Monday to Sunday), two days in February,
# and two nights whose only backup is a run just after midnight (below).
FAILED = {date(2024, 10, 7) + timedelta(days=n) for n in range(7)} | {
    date(2025, 2, 10),
    date(2025, 2, 11),
    date(2024, 12, 1),
    date(2025, 2, 21),
}
EXTRA_RUNS = (
    "20240615_020000",  # a lone backup, two months before the nightly ones start
    "20241130_235800",  # the last run of November, 02:58 on December 1st in UTC
    "20241201_000700",  # just after midnight: December 1st's only backup
    "20250220_235800",
    "20250221_000700",  # February 21st's only backup
    "20250227_113000",  # three runs on February 27th
    "20250227_194500",
    "20250228_130000",  # two on February 28th: this one is the newest backup
)
SUNDAYS = [date(2025, 2, 23) - timedelta(weeks=n) for n in range(26)]  # back to 2024-09-01


def nightly(day: date) -> str:
    return f"{day:%Y%m%d}_{NIGHTLY}"


def postgresql_history() -> list[str]:
    days = [date(2024, 9, 1) + timedelta(days=n) for n in range(181)]  # to 2025-02-28
    assert days[-1] == date(2025, 2, 28)
    return sorted([nightly(d) for d in days if d not in FAILED] + list(EXTRA_RUNS))


def redis_history() -> list[str]:
    return sorted(f"{d:%Y%m%d}_030000" for d in SUNDAYS)


# What each tier keeps of the histories, newest first.
DAILY_18 = {
    "postgresql": [
        "20250228_130000",
        "20250227_194500",
        *(nightly(date(2025, 2, d)) for d in range(26, 21, -1)),
        "20250221_000700",
        "20250220_235800",
        *(nightly(date(2025, 2, d)) for d in range(19, 11, -1)),
        nightly(date(2025, 2, 9)),  # the 18th day: the 11th and 10th had no backup
    ],
    "redis": [f"{d:%Y%m%d}_030000" for d in SUNDAYS[:18]],  # days without a backup take no place
}
WEEKLY_22 = {
    "postgresql": [
        "20250228_130000",  # 2025-W09
        *(nightly(date(2025, 2, d)) for d in (23, 16, 9, 2)),  # W08 to W05
        *(nightly(date(2025, 1, d)) for d in (26, 19, 12, 5)),  # W04 to W01 (Dec 30 to Jan 5)
        nightly(date(2024, 12, 29)),  # 2024-W52
        nightly(date(2024, 12, 22)),
        nightly(date(2024, 12, 15)),
        nightly(date(2024, 12, 8)),
        "20241201_000700",  # 2024-W48 ends on Sunday December 1st, after midnight
        *(nightly(date(2024, 11, d)) for d in (24, 17, 10, 3)),
        nightly(date(2024, 10, 27)),
        nightly(date(2024, 10, 20)),  # 2024-W42; W41 has no backup and takes no place
        nightly(date(2024, 10, 6)),
        nightly(date(2024, 9, 29)),  # the 22nd week, 2024-W39
    ],
    "redis": [f"{d:%Y%m%d}_030000" for d in SUNDAYS[:22]],
}
MONTHLY_7 = {
    "postgresql": [
        "20250228_130000",
        nightly(date(2025, 1, 31)),
        nightly(date(2024, 12, 31)),
        "20241130_235800",  # November's newest: 23:58 in TZ, whatever the day is in UTC
        nightly(date(2024, 10, 31)),
        nightly(date(2024, 9, 30)),
        "20240615_020000",  # July and August have no backup and take no place
    ],
    "redis": [  # the last Sunday of each of the 6 months that have one
        f"{d:%Y%m%d}_030000"
        for d in (
            date(2025, 2, 23),
            date(2025, 1, 26),
            date(2024, 12, 29),
            date(2024, 11, 24),
            date(2024, 10, 27),
            date(2024, 9, 29),
        )
    ],
}


def tier_names(kept: dict[str, list[str]]) -> set[str]:
    return {name_of(kind, when) for kind, stamps in kept.items() for when in stamps}


@dataclass
class History:
    """BACKUP_DIR holding the generated histories; the environment of the runs."""

    backups: Path
    env: dict[str, str]
    names: set[str]  # every backup's name

    def left(self) -> set[str]:
        """The backups still in BACKUP_DIR (each must still have both sidecars)."""
        present = names_in(self.backups)
        kept = {n for n in present if BACKUP_NAME.fullmatch(n)}
        assert present == {s for n in kept for s in with_sidecars(n)}, "a sidecar left alone"
        return kept


@pytest.fixture
def history(backup_env: MakeEnv, tmp_path: Path) -> History:
    env = backup_env(tmp_path, TZ=ZONE, BACKUP_RETENTION_DAYS="1", KEEP_MIN="1")
    backups = tmp_path / "backups"
    names = {make_backup(backups, "postgresql", when) for when in postgresql_history()}
    names |= {make_backup(backups, "redis", when) for when in redis_history()}
    assert len(names) == 181 - len(FAILED) + len(EXTRA_RUNS) + len(SUNDAYS)
    return History(backups=backups, env=env, names=names)


DECISION = re.compile(r"\[INFO\] (keep|would delete|deleted) (\S+): (.*)$", re.MULTILINE)


def decisions(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """What cleanup says of each backup: name -> (keep, would delete or deleted; the reason)."""
    found: dict[str, tuple[str, str]] = {}
    for verb, name, reason in DECISION.findall(result.stdout):
        if BACKUP_NAME.fullmatch(name):
            assert name not in found, f"{name} is decided on twice"
            found[name] = (verb, reason)
    return found


def cleanup(
    run_script: RunScript, h: History, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    return run_ok(run_script, BACKUP, "cleanup", *args, env={**h.env, **settings})


# ------------------------------------------------------------------------- each tier alone


@pytest.mark.parametrize(
    ("settings", "kept"),
    [
        pytest.param({"KEEP_DAILY": "18"}, DAILY_18, id="daily"),
        pytest.param({"KEEP_WEEKLY": "22"}, WEEKLY_22, id="weekly"),
        pytest.param({"KEEP_MONTHLY": "7"}, MONTHLY_7, id="monthly"),
    ],
)
def test_a_tier_keeps_the_newest_backup_of_each_of_its_n_most_recent_periods_with_a_backup(
    history: History,
    run_script: RunScript,
    settings: dict[str, str],
    kept: dict[str, list[str]],
) -> None:
    result = cleanup(run_script, history, **settings)

    assert history.left() == tier_names(kept)
    gone = history.names - tier_names(kept)
    assert {n for n, (verb, _) in decisions(result).items() if verb == "deleted"} == gone
    for kind in ("postgresql", "redis"):
        total = sum(n.startswith(f"{kind}_") for n in history.names)
        pruned = total - len(kept[kind])
        assert f"{kind}: pruned {pruned} of {total} backup(s)\n" in result.stdout


def test_without_tiers_only_keep_min_keeps_old_backups(
    history: History, run_script: RunScript
) -> None:
    cleanup(run_script, history, KEEP_MIN="2")

    assert history.left() == {
        name_of("postgresql", "20250228_130000"),
        name_of("postgresql", "20250228_020000"),
        name_of("redis", "20250223_030000"),
        name_of("redis", "20250216_030000"),
    }


def test_the_week_of_new_year_is_one_iso_week_and_keeps_one_backup(
    history: History, run_script: RunScript
) -> None:
    # 2024-W52 is Dec 23-29; Monday Dec 30 and Tuesday Dec 31 belong to 2025-W01 with Jan 1-5.
    cleanup(run_script, history, KEEP_WEEKLY="22")

    around_new_year = {
        n
        for n in history.left()
        if n.startswith("postgresql_") and "20241223" <= n.split("_")[2] <= "20250112"
    }
    assert around_new_year == {
        name_of("postgresql", nightly(date(2024, 12, 29))),
        name_of("postgresql", nightly(date(2025, 1, 5))),
        name_of("postgresql", nightly(date(2025, 1, 12))),
    }


def test_a_day_is_the_day_of_the_name_in_tz_not_in_utc(
    history: History, run_script: RunScript
) -> None:
    # 23:58 on Feb 20 and 00:07 on Feb 21 in TZ are both Feb 21 in UTC: each is its own day.
    result = cleanup(run_script, history, "--dry-run", KEEP_DAILY="9")

    said = decisions(result)
    late, early = name_of("postgresql", "20250220_235800"), name_of("postgresql", "20250221_000700")
    assert said[early] == ("keep", "daily 8/9 (2025-02-21)")
    assert said[late] == ("keep", "daily 9/9 (2025-02-20)")
    nightly_20 = name_of("postgresql", nightly(date(2025, 2, 20)))
    assert said[nightly_20][0] == "would delete"


# ----------------------------------------------------------- tiers with age and KEEP_MIN


def retention_limit_on(day: date) -> str:
    """The BACKUP_RETENTION_DAYS whose limit falls on ``day``, at the time of day it is now."""
    return str((datetime.now(ZoneInfo(ZONE)).date() - day).days)


# BACKUP_RETENTION_DAYS keeps everything from Feb 12 on (its limit is on the failed Feb 11);
# KEEP_MIN=23 the 21 backups of Feb 12 to 28 and two more; KEEP_WEEKLY=6 and KEEP_MONTHLY=4.
COMBINED = {"KEEP_MIN": "23", "KEEP_WEEKLY": "6", "KEEP_MONTHLY": "4"}
BY_AGE = {n for n in postgresql_history() if n >= "20250212"}
BY_KEEP_MIN = {nightly(date(2025, 2, 9)), nightly(date(2025, 2, 8))}
BY_WEEKLY = {nightly(date(2025, 2, 2)), nightly(date(2025, 1, 26))}  # W09 to W06: within the rest
BY_MONTHLY = {nightly(date(2025, 1, 31)), nightly(date(2024, 12, 31)), "20241130_235800"}


@pytest.fixture
def combined(history: History) -> History:
    history.env |= COMBINED | {"BACKUP_RETENTION_DAYS": retention_limit_on(date(2025, 2, 11))}
    return history


def test_a_backup_is_kept_when_any_rule_keeps_it(combined: History, run_script: RunScript) -> None:
    assert len(BY_AGE) == 21

    cleanup(run_script, combined)

    kept = {n.split("_backup_")[1].split(".")[0] for n in combined.left() if "postgresql" in n}
    assert kept == BY_AGE | BY_KEEP_MIN | BY_WEEKLY | BY_MONTHLY


def test_a_dry_run_names_the_rules_that_keep_each_backup_and_deletes_nothing(
    combined: History, run_script: RunScript
) -> None:
    before = names_in(combined.backups)
    days = combined.env["BACKUP_RETENTION_DAYS"]

    result = cleanup(run_script, combined, "--dry-run")

    assert names_in(combined.backups) == before
    said = decisions(result)
    assert set(said) == combined.names, "every backup of every type is decided on"
    pg = {n.split("_backup_")[1].split(".")[0]: d for n, d in said.items() if "postgresql" in n}
    assert {s for s, (verb, _) in pg.items() if verb == "keep"} == (
        BY_AGE | BY_KEEP_MIN | BY_WEEKLY | BY_MONTHLY
    )
    age = rf"within BACKUP_RETENTION_DAYS={days} \(\d+ days old\)"
    assert re.fullmatch(
        rf"{age}, newest 1/23 \(KEEP_MIN\), weekly 1/6 \(2025-W09\), monthly 1/4 \(2025-02\)",
        pg["20250228_130000"][1],
    )
    assert re.fullmatch(rf"{age}, newest 21/23 \(KEEP_MIN\)", pg["20250212_020000"][1])
    assert pg["20250209_020000"] == ("keep", "newest 22/23 (KEEP_MIN), weekly 4/6 (2025-W06)")
    assert pg["20250208_020000"] == ("keep", "newest 23/23 (KEEP_MIN)")
    assert pg["20250126_020000"] == ("keep", "weekly 6/6 (2025-W04)")
    assert pg["20250131_020000"] == ("keep", "monthly 2/4 (2025-01)")
    assert pg["20241130_235800"] == ("keep", "monthly 4/4 (2024-11)")
    verb, reason = pg["20241130_020000"]
    assert verb == "would delete"
    assert re.fullmatch(
        rf"\d+ days old, older than BACKUP_RETENTION_DAYS={days}, not among the newest "
        r"KEEP_MIN=23 and kept by none of KEEP_WEEKLY=6, KEEP_MONTHLY=4",
        reason,
    )
    assert "postgresql: would prune 150 of 178 backup(s)\n" in result.stdout


def test_the_real_run_deletes_what_the_dry_run_said_for_the_same_reasons(
    combined: History, run_script: RunScript
) -> None:
    dry = decisions(cleanup(run_script, combined, "--dry-run"))

    real = decisions(cleanup(run_script, combined))

    assert real == {n: ("deleted", r) for n, (v, r) in dry.items() if v == "would delete"}
    assert combined.left() == {n for n, (v, _) in dry.items() if v == "keep"}


# ------------------------------------------------------------------------ the safety rules


def test_names_in_the_future_and_unverifiable_ones_take_no_tier_place(
    history: History, run_script: RunScript
) -> None:
    future = make_backup(history.backups, "postgresql", stamp(-3))
    unsigned = make_backup(history.backups, "postgresql", "20250301_020000", sidecar=False)

    result = cleanup(run_script, history, KEEP_DAILY="2", KEEP_WEEKLY="1", KEEP_MONTHLY="1")

    kept = {
        name_of("postgresql", "20250228_130000"),
        name_of("postgresql", "20250227_194500"),
        name_of("redis", "20250223_030000"),
        name_of("redis", "20250216_030000"),
        future,
    }
    assert names_in(history.backups) == {s for n in kept for s in with_sidecars(n)} | {
        unsigned,
        f"{unsigned}.manifest.json",
    }
    assert future not in decisions(result)
    assert unsigned not in decisions(result)


@pytest.mark.parametrize("setting", ["KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY"])
@pytest.mark.parametrize("value", ["-1", "x", "10001"])
def test_a_tier_that_is_not_a_count_is_refused_and_nothing_is_deleted(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, setting: str, value: str
) -> None:
    env = {**backup_env(tmp_path, BACKUP_RETENTION_DAYS="1", KEEP_MIN="1"), setting: value}
    backups = tmp_path / "backups"
    old = {make_backup(backups, "files", when) for when in ("20250101_020000", "20250102_020000")}

    result = run_script(BACKUP, "cleanup", env=env)

    assert result.returncode == 6
    assert f"{setting}: '{value}' must be a whole number from 0 to 10000" in result.stderr
    assert names_in(backups) == {s for n in old for s in with_sidecars(n)}
