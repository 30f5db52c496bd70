"""Settings: the ``.env`` file overlaid by the process environment, validated at the boundary.

``SETTINGS`` is the one table of every setting of the service (the README repeats it, and a test
keeps the two equal). :func:`load_settings` reports **all** problems at once, one
``NAME: problem and how to fix it`` line each.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from croniter import croniter
from dotenv import dotenv_values

from generator.backup_types import CODEC_BY_NAME, CODECS, DEFAULT_CODEC
from generator.errors import ConfigError, UserError


class Kind(enum.Enum):
    """How a setting's value is validated."""

    TEXT = "text"
    HOST = "host"
    NAME = "name"
    PORT = "port"
    INT = "int"
    CRON = "cron"
    TZ = "tz"
    ABS_PATH = "abs_path"
    PATTERNS = "patterns"
    BOOL = "bool"
    CHOICE = "choice"
    IMAGE = "image"
    SECRET = "secret"  # noqa: S105 - the kind of a setting, not a password
    TARGETS = "targets"
    BWLIMIT = "bwlimit"


@dataclass(frozen=True)
class Setting:
    """One setting of the service: its name, default and the rule its value must follow."""

    name: str
    default: str | None
    kind: Kind
    help: str
    minimum: int | None = None
    maximum: int | None = None
    required_for_run: bool = False
    choices: tuple[str, ...] = ()  # a CHOICE setting's values
    # Set to empty, it is empty (a schedule turned off), not its default; unset, it has its default.
    empty_is_off: bool = False
    # A secret whose value may span lines (a private key, a list of passphrases).
    multiline: bool = False

    @property
    def secret(self) -> bool:
        """Secrets are read at run time, from the variable or from the file its ``_FILE`` names."""
        return self.kind is Kind.SECRET


# PG_MAJOR's default: the PostgreSQL client each image flavour installs from its own distribution
# (Alpine 3.20 and Debian bookworm), so that each flavour builds without another repository.
FLAVOR_PG_MAJOR: Mapping[str, str] = {"alpine": "16", "debian": "15"}

# The range of each retention tier (KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY): how many days, weeks
# or months it keeps a backup of; 0 turns it off.
TIER_RANGE = (0, 10000)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "POSTGRES_HOST", "postgres", Kind.HOST, "PostgreSQL server to dump (compose service name)."
    ),
    Setting("POSTGRES_PORT", "5432", Kind.PORT, "PostgreSQL port."),
    Setting("POSTGRES_DB", "gym_secure_db", Kind.NAME, "Database to back up."),
    Setting("POSTGRES_USER", "gym_secure_user", Kind.NAME, "Role that runs pg_dump."),
    Setting(
        "POSTGRES_PASSWORD",
        None,
        Kind.SECRET,
        "Password of POSTGRES_USER; required for a backup run.",
        required_for_run=True,
    ),
    Setting(
        "POSTGRES_ADMIN_USER",
        "",
        Kind.NAME,
        "Role that creates and drops databases for 'restore --target-db' and 'verify --deep', "
        "and the roles a restore onto a new server lacks, with no more power than an "
        "application role (empty: POSTGRES_USER, which then needs CREATEDB, CREATEROLE); never "
        "used for backups or to load a dump.",
    ),
    Setting(
        "POSTGRES_ADMIN_PASSWORD",
        None,
        Kind.SECRET,
        "Password of POSTGRES_ADMIN_USER.",
    ),
    Setting("REDIS_HOST", "redis", Kind.HOST, "Redis server to snapshot (compose service name)."),
    Setting("REDIS_PORT", "6379", Kind.PORT, "Redis port."),
    Setting("REDIS_PASSWORD", None, Kind.SECRET, "Redis password, if the server requires one."),
    Setting("BACKUP_SCHEDULE", "0 2 * * *", Kind.CRON, "When the full backup runs (cron, in TZ)."),
    Setting(
        "CLEANUP_SCHEDULE", "0 3 * * 0", Kind.CRON, "When old backups are pruned (cron, in TZ)."
    ),
    Setting(
        "RESTORE_DRILL_SCHEDULE",
        "30 4 * * 0",
        Kind.CRON,
        "When the restore drill runs: 'backup_script.sh drill', a verify --deep of the newest "
        "backup of each type (cron, in TZ; set it empty for no drill).",
        empty_is_off=True,
    ),
    Setting(
        "BACKUP_RETENTION_DAYS",
        "90",
        Kind.INT,
        "Backups older than this many days are pruned.",
        minimum=1,
        maximum=36500,
    ),
    Setting(
        "ENCRYPTION_KEY",
        None,
        Kind.SECRET,
        "Passphrase for GPG AES256 encryption; unset (and no ENCRYPTION_RECIPIENT) means "
        "unencrypted backups.",
    ),
    Setting(
        "ENCRYPTION_RECIPIENT",
        "",
        Kind.ABS_PATH,
        "OpenPGP public key file (armored or binary, one key, mounted read-only): backups are "
        "encrypted to it (GPG AES256) and this host cannot read them back; restores then need "
        "DECRYPTION_KEY_FILE. Not together with ENCRYPTION_KEY.",
    ),
    Setting(
        "ENCRYPTION_KEY_PREVIOUS",
        None,
        Kind.SECRET,
        "Older ENCRYPTION_KEY passphrases, one a line, tried after ENCRYPTION_KEY when a "
        "backup is decrypted (never to encrypt): backups made before a key change keep "
        "restoring.",
        multiline=True,
    ),
    Setting(
        "DECRYPTION_KEY",
        None,
        Kind.SECRET,
        "The OpenPGP private key(s) (armored) of ENCRYPTION_RECIPIENT, older ones too, for "
        "restores of public-key backups; give it (as DECRYPTION_KEY_FILE) only when "
        "restoring, never to the service.",
        multiline=True,
    ),
    Setting(
        "DECRYPTION_KEY_PASSPHRASE",
        None,
        Kind.SECRET,
        "Passphrase of the private key in DECRYPTION_KEY, if it has one.",
    ),
    Setting(
        "TZ",
        "America/Argentina/Buenos_Aires",
        Kind.TZ,
        "Time zone of schedules and backup file names.",
    ),
    Setting("BACKUP_DIR", "/backups", Kind.ABS_PATH, "Folder the backups and logs are written to."),
    Setting(
        "FILES_DIR", "/data", Kind.ABS_PATH, "Folder whose contents the files backup archives."
    ),
    Setting(
        "FILES_EXCLUDE",
        "",
        Kind.PATTERNS,
        "Comma-separated tar patterns left out of the files backup (e.g. '*.tmp,cache').",
    ),
    Setting(
        "COMPRESSION",
        DEFAULT_CODEC,
        Kind.CHOICE,
        "How new backups are compressed: "
        + " or ".join(c.name for c in CODECS)
        + " (older backups of either kind keep restoring).",
        choices=tuple(c.name for c in CODECS),
    ),
    Setting(
        "COMPRESSION_LEVEL",
        "",
        Kind.INT,
        "Level of COMPRESSION, on its own scale: "
        + "; ".join(f"{c.name} {c.levels[0]} (fast) to {c.levels[1]} (small)" for c in CODECS)
        + " (empty: "
        + ", ".join(f"{c.default_level} for {c.name}" for c in CODECS)
        + ").",
        minimum=min(c.levels[0] for c in CODECS),
        maximum=max(c.levels[1] for c in CODECS),
    ),
    Setting(
        "COMPRESSION_THREADS",
        "",
        Kind.INT,
        "Threads the compressor may use (empty: every core).",
        minimum=1,
        maximum=256,
    ),
    Setting(
        "KEEP_MIN",
        "3",
        Kind.INT,
        "Newest backups of each type that cleanup never deletes.",
        minimum=1,
        maximum=10000,
    ),
    Setting(
        "KEEP_DAILY",
        "0",
        Kind.INT,
        "Cleanup keeps each type's newest backup of each of the N most recent days that have "
        "one, in TZ (0: off; as restic's --keep-daily).",
        *TIER_RANGE,
    ),
    Setting(
        "KEEP_WEEKLY",
        "0",
        Kind.INT,
        "Cleanup keeps each type's newest backup of each of the N most recent ISO weeks that "
        "have one, in TZ (0: off; as restic's --keep-weekly).",
        *TIER_RANGE,
    ),
    Setting(
        "KEEP_MONTHLY",
        "0",
        Kind.INT,
        "Cleanup keeps each type's newest backup of each of the N most recent months that "
        "have one, in TZ (0: off; as restic's --keep-monthly).",
        *TIER_RANGE,
    ),
    Setting(
        "REDIS_DATA_DIR",
        "/redis-data",
        Kind.ABS_PATH,
        "Redis data folder (a shared volume): backups read the RDB file a BGSAVE writes there "
        "(else they take it through redis-cli --rdb); 'restore redis --mode file' writes there.",
    ),
    Setting(
        "REDIS_DBFILENAME",
        "dump.rdb",
        Kind.NAME,
        "The RDB file Redis loads (its dbfilename), read by backups and written by 'restore redis "
        "--mode file' when the server does not allow CONFIG GET (otherwise the server's own is "
        "used).",
    ),
    Setting(
        "REDIS_APPENDDIRNAME",
        "appendonlydir",
        Kind.NAME,
        "Redis's AOF folder (its appenddirname), written by 'restore redis --mode file' when the "
        "server does not allow CONFIG GET (otherwise the server's own is used).",
    ),
    Setting(
        "REDIS_RESTORE_HOST",
        "",
        Kind.HOST,
        "Address the live Redis reaches this host at, for 'restore redis' online "
        "(empty: found from the route to REDIS_HOST; 127.0.0.1 in local runs).",
    ),
    Setting(
        "PG_MAJOR",
        "",
        Kind.INT,
        "PostgreSQL client major version in the image; not older than the server (empty: the "
        "flavour's own, "
        + ", ".join(f"{major} on {name.capitalize()}" for name, major in FLAVOR_PG_MAJOR.items())
        + "). A pg_dump older than the server is refused at run time (exit 6).",
        minimum=12,
        maximum=18,
    ),
    Setting(
        "BACKUP_ON_START",
        "false",
        Kind.BOOL,
        "Run one full backup when the container starts (true or false).",
    ),
    Setting(
        "HEALTH_MAX_AGE",
        "0",
        Kind.INT,
        "Seconds after which the last full backup counts as too old for the health check "
        "(0: about two intervals of BACKUP_SCHEDULE).",
        minimum=0,
        maximum=31 * 86400,
    ),
    Setting(
        "ALERT_MAX_AGE",
        "86400",
        Kind.INT,
        "Seconds without a successful backup of a type after which it needs attention "
        "(an alert, and 'status' exits 7); 0: never.",
        minimum=0,
        maximum=366 * 86400,
    ),
    Setting(
        "ALERT_DISK_PERCENT",
        "80",
        Kind.INT,
        "How full (percent) the file system of BACKUP_DIR may be before it needs attention; "
        "0: never.",
        minimum=0,
        maximum=100,
    ),
    Setting(
        "ALERT_MAX_DURATION",
        "3600",
        Kind.INT,
        "Seconds a backup run, or any run still going, may take before it needs attention; "
        "0: never.",
        minimum=0,
        maximum=7 * 86400,
    ),
    Setting(
        "ALERT_URLS",
        None,
        Kind.SECRET,
        "Apprise URLs the alerts and their recovery notices go to, separated by spaces or commas "
        "(e-mail, Slack, Telegram, ntfy, a JSON webhook...); unset: alerts are only logged.",
    ),
    Setting(
        "ALERT_REPEAT",
        "86400",
        Kind.INT,
        "Seconds after which an alert that keeps firing is sent again (0: never again).",
        minimum=0,
        maximum=31 * 86400,
    ),
    Setting(
        "ALERT_TIMEOUT",
        "30",
        Kind.INT,
        "Seconds one round of alert deliveries, or one dead man's switch ping, may take, "
        "retries included; what is not delivered by then is tried again at the next check.",
        minimum=1,
        maximum=600,
    ),
    Setting(
        "HEALTHCHECK_PING_URL",
        None,
        Kind.SECRET,
        "Dead man's switch (healthchecks.io or compatible): each full backup pings "
        "URL/start, then URL on success or URL/fail, with its last log lines.",
    ),
    Setting(
        "REPLICA_TARGETS",
        "",
        Kind.TARGETS,
        "Off-site copies: comma-separated NAME=remote:path (an rclone remote) or NAME=/path "
        "(a local folder, e.g. a USB disk); each backup is copied and verified there after it is "
        "written, and what a target misses is copied at the next run (empty: none).",
    ),
    Setting(
        "REPLICA_RCLONE_CONFIG_FILE",
        "",
        Kind.ABS_PATH,
        "The rclone config file that defines the remotes of REPLICA_TARGETS (empty: rclone's "
        "RCLONE_CONFIG_* variables, or its own default file).",
    ),
    Setting(
        "REPLICA_PRUNE",
        "true",
        Kind.BOOL,
        "Cleanup also prunes each target with the same rules as BACKUP_DIR; false leaves it to "
        "the target's own lifecycle rules (credentials without a delete right).",
    ),
    Setting(
        "REPLICA_ALLOW_PLAINTEXT",
        "false",
        Kind.BOOL,
        "Copy unencrypted backups to rclone remotes too (refused by default: set "
        "ENCRYPTION_KEY); a local folder target takes them either way.",
    ),
    Setting(
        "REPLICA_BWLIMIT",
        "",
        Kind.BWLIMIT,
        "Upload bandwidth limit, as rclone's --bwlimit (e.g. 2M, or '08:00,512k 19:00,off'); "
        "empty: none.",
    ),
    Setting("BACKUP_CONTAINER", "gym_backup", Kind.NAME, "Name of the backup container."),
    Setting("BACKUP_IMAGE", "gym-backup:latest", Kind.IMAGE, "Tag of the backup image."),
    Setting(
        "UPLOADS_SOURCE",
        "./uploads",
        Kind.TEXT,
        "Host folder or volume of the uploads, mounted at FILES_DIR in the container.",
    ),
    Setting(
        "REDIS_DATA_SOURCE",
        "redis_data",
        Kind.TEXT,
        "Host folder or volume of Redis's data, mounted at REDIS_DATA_DIR in the container.",
    ),
    Setting(
        "REDIS_CONTAINER",
        "gym_redis",
        Kind.NAME,
        "Container of the gym system's Redis, restarted after 'restore redis --mode file'.",
    ),
    Setting(
        "LOCK_TIMEOUT",
        "600",
        Kind.INT,
        "Seconds a run waits for another run's lock before giving up (exit 3).",
        minimum=0,
        maximum=86400,
    ),
)

PORT_RANGE = (1, 65535)


def bounds(setting: Setting) -> tuple[int, int] | None:
    """The range of a whole-number setting (a port or a count), else None."""
    if setting.kind is Kind.PORT:
        return PORT_RANGE
    if setting.kind is Kind.INT and setting.minimum is not None and setting.maximum is not None:
        return (setting.minimum, setting.maximum)
    return None


BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
SECRET_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.secret)
FILE_SUFFIX = "_FILE"
KNOWN_KEYS: frozenset[str] = frozenset(
    [s.name for s in SETTINGS] + [n + FILE_SUFFIX for n in SECRET_NAMES]
)
MASK = "********"

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[?[0-9A-Fa-f:]+\]?")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_$.-]*")
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


@dataclass(frozen=True)
class Settings:
    """Validated settings.

    ``values`` holds every non-secret setting (defaults applied); ``secrets`` holds the secret
    settings and ``*_FILE`` variants that were given, and is never rendered.
    """

    values: Mapping[str, str]
    secrets: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None
    # rclone's own variables (RCLONE_CONFIG_NAME_KEY...: remotes, their keys): passed to the
    # scripts, never shown nor rendered.
    rclone_env: Mapping[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """Every setting as environment variables, to run the rendered scripts with."""
        return {**self.rclone_env, **self.values, **self.secrets}

    def masked(self) -> dict[str, str]:
        """Every setting for display, secrets replaced by a mask (``_FILE`` paths are shown)."""
        shown = {}
        for setting in SETTINGS:
            name, file_key = setting.name, setting.name + FILE_SUFFIX
            if not setting.secret:
                shown[name] = self.values[name]
            elif name in self.secrets:
                shown[name] = MASK
            elif file_key in self.secrets:
                shown[file_key] = self.secrets[file_key]
            else:
                shown[name] = "(not set)"
        for name in sorted(self.rclone_env):
            shown[name] = MASK
        return shown

    @property
    def encrypted(self) -> bool:
        """Whether a run with these settings encrypts (decided again by the script at run time)."""
        return self.encryption != "none"

    @property
    def encryption(self) -> str:
        """How a run with these settings encrypts: ``public-key``, ``symmetric`` or ``none``."""
        if self.values.get("ENCRYPTION_RECIPIENT"):
            return "public-key"
        if "ENCRYPTION_KEY" in self.secrets or "ENCRYPTION_KEY_FILE" in self.secrets:
            return "symmetric"
        return "none"


def read_env_file(path: Path) -> dict[str, str]:
    """Read a ``.env`` file without touching ``os.environ``; keys without a value are dropped."""
    if not path.is_file():
        raise UserError(
            f"{path}: no such .env file. Copy .env.example to {path} or pass --env FILE."
        )
    try:
        raw = dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc.__class__.__name__}).") from None
    return {k: v for k, v in raw.items() if v is not None}


def load_settings(
    env_file: Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    for_run: bool = False,
) -> Settings:
    """Merge ``env_file`` and ``environ`` (which wins) and validate every setting.

    Args:
        env_file: the ``.env`` file, or None to use only the environment and the defaults.
        environ: the process environment (``os.environ`` when None).
        for_run: also require what a backup run needs (POSTGRES_PASSWORD or its ``_FILE``).

    Raises:
        ConfigError: listing every problem found, one ``NAME: problem`` line each.
    """
    environ = os.environ if environ is None else environ
    from_file = read_env_file(env_file) if env_file is not None else {}
    problems = _near_misses(from_file)

    def given(key: str, *, empty_is_off: bool = False) -> str | None:
        value = environ.get(key, from_file.get(key))
        return value if value or (empty_is_off and value is not None) else None

    values: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.secret:
            problems += _collect_secret(setting, given, secrets, check_files=for_run)
            continue
        value = given(setting.name, empty_is_off=setting.empty_is_off)
        value = (setting.default or "") if value is None else value.strip()
        problem = _check(setting, value)
        if problem:
            problems.append(f"{setting.name}: {problem}")
        elif setting.kind in (Kind.PORT, Kind.INT) and value:
            value = str(int(value))  # decimal, as the scripts read it: 010 is 10, 08 is 8
        values[setting.name] = value
    rclone_env = {
        k: v for k, v in {**from_file, **environ}.items() if k.startswith(RCLONE_PREFIX) and v
    }
    if for_run and not any(p.startswith("REPLICA_") for p in problems):
        problems += _remote_problems(values, rclone_env)
    if not any(p.startswith("COMPRESSION_LEVEL:") for p in problems):
        problems += _level_problems(values)
    problems += _encryption_problems(values, secrets)
    if problems:
        raise ConfigError(problems)
    return Settings(values=values, secrets=secrets, source=env_file, rclone_env=rclone_env)


def _level_problems(values: Mapping[str, str]) -> list[str]:
    """COMPRESSION_LEVEL on the scale of COMPRESSION (each codec has its own)."""
    codec = CODEC_BY_NAME.get(values.get("COMPRESSION", ""))
    level = values.get("COMPRESSION_LEVEL", "")
    if codec is None or not level.isdigit():
        return []
    low, high = codec.levels
    if low <= int(level) <= high:
        return []
    return [
        f"COMPRESSION_LEVEL: {level} is out of range for {codec.name}; use {low} to {high}, "
        f"or leave it empty for {codec.default_level}."
    ]


# The one message for both encryption settings at once (the scripts say the same at run time).
BOTH_KEYS_PROBLEM = (
    "ENCRYPTION_RECIPIENT: ENCRYPTION_KEY is set too; keep only one of them (a public key: "
    "this host cannot read its backups; a passphrase: it can). To restore backups made with "
    "the passphrase after switching, give it as ENCRYPTION_KEY_PREVIOUS when restoring."
)


def _encryption_problems(values: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """Public-key and passphrase encryption are not set together: which one wins is no guess."""
    keyed = "ENCRYPTION_KEY" in secrets or "ENCRYPTION_KEY_FILE" in secrets
    return [BOTH_KEYS_PROBLEM] if values.get("ENCRYPTION_RECIPIENT") and keyed else []


def _near_misses(from_file: Mapping[str, str]) -> list[str]:
    problems = []
    for key in from_file:
        if key in KNOWN_KEYS:
            continue
        if key.upper() in KNOWN_KEYS:
            problems.append(f"{key}: settings are written in capitals; rename it {key.upper()}.")
            continue
        match = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.85)
        if match:
            problems.append(f"{key}: unknown setting; did you mean {match[0]}? Rename it.")
    return problems


def _collect_secret(  # noqa: PLR0911 - one return per rule
    setting: Setting,
    given: Callable[[str], str | None],
    secrets: dict[str, str],
    *,
    check_files: bool,
) -> list[str]:
    name, file_key = setting.name, setting.name + FILE_SUFFIX
    value, path = given(name), given(file_key)
    if value is not None and path is not None:
        return [f"{name}: both {name} and {file_key} are set; keep only one of them."]
    if value is not None:
        if "\0" in value or ("\n" in value and not setting.multiline):
            return [f"{name}: contains a line break or NUL byte; use a single-line value."]
        secrets[name] = value
        return []
    if path is not None:
        secrets[file_key] = path
        if check_files and not os.access(path, os.R_OK):
            return [f"{file_key}: {path} does not exist or is not readable; fix the path."]
        if check_files and not Path(path).read_text(errors="replace").strip("\n"):
            return [f"{file_key}: {path} is empty; put the {name} in it, or unset {file_key}."]
        return []
    if check_files and setting.required_for_run:
        return [f"{name}: required for a backup run; set {name} or {file_key} in the .env file."]
    return []


def _matches(pattern: re.Pattern[str], problem: str) -> Callable[[Setting, str], str | None]:
    def check(_: Setting, value: str) -> str | None:
        return None if pattern.fullmatch(value) else f"{value!r} {problem}"

    return check


def _check_abs_path(_: Setting, value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} is not an absolute path; write it starting with '/'."
    return None if "\n" not in value else "contains a line break."


# One rule per kind of setting; each returns the problem, or None.
_RULES: Mapping[Kind, Callable[[Setting, str], str | None]] = {
    Kind.HOST: _matches(_HOST_RE, "is not a host name or address."),
    Kind.NAME: _matches(_NAME_RE, "is not a valid name (letters, digits, _ . -)."),
    Kind.PORT: lambda _, v: _check_int(v, *PORT_RANGE, "a port"),
    Kind.INT: lambda s, v: _check_int(v, s.minimum, s.maximum, "a whole number"),
    Kind.CRON: lambda _, v: _check_cron(v),
    Kind.TZ: lambda _, v: _check_tz(v),
    Kind.ABS_PATH: _check_abs_path,
    Kind.PATTERNS: _matches(
        re.compile(r"[^\n]*"), "contains a line break; separate patterns with ','."
    ),
    Kind.BOOL: _matches(re.compile(r"true|false"), "is not true or false."),
    Kind.CHOICE: lambda s, v: (
        None if v in s.choices else f"{v!r} is not one of: {', '.join(s.choices)}."
    ),
    Kind.IMAGE: _matches(_IMAGE_RE, "is not an image name like 'name:tag'."),
    Kind.TEXT: _matches(
        re.compile(r"[^\s:'\"]+"), "must be a path or a name without spaces, quotes or ':'."
    ),
    Kind.TARGETS: lambda _, v: _check_targets(v),
    Kind.BWLIMIT: _matches(
        re.compile(r"[0-9A-Za-z.:,| -]+"),
        "is not an rclone --bwlimit value (e.g. 2M, 10M:1M or '08:00,512k 19:00,off').",
    ),
}


# REPLICA_TARGETS: NAME=DEST entries; DEST is an absolute path (a local folder) or REMOTE:PATH,
# REMOTE a remote of the rclone config or ``:backend`` (configured by rclone's own RCLONE_*
# variables; connection-string parameters would put secrets in the settings and on command
# lines). _replica.sh.j2's replica_targets applies the same rules at run time.
_TARGET_NAME_RE = re.compile(r"[a-z0-9_-]+")
_REMOTE_RE = re.compile(r"(?P<remote>:[a-z0-9]+|[A-Za-z0-9_.+@-]+):(?P<path>[^\n]*)")
# What rclone variables a run passes on: its own configuration (RCLONE_CONFIG_NAME_KEY...).
RCLONE_PREFIX = "RCLONE_"


@dataclass(frozen=True)
class Target:
    """One entry of REPLICA_TARGETS: its name, where it copies to, and its rclone remote (None
    for a local folder)."""

    name: str
    dest: str
    remote: str | None


def parse_targets(value: str) -> tuple[list[Target], list[str]]:
    """The targets of a REPLICA_TARGETS value, and what is wrong with it."""
    targets: list[Target] = []
    problems: list[str] = []
    seen: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, dest = entry.partition("=")
        name, dest = name.strip(), dest.strip()
        if not sep or not dest:
            problems.append(f"{entry!r} is not NAME=remote:path or NAME=/path")
            continue
        if not _TARGET_NAME_RE.fullmatch(name):
            problems.append(f"the target name {name!r} is not made of a-z, 0-9, _ and -")
            continue
        if name in seen:
            problems.append(f"the target name {name!r} is given twice")
            continue
        seen.add(name)
        if dest.startswith("/") and "\n" not in dest:
            targets.append(Target(name, dest, None))
            continue
        match = _REMOTE_RE.fullmatch(dest)
        if match is None:
            problems.append(
                f"{name}: {dest!r} is neither an absolute path nor remote:path (an rclone "
                "remote's name, or :backend without parameters)"
            )
            continue
        targets.append(Target(name, dest, match["remote"]))
    return targets, problems


def _check_targets(value: str) -> str | None:
    _, problems = parse_targets(value)
    return "; ".join(problems) + "." if problems else None


def _config_sections(path: Path) -> set[str] | None:
    """The remotes an rclone config file defines (its [sections]); None when it is encrypted."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if "RCLONE_ENCRYPT_V0:" in text:
        return None
    return set(re.findall(r"^[ \t]*\[([^\]\n]+)\][ \t]*$", text, re.M))


def rclone_env_name(remote: str) -> str:
    """The variable that defines a remote's type in the environment, as rclone names it."""
    return f"{RCLONE_PREFIX}CONFIG_{remote.upper().replace('-', '_')}_TYPE"


def _remote_problems(values: Mapping[str, str], rclone_env: Mapping[str, str]) -> list[str]:
    """Each target's remote is defined: in the config file or by RCLONE_CONFIG_NAME_TYPE (not
    contacted)."""
    targets, _ = parse_targets(values.get("REPLICA_TARGETS", ""))
    config_file = values.get("REPLICA_RCLONE_CONFIG_FILE", "")
    sections: set[str] | None = set()
    problems: list[str] = []
    if config_file:
        if not os.access(config_file, os.R_OK) or not Path(config_file).is_file():
            return [
                f"REPLICA_RCLONE_CONFIG_FILE: {config_file} does not exist or is not readable; "
                "fix the path."
            ]
        sections = _config_sections(Path(config_file))
    for target in targets:
        remote = target.remote
        if remote is None or remote.startswith(":") or sections is None:
            continue
        if remote in sections or rclone_env.get(rclone_env_name(remote)):
            continue
        where = f"{config_file} has no [{remote}] section" if config_file else "no config file"
        problems.append(
            f"REPLICA_TARGETS: {target.name}: the rclone remote {remote!r} is not defined "
            f"({where}, and {rclone_env_name(remote)} is not set); define it with `rclone "
            "config` in REPLICA_RCLONE_CONFIG_FILE, or with RCLONE_CONFIG_* variables."
        )
    return problems


def _check(setting: Setting, value: str) -> str | None:
    if value == "" and (setting.default == "" or setting.empty_is_off):
        return None
    return _RULES[setting.kind](setting, value)


def _check_int(value: str, low: int | None, high: int | None, what: str) -> str | None:
    if not re.fullmatch(r"[0-9]+", value):
        return f"{value!r} is not {what}; write digits only."
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        return f"{number} is out of range; use {low} to {high}."
    return None


def _check_cron(value: str) -> str | None:
    fields = value.split()
    if len(fields) != 5:
        return (
            f"{value!r} has {len(fields)} fields; a schedule has 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'."
        )
    if not croniter.is_valid(value):
        return f"{value!r} is not a valid cron expression, e.g. '0 2 * * *' for 02:00 every day."
    return None


# Where the scripts look time zones up (check_settings in _common.sh.j2 applies the same rule).
ZONEINFO_DIR = Path("/usr/share/zoneinfo")
_TZ_EXAMPLE = "use one like 'America/Argentina/Buenos_Aires' or 'UTC'."


def _check_tz(value: str) -> str | None:
    """A time zone name, not a path: '../../../etc/passwd' would be read as UTC by date."""
    parts = value.split("/")
    if value.startswith("/") or "." in parts or ".." in parts:
        return f"{value!r} is a path, not a time zone name; {_TZ_EXAMPLE}"
    candidate = ZONEINFO_DIR / value
    if value and (candidate.exists() or candidate.is_symlink()):
        real = candidate.resolve()
        if not real.is_relative_to(ZONEINFO_DIR.resolve()) or not real.is_file():
            return f"{value!r} does not lead to a time zone file in {ZONEINFO_DIR}; {_TZ_EXAMPLE}"
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"{value!r} is not a time zone name; {_TZ_EXAMPLE}"
    return None


def next_runs(
    schedule: str, tz: str, count: int = 3, start: datetime | None = None
) -> list[datetime]:
    """The next ``count`` times ``schedule`` fires, in the time zone ``tz``."""
    zone = zoneinfo.ZoneInfo(tz)
    base = start.astimezone(zone) if start else datetime.now(zone)
    it = croniter(schedule, base)
    return [it.get_next(datetime) for _ in range(count)]
