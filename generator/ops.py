"""The commands the CLI runs: docker, docker compose (or docker-compose) and bash.

Every command ``gym-backup`` runs goes through here: the rendered scripts (``backup_script.sh``,
``restore_script.sh``) under bash on this host (``--local``), and ``docker build``, ``docker
compose``, ``docker exec``, ``docker inspect`` and ``docker restart`` for the service's container.
All of them run through the ``sh`` library, the one way the product runs a command (the
development tools in ``devtools/`` use ``subprocess``).

Secrets travel only in the environment (``_env``), never as arguments: ``sh`` prints the full
command line in its errors. Commands run in the foreground (``_fg``), so the user sees their
output as it comes, and their exit code is returned rather than raised. ``sh`` (and the asyncio it
brings) is imported by the functions that run a command, so that ``--help`` and ``config check``
start without it.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from generator.errors import UserError

if TYPE_CHECKING:
    import sh

# How many of a failed build's last lines its error repeats.
BUILD_TAIL_LINES = 20
# Terminal colour codes (the legacy builder colours the build's stderr even when not on a tty).
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _command(name: str, install_hint: str) -> sh.Command:
    import sh

    try:
        return sh.Command(name)
    except sh.CommandNotFound:
        raise UserError(f"{name} is not installed; {install_hint}") from None


def _foreground(command: sh.Command, args: Sequence[str], env: Mapping[str, str]) -> int:
    """Run in the foreground with ``env`` added to ours; return the exit code."""
    import sh

    try:
        command(*args, _fg=True, _env={**os.environ, **env})
    except sh.SignalException as exc:
        return 128 + abs(exc.exit_code)
    except sh.ErrorReturnCode as exc:
        return exc.exit_code
    return 0


def _captured(command: sh.Command, args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run with ``env`` added to ours; return the exit code and stdout (stderr passes through)."""
    result = command(
        *args,
        _env={**os.environ, **env},
        _ok_code=list(range(256)),
        _err=sys.stderr,
        _return_cmd=True,
    )
    return int(result.exit_code), str(result)


def capture_script(script: Path, args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run a rendered script on this host; its exit code and output."""
    bash = _command("bash", "install it (apt-get install bash).")
    return _captured(bash, [str(script), *args], env)


def docker_exec_capture(name: str, args: Sequence[str]) -> tuple[int, str]:
    """Run a command in a running container; its exit code and output."""
    require_running(name)
    return _captured(docker(), ["exec", name, *args], {})


def run_script(script: Path, args: Sequence[str], env: Mapping[str, str]) -> int:
    """Run a rendered script on this host; its output goes straight to ours."""
    bash = _command("bash", "install it (apt-get install bash).")
    return _foreground(bash, [str(script), *args], env)


def signal_name(code: int) -> str | None:
    """The signal behind a shell exit code above 128, if any."""
    if code > 128:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------------------------------------
# Docker


def docker() -> sh.Command:
    """The docker client, once the engine answers."""
    import sh

    client = _command("docker", "install Docker (apt-get install docker.io) and start it.")
    try:
        client("info", "--format", "{{.ServerVersion}}", _err_to_out=True)
    except sh.ErrorReturnCode:
        raise UserError(
            "the Docker engine is not running (docker info fails); start it "
            "(systemctl start docker, or dockerd &) and try again."
        ) from None
    return client


def compose_command() -> tuple[sh.Command, list[str]]:
    """``docker compose`` (v2) when available, else ``docker-compose`` (v1)."""
    import sh

    client = docker()
    try:
        client("compose", "version", _err_to_out=True)
    except sh.ErrorReturnCode:
        return _command("docker-compose", "install it (apt-get install docker-compose)."), []
    return client, ["compose"]


def container_state(name: str) -> str | None:
    """``running``, ``exited``, ... or None when there is no such container."""
    import sh

    try:
        out = docker()("inspect", "--format", "{{.State.Status}}", name, _err_to_out=True)
    except sh.ErrorReturnCode:
        return None
    return str(out).strip()


def require_running(name: str) -> None:
    """Fail with a fix-it message unless the container runs."""
    state = container_state(name)
    if state is None:
        raise UserError(
            f"there is no container {name}: start the service with `gym-backup up` "
            "(or set BACKUP_CONTAINER)."
        )
    if state != "running":
        raise UserError(f"container {name} is {state}, not running: start it with `gym-backup up`.")


def docker_exec(name: str, args: Sequence[str]) -> int:
    """Run a command in a running container; its output goes straight to ours."""
    require_running(name)
    return _foreground(docker(), ["exec", name, *args], {})


def docker_build(context: Path, tag: str) -> None:
    """Build the image from a rendered folder; its output goes to our stderr as it comes.

    Raises:
        UserError: the build failed (exit 1), with the last lines of its output.
    """
    import sh

    tail: deque[str] = deque(maxlen=BUILD_TAIL_LINES)

    def show(line: str) -> None:
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(_ANSI_RE.sub("", line).rstrip("\r\n"))

    client = docker()
    try:
        client(
            "build",
            "--tag",
            tag,
            str(context),
            _out=show,
            _err_to_out=True,
            _tty_out=False,
            _decode_errors="replace",
        )
    except sh.ErrorReturnCode as exc:
        code = 128 + abs(exc.exit_code) if isinstance(exc, sh.SignalException) else exc.exit_code
        lines = "\n".join(f"  {line}" for line in tail)
        raise UserError(
            f"docker build {tag} failed (exit {code}); the last lines of its output:\n{lines}\n"
            "Fix what they name (a base image that cannot be pulled, a package that cannot be "
            "installed, e.g. a PG_MAJOR the flavour does not offer) and run the build again."
        ) from None


def compose(files: Sequence[Path], args: Sequence[str], project_dir: Path) -> int:
    """Run docker compose with these files (the first one sets the project folder)."""
    command, prefix = compose_command()
    file_args = [a for f in files for a in ("-f", str(f))]
    return _foreground(
        command, [*prefix, "--project-directory", str(project_dir), *file_args, *args], {}
    )


def docker_restart(name: str) -> int:
    """Restart a container (e.g. Redis after a file-mode restore)."""
    return _foreground(docker(), ["restart", name], {})
