"""cleanup and list on generated histories: what counts as a backup, and exactly what survives.

BACKUP_DIR is filled with backup-looking files named at controlled times (days before now, in
TZ=UTC), each with a manifest and a ``.sha256`` that names it, mixed with junk: empty files,
folders, impossible dates, names in the future, files without a sidecar, foreign files, orphan
sidecars, stale partial files and old logs. The real rendered backup_script.sh runs on it; the
tests assert exactly which names survive and what the script says about each of the others.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import (
    BACKUP,
    EXTENSIONS,
    KEY,
    LIST_ROW,
    MakeEnv,
    RunScript,
    flip_middle_byte,
    folder_state,
    holding_the_lock,
    make_backup,
    name_of,
    names_in,
    only_backup,
    restamped_copy,
    run_ok,
    stamp,
    truncate_half,
    with_sidecars,
    write_sidecar,
)

UNVERIFIABLE = "unverifiable (no .sha256 sidecar that names it): not counted, not deleted"
FUTURE = "named in the future (clock skew or a TZ change?): not counted, not deleted"
DAMAGED_FIX = (
    "check it (restore_script.sh verify FILE), then move it and its sidecars out of BACKUP_DIR"
)
LAST_YEAR = datetime.now(UTC).year - 1
# month 13, February 30 and hour 25 are not dates (the checks must not be fooled by them)
IMPOSSIBLE = [f"{LAST_YEAR}1301_020000", f"{LAST_YEAR}0230_020000", f"{LAST_YEAR}0115_250000"]


def not_a_backup(why: str) -> str:
    return f"not a backup ({why}), left alone"


def damaged(why: str) -> str:
    return f"damaged ({why}): not counted, not deleted; {DAMAGED_FIX}"


def bad_date() -> str:
    return not_a_backup("the date in the name is not a valid date and time in UTC")


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def deletions(out: str, *, dry_run: bool) -> set[str]:
    """The names the run says it deleted (or, in a dry run, would delete)."""
    verb = "would delete" if dry_run else "deleted"
    return set(re.findall(rf"\[INFO\] {verb} (\S+): ", out))


def reports(out: str) -> dict[str, str]:
    """What the run says about names it did not count: name -> verdict."""
    return {
        name: verdict
        for name, verdict in re.findall(r"\[WARN\] (\S+): (.*)$", out, flags=re.MULTILINE)
        if "_backup_" in name
    }


def pruned(days: int, retention: int, keep_min: int) -> str:
    return (
        f"{days} days old, older than BACKUP_RETENTION_DAYS={retention} and not among the "
        f"newest KEEP_MIN={keep_min}"
    )


# ------------------------------------------------------------------------- a generated history


@dataclass
class History:
    """A BACKUP_DIR with a history of backups and junk, and what cleanup must make of it."""

    env: dict[str, str]
    backups: Path
    deleted: dict[str, str] = field(default_factory=dict)  # name -> the reason cleanup gives
    kept: set[str] = field(default_factory=set)
    reported: dict[str, str] = field(default_factory=dict)  # name -> what cleanup and list say
    counted: set[str] = field(default_factory=set)  # the backups: what list shows unmarked

    def backup(self, kind: str, days: float, *, deleted: bool = False) -> str:
        name = make_backup(self.backups, kind, stamp(days))
        self.counted.add(name)
        if deleted:
            self.deleted[name] = pruned(int(days), 30, 2)
            for sidecar in (".sha256", ".manifest.json"):
                self.deleted[name + sidecar] = f"sidecar of {name}"
        else:
            self.kept |= with_sidecars(name)
        return name

    def junk(self, name: str, verdict: str, data: bytes = b"x") -> None:
        (self.backups / name).write_bytes(data)
        self.kept.add(name)
        self.reported[name] = verdict


@pytest.fixture
def history(backup_env: MakeEnv, tmp_path: Path) -> History:
    """BACKUP_RETENTION_DAYS=30, KEEP_MIN=2; backups of each type at many ages, and junk."""
    backups = tmp_path / "backups"
    h = History(env=backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="2"), backups=backups)

    # postgresql: 12 hours ahead is still now (clock skew within a day), so the newest two are
    # that one and yesterday's; 10 days is young enough; 50, 100 and 200 days go.
    h.backup("postgresql", -0.5)
    h.backup("postgresql", 1)
    h.backup("postgresql", 10)
    for days in (50, 100, 200):
        h.backup("postgresql", days, deleted=True)

    # redis: a backup named 3 days ahead, an empty file and a file without a sidecar, all newer
    # than the real ones, take no KEEP_MIN slot: the real 100 and 200 stay, 300 goes.
    future = make_backup(backups, "redis", stamp(-3))
    h.kept |= with_sidecars(future)
    h.reported[future] = FUTURE
    h.junk(name_of("redis", stamp(1)), not_a_backup("an empty file"), b"")
    unsigned = make_backup(backups, "redis", stamp(2), sidecar=False)
    h.kept |= {unsigned, f"{unsigned}.manifest.json"}
    h.reported[unsigned] = UNVERIFIABLE
    h.backup("redis", 100)
    h.backup("redis", 200)
    h.backup("redis", 300, deleted=True)

    # files: one real backup, 40 days old, is the newest (and only) one: it stays. Everything
    # else is not counted and left alone, however old it looks.
    real = h.backup("files", 40)
    for when in IMPOSSIBLE:
        h.kept |= with_sidecars(make_backup(backups, "files", when))
        h.reported[name_of("files", when)] = bad_date()
    folder = name_of("files", stamp(400))
    (backups / folder).mkdir()
    (backups / folder / "inside").write_text("someone's folder\n")
    h.kept.add(folder)
    h.reported[folder] = not_a_backup("a folder")
    link = name_of("files", stamp(60))
    (backups / link).symlink_to(real)
    h.kept.add(link)
    h.reported[link] = not_a_backup("a symbolic link")
    misnamed = name_of("files", stamp(500))  # its .sha256 is another backup's
    shutil.copyfile(backups / real, backups / misnamed)
    shutil.copyfile(backups / f"{real}.sha256", backups / f"{misnamed}.sha256")
    h.kept |= {misnamed, f"{misnamed}.sha256"}
    h.reported[misnamed] = UNVERIFIABLE
    h.junk("files_backup_latest.tar.gz", not_a_backup("not a name this tool writes"))
    h.junk("redis_backup_20000101_000000.rdb", not_a_backup("not a name this tool writes"))

    # Not backup names at all: kept and not mentioned.
    for name in ("notes.txt", "backup.tar.gz", "postgres.partial"):
        (backups / name).write_text("someone else's\n")
        h.kept.add(name)

    # This tool's own leftovers: stale partial files, orphan sidecars, logs older than 7 days.
    stale = "stale partial file of an interrupted run"
    orphan = "sidecar of a backup that no longer exists"
    old_log = "log older than 7 days"
    leftovers = {
        f"postgresql_backup_{stamp(1)}.sql.gz.partial": stale,
        f"redis_backup_{stamp(1)}.rdb.partial": stale,
        f"files_backup_{stamp(2)}.tar.gz.sha256.partial": stale,
        f"files_backup_{stamp(3)}.tar.gz.sha256": orphan,
        f"redis_backup_{stamp(3)}.rdb.gz.gpg.manifest.json": orphan,
        f"backup.log.{(datetime.now(UTC) - timedelta(days=10)).strftime('%Y%m%d')}": old_log,
    }
    for name in leftovers:
        (backups / name).write_bytes(b"x")
    h.deleted |= leftovers
    recent_log = f"cron.log.{(datetime.now(UTC) - timedelta(days=2)).strftime('%Y%m%d')}"
    for log in (recent_log, f"restore.log.{LAST_YEAR}1301"):  # young, or no date: kept, silent
        (backups / log).write_text("kept\n")
        h.kept.add(log)

    assert names_in(backups) == h.kept | set(h.deleted)
    return h


@pytest.mark.parametrize("dry_run", [False, True], ids=["for-real", "dry-run"])
def test_cleanup_of_a_generated_history_deletes_exactly_the_expired_backups_and_leftovers(
    history: History, run_script: RunScript, dry_run: bool
) -> None:
    before = names_in(history.backups)

    result = run_ok(
        run_script, BACKUP, "cleanup", *(["--dry-run"] if dry_run else []), env=history.env
    )

    out = output(result)
    assert names_in(history.backups) == (before if dry_run else history.kept)
    assert deletions(out, dry_run=dry_run) == set(history.deleted)
    deleted, pruned_ = ("would delete", "would prune") if dry_run else ("deleted", "pruned")
    for name, reason in history.deleted.items():
        assert f"{deleted} {name}: {reason}\n" in out
    assert reports(out) == history.reported
    assert out.count("[WARN]") == len(history.reported), "the tool's own files are reported"
    for summary in ("postgresql: {} 3 of 6", "redis: {} 1 of 3", "files: {} 0 of 1"):
        assert summary.format(pruned_) + " backup(s)\n" in out


def test_list_shows_what_cleanup_sees(history: History, run_script: RunScript) -> None:
    result = run_ok(run_script, BACKUP, "list", env=history.env)

    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "CREATED", "SIZE", "ENCRYPTED", "FILE"]
    rows = [m for line in lines[1:-1] if (m := LIST_ROW.fullmatch(line))]
    others = [line for line in lines[1:-1] if not LIST_ROW.fullmatch(line)]
    noted = {m["name"]: m["note"] for m in rows if m["note"]}
    assert noted == {n: v for n, v in history.reported.items() if v in (FUTURE, UNVERIFIABLE)}
    assert {m["name"] for m in rows if not m["note"]} == history.counted
    stamps = [m["name"].split("_backup_")[1] for m in rows]
    assert stamps == sorted(stamps, reverse=True), "not newest first"
    assert dict(line.split(": ", 1) for line in others) == {
        n: v for n, v in history.reported.items() if v not in (FUTURE, UNVERIFIABLE)
    }
    per_type = {kind: sum(n.startswith(f"{kind}_") for n in history.counted) for kind in EXTENSIONS}
    assert lines[-1].startswith(
        f"{len(history.counted)} backup(s) (postgresql {per_type['postgresql']}, "
        f"redis {per_type['redis']}, files {per_type['files']}), "
    )


# ----------------------------------------------------------------- the reported reproductions


def test_an_empty_file_named_as_the_newest_backup_takes_no_keep_min_slot(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="1")
    backups = tmp_path / "backups"
    real = {days: make_backup(backups, "redis", stamp(days)) for days in (100, 200, 300)}
    empty = name_of("redis", stamp(1))
    (backups / empty).touch()

    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    assert names_in(backups) == with_sidecars(real[100]) | {empty}
    assert reports(output(result)) == {empty: not_a_backup("an empty file")}


@pytest.mark.parametrize("days", [1, 400], ids=["named-newest", "named-oldest"])
def test_a_folder_named_as_a_backup_is_left_alone_and_cleanup_finishes(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, days: int
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="1")
    backups = tmp_path / "backups"
    real = {age: make_backup(backups, "postgresql", stamp(age)) for age in (100, 200, 300)}
    folder = name_of("postgresql", stamp(days))
    (backups / folder).mkdir()

    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    assert names_in(backups) == with_sidecars(real[100]) | {folder}
    assert reports(output(result)) == {folder: not_a_backup("a folder")}


@pytest.mark.parametrize("when", IMPOSSIBLE, ids=["month-13", "february-30", "hour-25"])
def test_a_name_with_an_impossible_date_is_left_alone_and_cleanup_finishes(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, when: str
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="1")
    backups = tmp_path / "backups"
    real = {days: make_backup(backups, "files", stamp(days)) for days in (10, 100)}
    impossible = make_backup(backups, "files", when)

    for _ in range(2):  # every cleanup, not only the first
        result = run_ok(run_script, BACKUP, "cleanup", env=env)
        assert reports(output(result)) == {impossible: bad_date()}

    assert names_in(backups) == with_sidecars(real[10]) | with_sidecars(impossible)


@pytest.mark.parametrize("days_ahead", [3, 400])
def test_a_backup_named_in_the_future_takes_no_keep_min_slot_and_is_never_deleted(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, days_ahead: int
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="1")
    backups = tmp_path / "backups"
    real = {days: make_backup(backups, "redis", stamp(days)) for days in (100, 200)}
    future = make_backup(backups, "redis", stamp(-days_ahead))

    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    assert names_in(backups) == with_sidecars(real[100]) | with_sidecars(future)
    assert reports(output(result)) == {future: FUTURE}
    assert f"deleted {real[200]}: {pruned(200, 30, 1)}\n" in result.stdout


def test_a_backup_without_a_sidecar_is_unverifiable_never_counted_never_deleted(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="30", KEEP_MIN="1")
    backups = tmp_path / "backups"
    real = make_backup(backups, "postgresql", stamp(100))
    unsigned = {
        days: make_backup(backups, "postgresql", stamp(days), sidecar=False) for days in (1, 300)
    }
    before = names_in(backups)

    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    assert names_in(backups) == before
    assert real in before
    assert reports(output(result)) == dict.fromkeys(unsigned.values(), UNVERIFIABLE)
    assert "postgresql: pruned 0 of 1 backup(s)" in result.stdout


def restamped_history(
    backups: Path, kind: str, ages: tuple[int, ...], *, encrypted: bool
) -> dict[int, Path]:
    """Copies of the one real backup of ``kind`` the scripts made, named ``ages`` days old, with
    its manifest and a ``.sha256`` naming each copy; the original and its sidecars are removed."""
    real = only_backup(backups, kind, encrypted=encrypted)
    copies = {days: restamped_copy(real, stamp(days)) for days in ages}
    for name in with_sidecars(real.name):
        (backups / name).unlink()
    return copies


@dataclass
class Truncated:
    """Four copies of a real Redis backup, the three newest cut to half their size (their
    ``.sha256`` and manifest as the scripts wrote them), with BACKUP_RETENTION_DAYS=1, KEEP_MIN=3:
    the oldest is the only intact backup."""

    env: dict[str, str]
    backups: Path
    intact: Path
    damaged: dict[str, str]  # name -> what cleanup and list say of it


@pytest.fixture
def truncated(backup_env: MakeEnv, run_script: RunScript, tmp_path: Path) -> Truncated:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="1", KEEP_MIN="3")
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "redis", env=env)
    copies = restamped_history(backups, "redis", (300, 3, 2, 1), encrypted=False)
    stored = copies[300].stat().st_size
    reported = {}
    for days in (3, 2, 1):
        truncate_half(copies[days])
        size = copies[days].stat().st_size
        reported[copies[days].name] = damaged(f"{size} bytes, but its manifest says {stored}")
    return Truncated(env=env, backups=backups, intact=copies[300], damaged=reported)


@pytest.mark.parametrize("dry_run", [False, True], ids=["for-real", "dry-run"])
def test_backups_whose_size_is_not_their_manifests_take_no_keep_min_slot_and_are_not_deleted(
    truncated: Truncated, run_script: RunScript, dry_run: bool
) -> None:
    before = folder_state(truncated.backups)

    result = run_ok(
        run_script, BACKUP, "cleanup", *(["--dry-run"] if dry_run else []), env=truncated.env
    )

    out = output(result)
    assert folder_state(truncated.backups) == before
    assert deletions(out, dry_run=dry_run) == set()
    assert reports(out) == truncated.damaged
    assert (
        f"[WARN] cleanup left 3 damaged backup(s) in place, not counted as backups: "
        f"{' '.join(sorted(truncated.damaged))}; {DAMAGED_FIX}\n"
    ) in out
    assert f"redis: {'would prune' if dry_run else 'pruned'} 0 of 1 backup(s)\n" in out
    if dry_run:
        assert f"keep {truncated.intact.name}: newest 1/3 (KEEP_MIN)\n" in out


def test_list_marks_a_backup_whose_size_is_not_its_manifests_as_damaged(
    truncated: Truncated, run_script: RunScript
) -> None:
    result = run_ok(run_script, BACKUP, "list", env=truncated.env)

    lines = result.stdout.splitlines()
    rows = [m for line in lines[1:-1] if (m := LIST_ROW.fullmatch(line))]
    assert {m["name"]: m["note"] for m in rows} == {truncated.intact.name: None} | truncated.damaged
    assert lines[-1].startswith("1 backup(s) (postgresql 0, redis 1, files 0), ")


def test_damaged_backups_need_attention_until_a_cleanup_finds_none(
    truncated: Truncated, run_script: RunScript
) -> None:
    run_ok(run_script, BACKUP, "cleanup", env=truncated.env)

    status = run_script(BACKUP, "status", "--json", env=truncated.env)
    assert status.returncode == 7, output(status)
    [attention] = json.loads(status.stdout)["attention"]
    assert attention["alert"] == "damaged"
    assert all(name in attention["message"] for name in truncated.damaged)

    for name in truncated.damaged:  # the operator moves them away
        for path in with_sidecars(name):
            (truncated.backups / path).unlink()
    run_ok(run_script, BACKUP, "cleanup", env=truncated.env)

    assert (
        json.loads(run_ok(run_script, BACKUP, "status", "--json", env=truncated.env).stdout)[
            "attention"
        ]
        == []
    )


@pytest.mark.parametrize("dry_run", [False, True], ids=["for-real", "dry-run"])
def test_a_keep_min_backup_whose_sha256_is_wrong_gives_its_place_to_the_next_intact_one(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, dry_run: bool
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS="1", KEEP_MIN="2")
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "redis", env=env)
    copies = restamped_history(backups, "redis", (500, 400, 300, 3, 2, 1), encrypted=False)
    for days in (3, 2, 1):
        flip_middle_byte(copies[days])  # same size: only reading it shows the damage
    before = names_in(backups)

    result = run_ok(run_script, BACKUP, "cleanup", *(["--dry-run"] if dry_run else []), env=env)

    out = output(result)
    oldest = copies[500].name
    assert names_in(backups) == (before if dry_run else before - with_sidecars(oldest))
    assert deletions(out, dry_run=dry_run) == with_sidecars(oldest)
    wrong = damaged("its SHA-256 is not the one its .sha256 gives")
    assert reports(out) == {copies[days].name: wrong for days in (3, 2, 1)}
    assert f"{'would delete' if dry_run else 'deleted'} {oldest}: {pruned(500, 1, 2)}\n" in out
    assert "redis: the newest 2 backup(s), kept by KEEP_MIN=2, are intact" in out
    if dry_run:
        assert f"keep {copies[300].name}: newest 1/2 (KEEP_MIN)\n" in out
        assert f"keep {copies[400].name}: newest 2/2 (KEEP_MIN)\n" in out


@pytest.mark.parametrize("dry_run", [False, True], ids=["for-real", "dry-run"])
def test_junk_with_its_own_sha256_named_as_the_newest_backups_does_not_prune_the_real_ones(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, dry_run: bool
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY, BACKUP_RETENTION_DAYS="30", KEEP_MIN="3")
    backups = tmp_path / "backups"
    run_ok(run_script, BACKUP, "postgresql", env=env)
    real = restamped_history(backups, "postgresql", (100, 200, 300, 400), encrypted=True)
    junk = []
    for days in (1, 2, 3):  # no manifest: nothing to compare their size with
        path = backups / f"postgresql_backup_{stamp(days)}.sql.gz.gpg"
        path.write_bytes(b"junk\n")
        write_sidecar(path)
        junk.append(path.name)
    before = names_in(backups)

    result = run_ok(run_script, BACKUP, "cleanup", *(["--dry-run"] if dry_run else []), env=env)

    out = output(result)
    oldest = real[400].name
    assert names_in(backups) == (before if dry_run else before - with_sidecars(oldest))
    not_pgp = damaged("it does not start as an OpenPGP encrypted message")
    assert reports(out) == dict.fromkeys(junk, not_pgp)
    assert f"{'would delete' if dry_run else 'deleted'} {oldest}: {pruned(400, 30, 3)}\n" in out
    assert f"postgresql: {'would prune' if dry_run else 'pruned'} 1 of 4 backup(s)\n" in out


@pytest.mark.parametrize(
    ("retention", "kept", "gone"),
    [
        pytest.param("010", 9, 11, id="010-is-ten-days"),
        pytest.param("08", 7, 9, id="08-is-eight-days"),
    ],
)
def test_retention_days_with_a_leading_zero_are_decimal_days(
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
    retention: str,
    kept: int,
    gone: int,
) -> None:
    env = backup_env(tmp_path, BACKUP_RETENTION_DAYS=retention, KEEP_MIN="1")
    backups = tmp_path / "backups"
    newest = make_backup(backups, "files", stamp(0.1))
    young, old = (make_backup(backups, "files", stamp(days)) for days in (kept, gone))

    result = run_ok(run_script, BACKUP, "cleanup", env=env)

    assert names_in(backups) == with_sidecars(newest) | with_sidecars(young)
    assert f"deleted {old}: {pruned(gone, int(retention), 1)}\n" in result.stdout


def test_the_free_space_check_compares_with_the_last_real_backup_only(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path)
    backups = tmp_path / "backups"
    huge = backups / name_of("files", stamp(1))  # sparse, bigger than the free space, unsigned
    with huge.open("wb") as stream:
        stream.truncate(2 * shutil.disk_usage(backups).free + 2**30)
    try:
        run_ok(run_script, BACKUP, "files", env=env)

        made = [n for n in names_in(backups) if n.startswith("files_backup_") and n != huge.name]
        assert len(made) == 3, made  # the new backup and its two sidecars
        assert huge.stat().st_size > shutil.disk_usage(backups).free
    finally:
        # not left for pytest's kept folders: a copy that does not keep holes fills the disk
        huge.unlink()


@pytest.mark.parametrize("held", [True, False], ids=["while-a-run-holds-the-lock", "no-run"])
def test_a_dry_run_cleanup_calls_a_partial_file_stale_only_when_no_run_holds_the_lock(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path, held: bool
) -> None:
    env = backup_env(tmp_path)
    backups = tmp_path / "backups"
    partial = f"files_backup_{stamp(0)}.tar.gz.partial"
    (backups / partial).write_bytes(b"half written by the running backup")
    who = "backup full (pid 4242, started 2026-01-01T02:00:00+00:00)"

    with holding_the_lock(backups, who) if held else contextlib.nullcontext():
        result = run_ok(run_script, BACKUP, "cleanup", "--dry-run", env=env)

    out = output(result)
    if held:
        assert f"[INFO] {partial}: in use by the running run ({who}), not stale\n" in out
        assert deletions(out, dry_run=True) == set()
    else:
        assert deletions(out, dry_run=True) == {partial}
        assert f"would delete {partial}: stale partial file of an interrupted run\n" in out
    assert (backups / partial).exists()
