"""The backup types and the codecs: one table each.

Everything that names a type or a codec is rendered or read from here: the scripts' list of
types, the backup-name pattern and its parser, each type's extension, the tools and image
packages a type needs, the CLI's choices. A type's shell (its backup, content check, deep verify
and restore) lives in ``templates/types/<name>.sh.j2``; adding a type is a row here, that file,
its settings and its tests (README: "Adding a backup type").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackupType:
    """One kind of backup: what it holds and what it needs."""

    name: str
    extension: str  # of the content in the file name: postgresql_backup_TS.<extension>.<codec>
    content: str  # what the backup holds (README)
    restore_modes: tuple[str, ...] = ()  # `restore <name> --mode`, the first the default
    tools: tuple[str, ...] = ()  # the commands its shell runs
    packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per image flavour
    health_probe: str = ""  # the health check's probe of the source (a shell function)


@dataclass(frozen=True)
class Codec:
    """A compression format: its name in manifests and settings, its file-name extension."""

    name: str
    extension: str


BACKUP_TYPES: tuple[BackupType, ...] = (
    BackupType(
        "postgresql",
        "sql",
        "pg_dump of POSTGRES_DB, plain SQL",
        tools=("pg_dump", "psql"),
        packages={
            "alpine": ("postgresql${PG_MAJOR}-client",),
            "debian": ("postgresql-client-${PG_MAJOR}",),
        },
        health_probe="probe_postgresql",
    ),
    BackupType(
        "redis",
        "rdb",
        "an RDB snapshot of the Redis dataset",
        restore_modes=("online", "file"),
        tools=("redis-cli", "redis-check-rdb", "redis-server"),
        packages={"alpine": ("redis",), "debian": ("redis-server", "redis-tools")},
        health_probe="probe_redis",
    ),
    BackupType(
        "files",
        "tar",
        "a tar of FILES_DIR",
        tools=("tar",),
        packages={"alpine": (), "debian": ()},  # GNU tar is in every image
    ),
)

CODECS: tuple[Codec, ...] = (Codec("gzip", "gz"),)
DEFAULT_CODEC = "gzip"
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
