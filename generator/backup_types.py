"""The backup types and the codecs: one table each.

Everything that names a type or a codec is rendered or read from here: the scripts' list of
types, the backup-name pattern and its parser, each type's extension, the image packages a type
needs, its restore options and usage lines, the CLI's choices. A type's shell (its backup,
content check, deep verify and restore) lives in ``templates/types/<name>.sh.j2``; adding a type
is a row here, that file, its settings and its tests (README: "Adding a backup type").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackupType:
    """One kind of backup: what it holds and what it needs."""

    name: str
    extension: str  # of the content in the file name: postgresql_backup_TS.<extension>.<codec>
    restore_modes: tuple[str, ...] = ()  # `restore <name> --mode`, the first the default
    packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per image flavour
    restore_options: tuple[str, ...] = ()  # `restore_script.sh NAME FILE` options of its own
    restore_dest: bool = False  # `restore_script.sh NAME FILE [DEST]`
    restore_usage: str = ""  # its lines in restore_script.sh's usage text


@dataclass(frozen=True)
class Codec:
    """A compression format: its name (COMPRESSION, manifests), its file-name extension, the range
    of COMPRESSION_LEVEL with it and the level when that is unset, the bytes every stream of it
    starts with (in hex: cleanup checks the backups it keeps against it), and the image packages
    of its tools per flavour (the scripts pick the tool: codec_tool in _common.sh.j2)."""

    name: str
    extension: str
    levels: tuple[int, int]
    default_level: int
    magic: str
    packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


BACKUP_TYPES: tuple[BackupType, ...] = (
    BackupType(
        "postgresql",
        "sql",
        packages={
            "alpine": ("postgresql${PG_MAJOR}-client",),
            "debian": ("postgresql-client-${PG_MAJOR}",),
        },
        restore_options=("--target-db", "--clean", "--no-owner", "--no-safety-backup"),
        restore_usage="""\
  postgresql FILE [--target-db NAME] [--clean] [--no-owner] [--no-safety-backup]
      restore in one transaction (a failure leaves the target as it was); a database that
      already holds tables needs --clean (replaces everything in the schemas the backup
      contains), and gets a safety backup first""",
    ),
    BackupType(
        "redis",
        "rdb",
        restore_modes=("online", "file"),
        packages={"alpine": ("redis",), "debian": ("redis-server", "redis-tools")},
        restore_options=("--mode", "--recover", "--no-safety-backup"),
        restore_usage="""\
  redis FILE [--mode online|file] [--no-safety-backup]
      online (default): the live Redis replicates the backup from a temporary redis-server
      file: write the RDB (and AOF base) into REDIS_DATA_DIR, stop Redis, check that it
      started again with the backup (or say to start it)
  redis --recover
      repair the live Redis after an interrupted Redis restore (every run does that first)""",
    ),
    BackupType(
        "files",
        "tar",
        packages={"alpine": (), "debian": ()},  # GNU tar is in every image
        restore_options=("--force",),
        restore_dest=True,
        restore_usage="""\
  files FILE [DEST] [--force]
      extract into DEST (default FILES_DIR; created when only its parent exists); existing
      files are kept unless --force. A restore stopped while moving entries into place says
      how far it got; run the same command again to complete it""",
    ),
)

CODECS: tuple[Codec, ...] = (
    # pigz: parallel gzip (the plain gzip stream any gunzip reads); gzip where pigz is missing.
    Codec(
        "gzip", "gz", (1, 9), 6, "1f8b08", {"alpine": ("gzip", "pigz"), "debian": ("gzip", "pigz")}
    ),
    Codec("zstd", "zst", (1, 19), 3, "28b52ffd", {"alpine": ("zstd",), "debian": ("zstd",)}),
)
DEFAULT_CODEC = "gzip"
CODEC_BY_NAME: Mapping[str, Codec] = {c.name: c for c in CODECS}
ENCRYPTED_SUFFIX = "gpg"

BY_NAME: Mapping[str, BackupType] = {t.name: t for t in BACKUP_TYPES}


def name_pattern() -> str:
    """The ERE of a backup's file name: type, date, time, extension, codec, encrypted."""
    types = "|".join(t.name for t in BACKUP_TYPES)
    extensions = "|".join(sorted({t.extension for t in BACKUP_TYPES}))
    codecs = "|".join(c.extension for c in CODECS)
    return (
        rf"^({types})_backup_([0-9]{{8}})_([0-9]{{6}})\.({extensions})\.({codecs})"
        rf"(\.{ENCRYPTED_SUFFIX})?$"
    )
