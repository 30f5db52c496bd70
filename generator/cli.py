"""The ``gym-backup`` command line: parse, call, and turn a UserError into a message and exit code.

This module holds typer only; the work is in config.py, render.py and ops.py.
"""

from __future__ import annotations

import contextlib
import enum
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from generator import __version__, config, ops, render
from generator.errors import ScriptFailedError, UserError

app = typer.Typer(
    name="gym-backup",
    help="Render and run the backup service of the gym system (PostgreSQL, Redis, files).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EXIT_MEANINGS = {
    1: "failed",
    2: "usage",
    3: "lock busy: another run holds the lock",
    4: "verification failed",
    5: "wrong encryption key",
    6: "refused: a precondition was not met",
}

EnvOption = Annotated[
    Path | None,
    typer.Option(
        "--env",
        help="The .env file to read (default: .env in this folder, if it exists).",
        dir_okay=False,
    ),
]
LocalOption = Annotated[
    bool, typer.Option("--local", help="Run the script on this host instead of in the container.")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")
]


class BackupType(enum.StrEnum):
    """What one backup run covers."""

    FULL = "full"
    POSTGRESQL = "postgresql"
    REDIS = "redis"
    FILES = "files"


def say(message: str) -> None:
    """Status for the user, on stderr (results go to stdout)."""
    typer.echo(message, err=True)


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """The one place a UserError becomes a message on stderr and an exit code."""
    try:
        yield
    except UserError as exc:
        say(f"error: {exc.message}")
        raise typer.Exit(exc.exit_code) from None


def _env_file(env: Path | None) -> Path | None:
    if env is not None:
        return env
    default = Path(".env")
    return default if default.is_file() else None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gym-backup {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Render and run the backup service of the gym system (PostgreSQL, Redis, files)."""


@app.command()
def generate(
    env: EnvOption = None,
    out: Annotated[Path, typer.Option("--out", help="Folder to render into.")] = Path(
        "docker/backup"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if any file would change.")
    ] = False,
    dry_run: DryRunOption = False,
    flavor: Annotated[
        str, typer.Option("--flavor", help="Image flavour: alpine (default) or debian.")
    ] = render.DEFAULT_FLAVOR,
) -> None:
    """Render the service's files from the .env settings (no secret is needed or rendered)."""
    with reporting_errors():
        settings = config.load_settings(_env_file(env))
        files = render.render(settings, flavor)
        results = render.write(files, out, check=check, dry_run=dry_run)
        drift = [rel for rel, status in results if status is not render.Status.IDENTICAL]
        for rel, status in results:
            prefix = "would be " if (check or dry_run) and rel in drift else ""
            say(f"{prefix}{status.value:<11} {out / rel}")
        if check and drift:
            raise UserError(
                f"{len(drift)} file(s) in {out} differ from what the templates and settings "
                "render; run `gym-backup generate` (or `make generate`) and commit the result."
            )


@config_app.command("check")
def config_check(env: EnvOption = None) -> None:
    """Validate the settings for a run; show them (secrets masked) and the next run times."""
    with reporting_errors():
        settings = config.load_settings(_env_file(env), for_run=True)
        source = settings.source or "the environment and defaults"
        typer.echo(f"Settings from {source} (the environment wins over the file):")
        for name, value in settings.masked().items():
            typer.echo(f"  {name:<24} {value}")
        tz = settings.values["TZ"]
        typer.echo(f"Next runs ({tz}):")
        for name in ("BACKUP_SCHEDULE", "CLEANUP_SCHEDULE"):
            schedule = settings.values[name]
            runs = ", ".join(
                t.strftime("%Y-%m-%d %H:%M %Z") for t in config.next_runs(schedule, tz)
            )
            typer.echo(f"  {name:<17} {schedule:<14} {runs}")
        if settings.encrypted:
            typer.echo("Encryption: on (GPG symmetric AES256).")
        else:
            typer.echo("Encryption: OFF; set ENCRYPTION_KEY or ENCRYPTION_KEY_FILE to encrypt.")


def _run(local: bool, env: Path | None, script: str, args: list[str], *, for_run: bool) -> None:
    """Render the scripts from the current settings into a private folder and run one here.

    Rendering afresh means the script always matches the templates and the .env in use.
    """
    if not local:
        raise UserError(
            "only --local runs are available: the container service is not part of this "
            "render yet. Add --local to run the script on this host.",
            exit_code=2,
        )
    settings = config.load_settings(_env_file(env), for_run=for_run)
    with tempfile.TemporaryDirectory(prefix="gym-backup-") as tmp:
        folder = Path(tmp)
        render.write(render.render(settings), folder)
        code = ops.run_script(folder / script, args, settings.environment())
    if code != 0:
        meaning = EXIT_MEANINGS.get(code) or ops.signal_name(code) or "failed"
        raise ScriptFailedError(f"{script} {' '.join(args)}: {meaning}", exit_code=code)


def _flags(**flags: bool) -> list[str]:
    """``--name`` for each flag that is on (underscores become dashes)."""
    return [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]


@app.command()
def backup(
    what: Annotated[BackupType, typer.Argument(help="What to back up.")],
    local: LocalOption = False,
    env: EnvOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Take a backup (full = PostgreSQL, Redis and files, with one timestamp)."""
    with reporting_errors():
        _run(local, env, "backup_script.sh", [what.value, *_flags(dry_run=dry_run)], for_run=True)


@app.command("list")
def list_backups(local: LocalOption = False, env: EnvOption = None) -> None:
    """List the backups, newest first, with totals and free space."""
    with reporting_errors():
        _run(local, env, "backup_script.sh", ["list"], for_run=False)


@app.command()
def cleanup(
    local: LocalOption = False, env: EnvOption = None, dry_run: DryRunOption = False
) -> None:
    """Delete backups older than BACKUP_RETENTION_DAYS (never the newest KEEP_MIN of a type)."""
    with reporting_errors():
        _run(local, env, "backup_script.sh", ["cleanup", *_flags(dry_run=dry_run)], for_run=False)


BackupFile = Annotated[str, typer.Argument(help="A backup: a path, or a name in BACKUP_DIR.")]


@app.command()
def verify(
    file: BackupFile,
    local: LocalOption = False,
    env: EnvOption = None,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also restore into a scratch database or server.")
    ] = False,
    no_checksum: Annotated[
        bool, typer.Option("--no-checksum", help="Verify without the FILE.sha256 sidecar.")
    ] = False,
) -> None:
    """Check a backup: checksum, decryption, decompression and content."""
    with reporting_errors():
        args = ["verify", file, *_flags(deep=deep, no_checksum=no_checksum)]
        _run(local, env, "restore_script.sh", args, for_run=False)


@app.command()
def info(file: BackupFile, local: LocalOption = False, env: EnvOption = None) -> None:
    """Show what a backup is: type, time, sizes, encryption, checksum state, source."""
    with reporting_errors():
        _run(local, env, "restore_script.sh", ["info", file], for_run=False)


class RestoreType(enum.StrEnum):
    """What a restore writes to."""

    POSTGRESQL = "postgresql"
    REDIS = "redis"
    FILES = "files"


class RedisMode(enum.StrEnum):
    """How a Redis backup is restored."""

    ONLINE = "online"
    FILE = "file"


@app.command()
def restore(
    what: Annotated[RestoreType, typer.Argument(help="What to restore into.")],
    file: BackupFile,
    dest: Annotated[
        str | None, typer.Argument(help="files only: the folder (default FILES_DIR).")
    ] = None,
    local: LocalOption = False,
    env: EnvOption = None,
    target_db: Annotated[
        str | None, typer.Option("--target-db", help="postgresql: restore into this new database.")
    ] = None,
    clean: Annotated[
        bool, typer.Option("--clean", help="postgresql: replace objects in a non-empty database.")
    ] = False,
    no_owner: Annotated[
        bool, typer.Option("--no-owner", help="postgresql: skip ownership and grants.")
    ] = False,
    no_safety_backup: Annotated[
        bool, typer.Option("--no-safety-backup", help="Do not back up the target first.")
    ] = False,
    mode: Annotated[
        RedisMode, typer.Option("--mode", help="redis: online (replication) or file.")
    ] = RedisMode.ONLINE,
    force: Annotated[
        bool, typer.Option("--force", help="files: overwrite files that exist in DEST.")
    ] = False,
) -> None:
    """Restore a backup (it is verified first; a failure leaves the target as it was)."""
    with reporting_errors():
        args = [what.value, file]
        if dest is not None:
            if what is not RestoreType.FILES:
                raise UserError("DEST is for `restore files` only.", exit_code=2)
            args.append(dest)
        if target_db:
            args += ["--target-db", target_db]
        if what is RestoreType.REDIS:
            args += ["--mode", mode.value]
        args += _flags(clean=clean, no_owner=no_owner, no_safety_backup=no_safety_backup)
        args += _flags(force=force)
        _run(local, env, "restore_script.sh", args, for_run=True)
