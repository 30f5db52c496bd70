"""The ``gym-backup`` command line: parse, call, and turn a UserError into a message and exit code.

This module holds typer only; the work is in config.py, render.py and ops.py.
"""

from __future__ import annotations

import contextlib
import enum
import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from typer.core import TyperGroup

from generator import __version__, config, ops, render
from generator.backup_types import BACKUP_TYPES, BY_NAME
from generator.errors import (
    EXIT_ATTENTION,
    EXIT_MEANINGS,
    ConfigError,
    ScriptFailedError,
    UserError,
)


class _GymBackup(TyperGroup):
    """The top command: ``--version`` stands alone, so ``--version true`` is a usage error.

    ``--version`` is eager (it prints and exits before the other options are processed, which
    keeps it quick), and an eager option cannot see the rest of the line: it is checked here.
    """

    # typer.Context is the click Context that typer exports; the base names click's own.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if args[:1] == ["--version"] and len(args) > 1:
            raise typer.BadParameter(
                f"takes nothing after it (got {' '.join(args[1:])!r}); run `gym-backup --version`.",
                ctx=ctx,
                param_hint="'--version'",
            )
        return super().parse_args(ctx, args)


# Plain help (rich_markup_mode=None): flags are shown without a value placeholder (Rich's
# help shows `--version <bool>`), and `--help` starts without importing Rich. A command's
# first sentence is its line in the command list, so it is kept short.
app = typer.Typer(
    name="gym-backup",
    help="Render and run the backup service of the gym system (PostgreSQL, Redis, files).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=_GymBackup,
)
config_app = typer.Typer(help="Inspect the settings.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")

EnvOption = Annotated[
    Path | None,
    typer.Option(
        "--env",
        help="The .env file to read (default: .env in this folder, if it exists).",
        dir_okay=False,
    ),
]
LocalOption = Annotated[
    bool,
    typer.Option(
        "--local", help="Run on this host instead of in the container (BACKUP_CONTAINER)."
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")
]
FlavorOption = Annotated[
    str | None,
    typer.Option(
        "--flavor",
        help="Image flavour: alpine or debian (default: the flavour of the render in --out, "
        f"else {render.DEFAULT_FLAVOR}).",
    ),
]


# The choices come from the types table: a new type is a new choice (typer offers a Literal's
# values; for the type checker they are strings).
REDIS_MODES = BY_NAME["redis"].restore_modes
if TYPE_CHECKING:
    BackupChoice = str
    RestoreChoice = str
    RedisMode = str
else:
    BackupChoice = Literal[("full", *(t.name for t in BACKUP_TYPES))]
    RestoreChoice = Literal[(*(t.name for t in BACKUP_TYPES), "all")]
    RedisMode = Literal[REDIS_MODES]


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


def _load(env: Path | None, *, for_run: bool = False) -> config.Settings:
    """The settings; when a run lacks some and no .env was found, say where it was looked for."""
    path = _env_file(env)
    try:
        return config.load_settings(path, for_run=for_run)
    except ConfigError as exc:
        if path is None:
            exc.message += (
                f"\n  (no .env file in {Path.cwd()}: pass --env FILE or run from its folder)"
            )
        raise


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gym-backup {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
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
    flavor: FlavorOption = None,
) -> None:
    """Render the service's files from the .env settings.

    No secret is needed or rendered.
    """
    with reporting_errors():
        settings = _load(env)
        files = render.render(settings, render.choose_flavor(flavor, out))
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
    """Validate the settings for a run and show them.

    Secrets are masked; the next run times of the schedules follow.
    """
    with reporting_errors():
        settings = _load(env, for_run=True)
        source = settings.source or "the environment and defaults"
        typer.echo(f"Settings from {source} (the environment wins over the file):")
        for name, value in settings.masked().items():
            typer.echo(f"  {name:<24} {value}")
        tz = settings.values["TZ"]
        typer.echo(f"Next runs ({tz}):")
        for name in ("BACKUP_SCHEDULE", "CLEANUP_SCHEDULE", "RESTORE_DRILL_SCHEDULE"):
            schedule = settings.values[name]
            if not schedule:
                typer.echo(f"  {name:<22} off")
                continue
            runs = ", ".join(
                t.strftime("%Y-%m-%d %H:%M %Z") for t in config.next_runs(schedule, tz)
            )
            typer.echo(f"  {name:<22} {schedule:<14} {runs}")
        if settings.encryption == "public-key":
            recipient = settings.values["ENCRYPTION_RECIPIENT"]
            typer.echo(f"Encryption: on (GPG AES256 to the public key in {recipient}).")
        elif settings.encrypted:
            typer.echo("Encryption: on (GPG symmetric AES256).")
        else:
            typer.echo(
                "Encryption: OFF; set ENCRYPTION_KEY (or ENCRYPTION_KEY_FILE), or "
                "ENCRYPTION_RECIPIENT, to encrypt."
            )


def _fail_on(code: int, what: str) -> None:
    if code != 0:
        meaning = EXIT_MEANINGS.get(code) or ops.signal_name(code) or "failed"
        raise ScriptFailedError(f"{what}: {meaning}", exit_code=code)


def _run(local: bool, env: Path | None, script: str, args: list[str], *, for_run: bool) -> None:
    """Run a script in the service's container, or (--local) on this host; its output is ours."""
    code, _ = _execute(local, _load(env, for_run=for_run and local), script, args)
    _fail_on(code, f"{script} {' '.join(args)}")


def _execute(
    local: bool, settings: config.Settings, script: str, args: list[str], *, capture: bool = False
) -> tuple[int, str]:
    """Run a script in the service's container, or (--local) on this host: its exit code, and
    its output when ``capture`` (else the output goes straight to ours).

    On this host the scripts are rendered afresh into a private folder, so they always match the
    templates and the .env in use; in the container they read the container's environment.
    """
    if local:
        # SIGTERM ends us through SystemExit, so that the private folder is still removed.
        signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
        with tempfile.TemporaryDirectory(prefix="gym-backup-") as tmp:
            folder = Path(tmp)
            render.write(render.render(settings), folder)
            if capture:
                return ops.capture_script(folder / script, args, settings.environment())
            return ops.run_script(folder / script, args, settings.environment()), ""
    container = settings.values["BACKUP_CONTAINER"]
    try:
        ops.require_running(container)
    except UserError as exc:
        raise UserError(f"{exc.message} Or add --local to run on this host.") from None
    argv = [f"/usr/local/bin/{script}", *args]
    if capture:
        return ops.docker_exec_capture(container, argv)
    return ops.docker_exec(container, argv), ""


def _flags(**flags: bool) -> list[str]:
    """``--name`` for each flag that is on (underscores become dashes)."""
    return [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]


@app.command()
def backup(
    what: Annotated[BackupChoice, typer.Argument(help="What to back up.")],
    local: LocalOption = False,
    env: EnvOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Take a backup: full, postgresql, redis or files.

    full backs up PostgreSQL, Redis and the files, with one timestamp.
    """
    with reporting_errors():
        _run(local, env, "backup_script.sh", [what, *_flags(dry_run=dry_run)], for_run=True)


ReplicaOption = Annotated[
    str | None,
    typer.Option("--replica", help="A target of REPLICA_TARGETS (its NAME).", metavar="NAME"),
]
FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Fetch FILE (a backup's name) from this target of REPLICA_TARGETS first.",
        metavar="NAME",
    ),
]


def _named(option: str, value: str | None) -> list[str]:
    """``[option, value]`` when the value is given."""
    return [option, value] if value else []


@app.command("list")
def list_backups(
    local: LocalOption = False, env: EnvOption = None, replica: ReplicaOption = None
) -> None:
    """List the backups, newest first, with totals and free space.

    With --replica NAME, what that off-site target holds, and how many local backups it misses.
    """
    with reporting_errors():
        _run(local, env, "backup_script.sh", ["list", *_named("--replica", replica)], for_run=False)


@app.command()
def sync(
    local: LocalOption = False,
    env: EnvOption = None,
    replica: ReplicaOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Copy to the off-site targets what they miss, now.

    Every backup run does it too; this is for after a target was down or was added.
    """
    with reporting_errors():
        args = ["sync", *_named("--replica", replica), *_flags(dry_run=dry_run)]
        _run(local, env, "backup_script.sh", args, for_run=True)


@app.command()
def status(
    local: LocalOption = False,
    env: EnvOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the facts as JSON (status.json's schema).")
    ] = False,
) -> None:
    """Show the last backups, their age and what needs attention.

    Per type the last success and its age, size, duration, success rate and how often backups
    ran; storage; the last drill; what needs attention (then the exit code is 7).
    """
    from generator import status_view  # rich, only for this command

    with reporting_errors():
        code, out = _execute(
            local, _load(env), "backup_script.sh", ["status", "--json"], capture=True
        )
        if code not in (0, EXIT_ATTENTION):
            _fail_on(code, "backup_script.sh status")
        if as_json:
            typer.echo(out, nl=False)
        else:
            status_view.show(json.loads(out))
        if code:
            raise typer.Exit(code)


@app.command()
def cleanup(
    local: LocalOption = False, env: EnvOption = None, dry_run: DryRunOption = False
) -> None:
    """Delete the backups no retention rule keeps.

    Each type keeps its backups younger than BACKUP_RETENTION_DAYS, its newest KEEP_MIN, and its
    newest of each of the KEEP_DAILY days, KEEP_WEEKLY weeks and KEEP_MONTHLY months that have one.
    """
    with reporting_errors():
        _run(local, env, "backup_script.sh", ["cleanup", *_flags(dry_run=dry_run)], for_run=False)


@app.command()
def drill(local: LocalOption = False, env: EnvOption = None) -> None:
    """Run a restore drill now.

    verify --deep of the newest backup of each type, into a scratch database or redis-server;
    the result goes into status and the metrics, and a failure alerts. The exit code is the
    first failure's (a type without a backup, or PostgreSQL without CREATEDB, is skipped).
    """
    with reporting_errors():
        _run(local, env, "backup_script.sh", ["drill"], for_run=True)


@app.command("alert-test")
def alert_test(local: LocalOption = False, env: EnvOption = None) -> None:
    """Send a test notice to the ALERT_URLS.

    It checks that alerts reach you: the exit code is 0 when the notice was delivered, 1 when
    it was not (apprise's messages say why, the URLs left out), 6 when ALERT_URLS is not set.
    """
    with reporting_errors():
        _run(local, env, "backup_script.sh", ["alert-test"], for_run=False)


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
    from_target: FromOption = None,
) -> None:
    """Check a backup: checksum, decryption, decompression and content."""
    with reporting_errors():
        args = ["verify", file, *_flags(deep=deep, no_checksum=no_checksum)]
        args += _named("--from", from_target)
        _run(local, env, "restore_script.sh", args, for_run=False)


@app.command()
def info(
    file: BackupFile,
    local: LocalOption = False,
    env: EnvOption = None,
    from_target: FromOption = None,
) -> None:
    """Show what a backup is: type, time, sizes, encryption, source.

    Also its checksum state and the server version, from the manifest and the file itself.
    """
    with reporting_errors():
        args = ["info", file, *_named("--from", from_target)]
        _run(local, env, "restore_script.sh", args, for_run=False)


@app.command()
def restore(
    what: Annotated[
        RestoreChoice, typer.Argument(help="What to restore into; all: every type of one run.")
    ],
    file: Annotated[
        str | None,
        typer.Argument(
            help="A backup: a path, or a name in BACKUP_DIR; for all, the run's TIMESTAMP "
            "(YYYYMMDD_HHMMSS; default the newest with every type)."
        ),
    ] = None,
    dest: Annotated[
        str | None, typer.Argument(help="files and all: the folder (default FILES_DIR).")
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
    ] = REDIS_MODES[0],
    force: Annotated[
        bool, typer.Option("--force", help="files: overwrite files that exist in DEST.")
    ] = False,
    from_target: FromOption = None,
) -> None:
    """Restore a backup; it is verified first.

    A failure leaves the target as it was. `restore all [TIMESTAMP] [DEST]` verifies the backups
    of one run, every type, before it restores them together (see the README).
    """
    with reporting_errors():
        args = [what]
        if file is not None:
            args.append(file)
        elif what != "all":
            raise UserError(f"`restore {what}` needs a backup FILE.", exit_code=2)
        if dest is not None:
            if what not in ("files", "all"):
                raise UserError("DEST is for `restore files` and `restore all` only.", exit_code=2)
            args.append(dest)
        if target_db:
            args += ["--target-db", target_db]
        if what in ("redis", "all"):
            args += ["--mode", mode]
        args += _flags(clean=clean, no_owner=no_owner, no_safety_backup=no_safety_backup)
        args += _flags(force=force)
        args += _named("--from", from_target)
        _run(local, env, "restore_script.sh", args, for_run=True)
        if what in ("redis", "all") and mode == "file":
            _restart_redis(local, env)


def _restart_redis(local: bool, env: Path | None) -> None:
    name = _load(env).values["REDIS_CONTAINER"]
    if local:
        say(f"Restart Redis now so that it loads the restored data (e.g. docker restart {name}).")
        return
    say(f"restarting {name} so that it loads the restored data")
    _fail_on(ops.docker_restart(name), f"docker restart {name}")


OutOption = Annotated[
    Path, typer.Option("--out", help="The rendered service folder (the image's build context).")
]
ComposeOption = Annotated[
    Path, typer.Option("--compose-file", help="The gym system's own compose file.")
]


@app.command()
def build(
    env: EnvOption = None,
    out: OutOption = Path("docker/backup"),
    flavor: FlavorOption = None,
) -> None:
    """Render the service and build its image (tagged BACKUP_IMAGE)."""
    with reporting_errors():
        settings = _load(env)
        files = render.render(settings, render.choose_flavor(flavor, out))
        for rel, status in render.write(files, out):
            say(f"{status.value:<11} {out / rel}")
        ops.docker_build(out, settings.values["BACKUP_IMAGE"])


def _compose(env: Path | None, out: Path, compose_file: Path, args: list[str]) -> None:
    _load(env)
    service_file = out / "docker-compose.backup.yml"
    for needed in (compose_file, service_file):
        if not needed.is_file():
            raise UserError(
                f"{needed} does not exist; run from the gym system's folder "
                "(see --compose-file) after `gym-backup generate`."
            )
    code = ops.compose([compose_file, service_file], ["--profile", "production", *args], Path.cwd())
    _fail_on(code, f"docker compose {' '.join(args)}")


@app.command()
def up(
    env: EnvOption = None,
    out: OutOption = Path("docker/backup"),
    compose_file: ComposeOption = Path("docker-compose.yml"),
) -> None:
    """Start the backup service beside the gym system.

    It runs docker compose with the gym's compose file and the service's (profile production).
    """
    with reporting_errors():
        _compose(env, out, compose_file, ["up", "-d", "--build", "backup"])


@app.command()
def down(
    env: EnvOption = None,
    out: OutOption = Path("docker/backup"),
    compose_file: ComposeOption = Path("docker-compose.yml"),
) -> None:
    """Stop and remove the backup service.

    The gym system keeps running.
    """
    with reporting_errors():
        _compose(env, out, compose_file, ["rm", "--stop", "--force", "backup"])


class LogName(enum.StrEnum):
    """The service's logs in BACKUP_DIR."""

    BACKUP = "backup"
    CRON = "cron"
    RESTORE = "restore"


@app.command()
def logs(
    which: Annotated[LogName, typer.Argument(help="Which log.")] = LogName.BACKUP,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 50,
    local: LocalOption = False,
    env: EnvOption = None,
) -> None:
    """Show the end of backup.log, cron.log or restore.log."""
    with reporting_errors():
        settings = _load(env)
        path = Path(settings.values["BACKUP_DIR"]) / f"{which.value}.log"
        if local:
            if not path.is_file():
                raise UserError(f"{path} does not exist yet.")
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
            typer.echo("\n".join(text[-lines:]))
            return
        code = ops.docker_exec(
            settings.values["BACKUP_CONTAINER"], ["tail", "-n", str(lines), str(path)]
        )
        _fail_on(code, f"tail {path}")
