"""Settings: defaults, the .env file overlaid by the environment, and every validation rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from generator import config
from generator.config import MASK, SETTINGS, load_settings, next_runs
from generator.errors import ConfigError, UserError
from tests.support import write_env


def problems_of(
    env_file: Path | None, environ: dict[str, str], *, for_run: bool = False
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file, environ, for_run=for_run)
    return caught.value.problems


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = load_settings(None, {})
    for setting in SETTINGS:
        if not setting.secret:
            assert settings.values[setting.name] == setting.default
    assert settings.secrets == {}
    assert settings.values["TZ"] == "America/Argentina/Buenos_Aires"
    assert settings.values["BACKUP_SCHEDULE"] == "0 2 * * *"


def test_an_empty_restore_drill_schedule_turns_the_drill_off_and_an_unset_one_is_weekly(
    tmp_path: Path,
) -> None:
    assert load_settings(None, {}).values["RESTORE_DRILL_SCHEDULE"] == "30 4 * * 0"
    env_file = write_env(tmp_path, "RESTORE_DRILL_SCHEDULE=\nBACKUP_SCHEDULE=\n")
    settings = load_settings(env_file, {})
    assert settings.values["RESTORE_DRILL_SCHEDULE"] == ""
    assert settings.values["BACKUP_SCHEDULE"] == "0 2 * * *", "empty is the default elsewhere"
    assert (
        load_settings(None, {"RESTORE_DRILL_SCHEDULE": ""}).values["RESTORE_DRILL_SCHEDULE"] == ""
    )
    assert problems_of(None, {"RESTORE_DRILL_SCHEDULE": "30 25 * * 0"}) == [
        "RESTORE_DRILL_SCHEDULE: '30 25 * * 0' is not a valid cron expression, e.g. '0 2 * * *' "
        "for 02:00 every day."
    ]


def test_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path, "POSTGRES_HOST=from-file\nREDIS_PORT=7000\n")
    settings = load_settings(env_file, {"POSTGRES_HOST": "from-env"})
    assert settings.values["POSTGRES_HOST"] == "from-env"
    assert settings.values["REDIS_PORT"] == "7000"


def test_unknown_keys_are_ignored_but_near_misses_are_named(tmp_path: Path) -> None:
    env_file = write_env(tmp_path, "DJANGO_SECRET_KEY=x\nGYM_NAME=Club\nBACKUP_RETENTON_DAYS=30\n")
    problems = problems_of(env_file, {})
    assert problems == [
        "BACKUP_RETENTON_DAYS: unknown setting; did you mean BACKUP_RETENTION_DAYS? Rename it."
    ]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("POSTGRES_PORT", "abc", "POSTGRES_PORT: 'abc' is not a port; write digits only."),
        ("REDIS_PORT", "70000", "REDIS_PORT: 70000 is out of range; use 1 to 65535."),
        ("COMPRESSION_LEVEL", "0", "COMPRESSION_LEVEL: 0 is out of range; use 1 to 19."),
        ("COMPRESSION_LEVEL", "12", "COMPRESSION_LEVEL: 12 is out of range for gzip; use 1 to 9"),
        ("COMPRESSION", "lz4", "COMPRESSION: 'lz4' is not one of: gzip, zstd."),
        ("COMPRESSION_THREADS", "0", "COMPRESSION_THREADS: 0 is out of range; use 1 to 256."),
        ("KEEP_MIN", "0", "KEEP_MIN: 0 is out of range; use 1 to 10000."),
        ("BACKUP_RETENTION_DAYS", "-5", "BACKUP_RETENTION_DAYS: '-5' is not a whole number"),
        ("LOCK_TIMEOUT", "1.5", "LOCK_TIMEOUT: '1.5' is not a whole number"),
        ("BACKUP_SCHEDULE", "0 2 * *", "BACKUP_SCHEDULE: '0 2 * *' has 4 fields; a schedule has 5"),
        ("CLEANUP_SCHEDULE", "0 25 * * *", "CLEANUP_SCHEDULE: '0 25 * * *' is not a valid cron"),
        ("TZ", "Mars/Olympus", "TZ: 'Mars/Olympus' is not a time zone name"),
        ("TZ", "../../../etc/passwd", "TZ: '../../../etc/passwd' is a path, not a time zone"),
        ("TZ", "/etc/localtime", "TZ: '/etc/localtime' is a path, not a time zone name"),
        ("TZ", "zone.tab", "TZ: 'zone.tab' is not a time zone name"),
        ("BACKUP_DIR", "backups", "BACKUP_DIR: 'backups' is not an absolute path"),
        ("FILES_DIR", "./data", "FILES_DIR: './data' is not an absolute path"),
        ("POSTGRES_HOST", "db host", "POSTGRES_HOST: 'db host' is not a host name or address."),
        ("POSTGRES_DB", "gym;drop", "POSTGRES_DB: 'gym;drop' is not a valid name"),
    ],
)
def test_each_rule_reports_the_setting_and_how_to_fix_it(
    name: str, value: str, expected: str
) -> None:
    problems = problems_of(None, {name: value})
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_a_time_zone_name_that_links_out_of_the_zoneinfo_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zones = tmp_path / "zoneinfo"
    (zones / "Gym").mkdir(parents=True)
    outside = tmp_path / "not-a-zone"
    outside.write_bytes(b"TZif outside the zoneinfo folder")
    (zones / "Gym" / "Local").symlink_to(outside)
    monkeypatch.setattr(config, "ZONEINFO_DIR", zones)

    assert problems_of(None, {"TZ": "Gym/Local"}) == [
        f"TZ: 'Gym/Local' does not lead to a time zone file in {zones}; "
        "use one like 'America/Argentina/Buenos_Aires' or 'UTC'."
    ]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    env_file = write_env(
        tmp_path,
        "POSTGRES_PORT=x\nTZ=Nowhere/City\nBACKUP_SCHEDULE=often\nKEEP_MIN=none\n"
        "REDIS_PASWORD=oops\nENCRYPTION_KEY=k\nENCRYPTION_KEY_FILE=/run/secrets/k\n",
    )
    problems = problems_of(env_file, {}, for_run=True)
    named = sorted(p.split(":", 1)[0] for p in problems)
    assert named == sorted(
        [
            "POSTGRES_PORT",
            "TZ",
            "BACKUP_SCHEDULE",
            "KEEP_MIN",
            "REDIS_PASWORD",
            "ENCRYPTION_KEY",
            "POSTGRES_PASSWORD",
        ]
    )


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "ENCRYPTION_KEY"])
def test_a_secret_and_its_file_variant_together_are_an_error(secret: str) -> None:
    problems = problems_of(None, {secret: "x", f"{secret}_FILE": "/run/secrets/x"})
    assert problems == [
        f"{secret}: both {secret} and {secret}_FILE are set; keep only one of them."
    ]


def test_a_run_requires_the_postgres_password_but_generate_does_not() -> None:
    assert load_settings(None, {}).secrets == {}
    assert problems_of(None, {}, for_run=True) == [
        "POSTGRES_PASSWORD: required for a backup run; set POSTGRES_PASSWORD or "
        "POSTGRES_PASSWORD_FILE in the .env file."
    ]


def test_a_run_checks_that_secret_files_are_readable(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    ok = load_settings(None, {"POSTGRES_PASSWORD_FILE": str(secret)}, for_run=True)
    assert ok.secrets == {"POSTGRES_PASSWORD_FILE": str(secret)}
    missing = str(tmp_path / "nope")
    assert problems_of(None, {"POSTGRES_PASSWORD_FILE": missing}, for_run=True) == [
        f"POSTGRES_PASSWORD_FILE: {missing} does not exist or is not readable; fix the path."
    ]


def test_masked_settings_hide_secret_values_and_show_file_paths() -> None:
    settings = load_settings(
        None, {"POSTGRES_PASSWORD": "hunter2", "ENCRYPTION_KEY_FILE": "/run/secrets/key"}
    )
    shown = settings.masked()
    assert shown["POSTGRES_PASSWORD"] == MASK
    assert shown["ENCRYPTION_KEY_FILE"] == "/run/secrets/key"
    assert shown["REDIS_PASSWORD"] == "(not set)"
    assert "hunter2" not in repr(shown)
    assert settings.encrypted


def test_empty_values_in_the_env_file_mean_the_default(tmp_path: Path) -> None:
    env_file = write_env(tmp_path, "POSTGRES_HOST=\nREDIS_PASSWORD=\nENCRYPTION_KEY=\n")
    settings = load_settings(env_file, {})
    assert settings.values["POSTGRES_HOST"] == "postgres"
    assert not settings.encrypted


def test_env_file_values_keep_quotes_dollars_and_spaces_literally(tmp_path: Path) -> None:
    env_file = write_env(tmp_path, "POSTGRES_PASSWORD='a $b \"c\" `d`'\n")
    settings = load_settings(env_file, {})
    assert settings.secrets["POSTGRES_PASSWORD"] == 'a $b "c" `d`'


def test_a_missing_env_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such \.env file"):
        load_settings(tmp_path / "missing.env", {})


def test_next_runs_are_in_the_configured_time_zone() -> None:
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    runs = next_runs("0 2 * * *", "America/Argentina/Buenos_Aires", start=start)
    assert [r.isoformat() for r in runs] == [
        "2026-11-28T02:00:00-03:00",
        "2026-11-29T02:00:00-03:00",
        "2026-11-30T02:00:00-03:00",
    ]


def test_a_lowercase_key_is_named_with_its_capital_spelling(tmp_path: Path) -> None:
    env_file = write_env(tmp_path, "encryption_key=secret\n")
    assert problems_of(env_file, {}) == [
        "encryption_key: settings are written in capitals; rename it ENCRYPTION_KEY."
    ]


def test_a_run_refuses_an_empty_secret_file(tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n")
    problems = problems_of(
        None, {"POSTGRES_PASSWORD": "x", "ENCRYPTION_KEY_FILE": str(empty)}, for_run=True
    )
    assert problems == [
        f"ENCRYPTION_KEY_FILE: {empty} is empty; put the ENCRYPTION_KEY in it, "
        "or unset ENCRYPTION_KEY_FILE."
    ]


def test_a_public_key_recipient_is_an_absolute_path_and_turns_public_key_encryption_on() -> None:
    assert load_settings(None, {}).encryption == "none"
    settings = load_settings(None, {"ENCRYPTION_RECIPIENT": "/run/gym-backup/public.asc"})
    assert settings.encryption == "public-key"
    assert settings.encrypted
    assert problems_of(None, {"ENCRYPTION_RECIPIENT": "public.asc"}) == [
        "ENCRYPTION_RECIPIENT: 'public.asc' is not an absolute path; write it starting with '/'."
    ]


@pytest.mark.parametrize("key", ["ENCRYPTION_KEY", "ENCRYPTION_KEY_FILE"])
def test_a_passphrase_and_a_public_key_together_are_refused_as_ambiguous(key: str) -> None:
    environ = {"ENCRYPTION_RECIPIENT": "/keys/public.asc", key: "/run/secrets/k"}
    assert problems_of(None, environ) == [config.BOTH_KEYS_PROBLEM]
    assert "ENCRYPTION_KEY_PREVIOUS" in config.BOTH_KEYS_PROBLEM


def test_only_the_key_settings_may_span_lines() -> None:
    multiline = {"DECRYPTION_KEY": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxyz\n"}
    multiline["ENCRYPTION_KEY_PREVIOUS"] = "first\nsecond"
    assert load_settings(None, multiline).secrets == multiline
    assert problems_of(None, {"ENCRYPTION_KEY": "one\ntwo"}) == [
        "ENCRYPTION_KEY: contains a line break or NUL byte; use a single-line value."
    ]


@pytest.mark.parametrize(
    ("targets", "problem"),
    [
        ("offsite", "'offsite' is not NAME=remote:path or NAME=/path"),
        ("Off=/mnt/usb", "the target name 'Off' is not made of a-z, 0-9, _ and -"),
        ("a=/x,a=/y", "the target name 'a' is given twice"),
        ("a=relative/path", "'relative/path' is neither an absolute path nor remote:path"),
        ("a=:s3,access_key_id=AKIA:bucket", "':s3' is neither an absolute path nor remote:path"),
    ],
)
def test_replica_targets_are_checked_entry_by_entry(targets: str, problem: str) -> None:
    (found,) = problems_of(None, {"REPLICA_TARGETS": targets})
    assert found.startswith("REPLICA_TARGETS: ")
    assert problem in found


def test_config_check_finds_each_target_remote_in_the_config_file_or_rclone_variables(
    tmp_path: Path,
) -> None:
    rclone_conf = tmp_path / "rclone.conf"
    rclone_conf.write_text("[nas]\ntype = sftp\nhost = 192.0.2.1\n\n[ s3-eu ]\ntype = s3\n")
    given = {
        "POSTGRES_PASSWORD": "x",
        "REPLICA_RCLONE_CONFIG_FILE": str(rclone_conf),
        "REPLICA_TARGETS": "a=nas:/gym, b=offsite-eu:gym, usb=/mnt/usb, c=:local:/tmp/x",
    }
    (problem,) = problems_of(None, given, for_run=True)
    assert "b: the rclone remote 'offsite-eu' is not defined" in problem
    assert "RCLONE_CONFIG_OFFSITE_EU_TYPE is not set" in problem
    # rclone's own variable defines it; it is passed to the scripts, never shown
    settings = load_settings(None, {**given, "RCLONE_CONFIG_OFFSITE_EU_TYPE": "s3"}, for_run=True)
    assert settings.environment()["RCLONE_CONFIG_OFFSITE_EU_TYPE"] == "s3"
    assert settings.masked()["RCLONE_CONFIG_OFFSITE_EU_TYPE"] == MASK
    # a file that is not there
    missing = problems_of(
        None, {**given, "REPLICA_RCLONE_CONFIG_FILE": str(tmp_path / "nope")}, for_run=True
    )
    assert missing == [
        f"REPLICA_RCLONE_CONFIG_FILE: {tmp_path / 'nope'} does not exist or is not readable; "
        "fix the path."
    ]
