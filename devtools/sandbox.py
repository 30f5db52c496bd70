"""Throwaway real PostgreSQL and Redis servers, started from the system binaries.

Used by the tests, by ``make run`` (:mod:`devtools.demo`) and by ``make bench``. Every server
listens on a free port of 127.0.0.1 only, keeps its data in a private temporary folder, and is
stopped and removed when its context manager exits, even on errors (:func:`redis_on` runs on a
folder it is given, and leaves the folder). Commands run through :mod:`subprocess` (``_run``).

Passwords never appear on a command line: the PostgreSQL superuser password goes through a
mode-600 ``--pwfile``, role passwords through SQL on psql's stdin, the Redis ``requirepass`` through
a mode-600 config file, and clients get theirs from ``PGPASSWORD`` / ``REDISCLI_AUTH``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
PG_SUPERUSER = "postgres"
# unix socket paths are limited to 107 bytes; ".s.PGSQL.65535" takes 14 of them
_MAX_SOCKET_DIR = 90
_START_ATTEMPTS = 3
_REDIS_START_TIMEOUT = 30.0


class SandboxError(RuntimeError):
    """A sandbox server could not be found, started, queried or stopped."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any PG*/REDISCLI_* variable that could redirect a client."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "REDISCLI_")) and k not in ("PSQLRC", "PSQL_HISTORY")
    }
    env.update(extra)
    return env


def _run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> str:
    """Run ``argv``; return its stdout, or raise :class:`SandboxError` carrying its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else _clean_env(),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SandboxError(f"{what}: {argv[0]} not found ({exc.strerror})") from None
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{what}: timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
        raise SandboxError(f"{what} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def _strip_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


# --------------------------------------------------------------------------------- PostgreSQL


def find_pg_bindir() -> Path:
    """The folder of initdb/pg_ctl: ``pg_config --bindir``, else the newest /usr/lib/postgresql."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(SandboxError):
            bindir = Path(_run([pg_config, "--bindir"], what="pg_config --bindir").strip())
            if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
                return bindir

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name))

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if not candidates:
        raise SandboxError(
            "PostgreSQL server binaries not found (no pg_config --bindir with initdb, nothing in "
            "/usr/lib/postgresql/*/bin); install the postgresql package."
        )
    return max(candidates, key=version)


def sql_literal(value: str) -> str:
    """``value`` as an SQL string literal (standard_conforming_strings: only ' is special)."""
    if "\0" in value:
        raise ValueError("an SQL string cannot contain a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if "\0" in name:
        raise ValueError("an SQL identifier cannot contain a NUL byte")
    return '"' + name.replace('"', '""') + '"'


_RESTRICT_LINE = re.compile(r"^\\(un)?restrict .*\n?", re.MULTILINE)


@dataclass
class PostgresServer:
    """A running throwaway PostgreSQL cluster (see :func:`start_postgres`)."""

    host: str
    port: int
    db: str
    user: str
    password: str = field(repr=False)
    bindir: Path
    socket_dir: Path
    data_dir: Path
    log_file: Path
    run_as: str | None = None  # "postgres" when we are root: initdb/pg_ctl run through runuser
    running: bool = False

    # ---- server control

    def _server_cmd(self, *argv: str) -> list[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, *argv]

    def start(self) -> None:
        """Start the cluster (on the same port and socket as before) and wait until it accepts."""
        if self.running:
            return
        try:
            _run(
                self._server_cmd(
                    str(self.bindir / "pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                ),
                what=f"pg_ctl start (port {self.port})",
                cwd=self.data_dir.parent,
            )
        except SandboxError as exc:
            raise SandboxError(f"{exc}\n--- server log ---\n{self.log_tail()}") from None
        self.running = True

    def stop(self) -> None:
        """Stop the cluster (``pg_ctl stop -m fast``); a stopped server stays on disk."""
        if not self.running:
            return
        _run(
            self._server_cmd(
                str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"
            ),
            what="pg_ctl stop",
            cwd=self.data_dir.parent,
        )
        self.running = False

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log (for error messages)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # ---- clients

    def client_path(self, path: str) -> str:
        """``path`` (a PATH) with this server's client programs first, as in the Debian image:
        Debian's /usr/bin/psql and pg_dump are a Perl wrapper (pg_wrapper) that adds about 50 ms
        to every call."""
        return f"{self.bindir}:{path}"

    def client_env(self, *, superuser: bool = True) -> dict[str, str]:
        """The environment of a client: ours without PG* settings, and for :attr:`user` (not the
        superuser) its password in ``PGPASSWORD``."""
        extra = {"PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "gym-backup-sandbox"}
        if not superuser:
            extra["PGPASSWORD"] = self.password
        return _clean_env(**extra)

    def client_argv(
        self, tool: str, *options: str, db: str | None = None, superuser: bool = True
    ) -> list[str]:
        """``tool`` (``psql``, ``pg_dump``...) of this cluster with ``options``, connected to
        ``db``: as the ``postgres`` superuser over the unix socket, or as :attr:`user` over TCP
        (run it with :meth:`client_env`, which holds the password)."""
        if superuser:
            conn = ["-h", str(self.socket_dir), "-p", str(self.port), "-U", PG_SUPERUSER]
        else:
            conn = ["-h", self.host, "-p", str(self.port), "-U", self.user]
        return [str(self.bindir / tool), *options, *conn, "-d", db or self.db]

    def psql(self, sql: str, db: str | None = None, *, superuser: bool = True) -> str:
        """Run ``sql`` (fed on stdin) and return the unaligned, tuples-only output.

        As the ``postgres`` superuser over the unix socket, or with ``superuser=False`` as
        :attr:`user` over TCP with its password in ``PGPASSWORD``. Command tags are suppressed
        (``-q``), so the output is only the rows of the queries, ``|``-separated. Raises
        :class:`SandboxError` with psql's stderr on any error (``ON_ERROR_STOP``).
        """
        argv = self.client_argv(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", db=db, superuser=superuser
        )
        who = PG_SUPERUSER if superuser else self.user
        out = _run(
            argv,
            what=f"psql as {who} on {db or self.db}",
            env=self.client_env(superuser=superuser),
            stdin=sql,
        )
        return _strip_newline(out)

    def createdb(self, name: str) -> None:
        """Create database ``name`` owned by :attr:`user`."""
        self.psql(f"CREATE DATABASE {sql_ident(name)} OWNER {sql_ident(self.user)};", "postgres")

    def dropdb(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        self.psql(f"DROP DATABASE IF EXISTS {sql_ident(name)} WITH (FORCE);", "postgres")

    def dump(self, db: str | None = None, *options: str) -> str:
        """``pg_dump`` of ``db`` as plain SQL, as superuser, for comparing two databases
        (``options`` such as ``--no-owner`` are added).

        The random ``\\restrict`` key lines of recent pg_dump versions are removed, so two dumps
        of equal databases compare equal.
        """
        out = _run(
            self.client_argv("pg_dump", "--format=plain", *options, db=db),
            what=f"pg_dump {db or self.db}",
            env=self.client_env(),
        )
        return _RESTRICT_LINE.sub("", out)

    def env(self) -> dict[str, str]:
        """The POSTGRES_* settings a backup script needs to reach this server as :attr:`user`."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DB": self.db,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
        }


def _chown_to(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _postgres_base(workdir: Path, run_as: str | None) -> Path:
    """A private folder for the data, socket and log.

    As root the cluster runs as ``postgres``, which usually cannot enter ``workdir`` (pytest's
    temp folders are mode 700 and owned by root), so the folder is made in the system temp folder
    and given to ``postgres``. The socket path must also stay short (107-byte limit).
    """
    if run_as is None:
        workdir.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))
        if len(str(base / "sock")) <= _MAX_SOCKET_DIR:
            return base
        shutil.rmtree(base)
    base = Path(tempfile.mkdtemp(prefix="gym-pg-"))
    _chown_to(base, run_as)
    return base


@contextlib.contextmanager
def start_postgres(
    workdir: Path, *, db: str, user: str, password: str, lc_messages: str | None = None
) -> Iterator[PostgresServer]:
    """Run a throwaway PostgreSQL cluster with role ``user`` (``password``) owning ``db``.

    The cluster listens on a free port of 127.0.0.1 (scram-sha-256) and on a private unix socket
    (trust, for the ``postgres`` superuser). It is stopped with ``pg_ctl stop -m fast`` and its
    folders are removed when the block exits. ``lc_messages`` (a locale the system has, e.g.
    ``de_DE.UTF-8``) makes the server write its messages in that language; by default it keeps
    the cluster's own (``C``: English).
    """
    if "\0" in password or "\n" in password:
        raise ValueError("the password cannot contain a line break or NUL byte")
    bindir = find_pg_bindir()
    run_as = PG_SUPERUSER if os.geteuid() == 0 else None
    if run_as is not None and shutil.which("runuser") is None:
        raise SandboxError("running as root needs runuser (util-linux) to run initdb as postgres")
    base = _postgres_base(workdir, run_as)
    data_dir, socket_dir = base / "data", base / "sock"
    server = PostgresServer(
        host=LOOPBACK,
        port=0,
        db=db,
        user=user,
        password=password,
        bindir=bindir,
        socket_dir=socket_dir,
        data_dir=data_dir,
        log_file=base / "postgres.log",
        run_as=run_as,
    )
    try:
        for path in (data_dir, socket_dir):
            path.mkdir(mode=0o700)
            _chown_to(path, run_as)
        _initdb(server, base)
        _start_on_free_port(server, lc_messages)
        server.psql(
            f"CREATE ROLE {sql_ident(user)} LOGIN PASSWORD {sql_literal(password)};\n"
            f"CREATE DATABASE {sql_ident(db)} OWNER {sql_ident(user)};\n",
            "postgres",
        )
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _initdb(server: PostgresServer, base: Path) -> None:
    pwfile = base / "superuser.pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(24) + "\n")
    try:
        _chown_to(pwfile, server.run_as)
        _run(
            server._server_cmd(
                str(server.bindir / "initdb"),
                "-D",
                str(server.data_dir),
                "-U",
                PG_SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ),
            what="initdb",
            cwd=base,
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _conf_literal(value: str) -> str:
    """``value`` as a postgresql.conf string: quoted, with ' doubled and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _start_on_free_port(server: PostgresServer, lc_messages: str | None = None) -> None:
    """Configure and start the cluster, retrying on a new port if another process took it."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        server.port = free_port()
        settings = {
            "listen_addresses": _conf_literal(LOOPBACK),
            "port": str(server.port),
            "unix_socket_directories": _conf_literal(str(server.socket_dir)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "30",
            "shared_buffers": "'32MB'",
            "log_min_messages": "warning",
        }
        if lc_messages is not None:
            settings["lc_messages"] = _conf_literal(lc_messages)
        # postgresql.auto.conf is read last: no shell quoting of pg_ctl -o, survives restarts
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        auto_conf = server.data_dir / "postgresql.auto.conf"
        auto_conf.write_text(conf)
        _chown_to(auto_conf, server.run_as)
        try:
            server.start()
        except SandboxError:
            if attempt == _START_ATTEMPTS or "could not bind" not in server.log_tail():
                raise
        else:
            return


# ------------------------------------------------------------------------------------- Redis


def _redis_quote(value: str) -> str:
    """``value`` as a double-quoted redis.conf argument: every byte but [A-Za-z0-9] as \\xHH."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        out.append(char if char.isascii() and char.isalnum() else f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def resp_command(args: Sequence[bytes | str]) -> bytes:
    """One command in the Redis protocol (RESP): any bytes are safe in it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


@dataclass
class RedisServer:
    """A running throwaway redis-server (see :func:`start_redis`, :func:`redis_on` and
    :func:`load_rdb`)."""

    host: str
    port: int
    password: str | None = field(repr=False)
    dir: Path
    conf_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def _client_env(self) -> dict[str, str]:
        extra = {"REDISCLI_AUTH": self.password} if self.password is not None else {}
        return _clean_env(**extra)

    def _base_argv(self, db: int = 0) -> list[str]:
        return ["redis-cli", "-h", self.host, "-p", str(self.port), "-n", str(db)]

    def cli(self, *args: str, db: int = 0) -> str:
        """Run one redis-cli command (password in REDISCLI_AUTH) and return its raw output.

        An error reply raises :class:`SandboxError` (``redis-cli -e``).
        """
        return _strip_newline(
            _run(
                [*self._base_argv(db), "-e", *args],
                what=f"redis-cli {args[0] if args else ''}".strip(),
                env=self._client_env(),
                timeout=60,
            )
        )

    def pipe(self, commands: Iterable[Sequence[str]], db: int = 0) -> str:
        """Send many commands at once (``redis-cli --pipe``, any bytes safe); return its summary."""
        payload = b"".join(resp_command(c) for c in commands)
        try:
            proc = subprocess.run(
                [*self._base_argv(db), "--pipe"],
                input=payload,
                capture_output=True,
                env=self._client_env(),
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError("redis-cli --pipe timed out") from None
        out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        if proc.returncode != 0 or "errors: 0," not in out:
            raise SandboxError(f"redis-cli --pipe failed (exit {proc.returncode}): {out.strip()}")
        return out.strip()

    def digest(self) -> str:
        """``DEBUG DIGEST``: a hash of the whole dataset (all databases), equal for equal data."""
        return self.cli("DEBUG", "DIGEST")

    def env(self) -> dict[str, str]:
        """The REDIS_* settings a backup script needs to reach this server."""
        env = {"REDIS_HOST": self.host, "REDIS_PORT": str(self.port)}
        if self.password is not None:
            env["REDIS_PASSWORD"] = self.password
        return env

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log (for error messages)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s); it saves its data only when its
        configuration has save points (``extra``)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def relaunch(self) -> None:
        """Start redis-server again with the same configuration (folder, port, password), as a
        restart policy does: it loads what the folder holds. It does not wait for an answer."""
        self.process = _spawn_redis(self.conf_file, self.dir, self.log_file)


def _redis_config(
    port: int,
    data_dir: Path,
    password: str | None,
    *,
    appendonly: bool = False,
    extra: Sequence[str] = (),
) -> str:
    lines = [
        f"bind {LOOPBACK}",
        f"port {port}",
        "daemonize no",
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
        f"dir {_redis_quote(str(data_dir))}",
        f"dbfilename {_redis_quote('dump.rdb')}",
        "enable-debug-command local",
        "repl-diskless-sync-delay 0",
        'logfile ""',
        "loglevel warning",
        *extra,
    ]
    if password is not None:
        lines.append(f"requirepass {_redis_quote(password)}")
    return "\n".join(lines) + "\n"


def _spawn_redis(conf_file: Path, data_dir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """redis-server with ``conf_file``, in ``data_dir``, its output appended to ``log_file``."""
    server_bin = shutil.which("redis-server")
    if server_bin is None or shutil.which("redis-cli") is None:
        raise SandboxError("redis-server / redis-cli not found; install the redis-server package.")
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [server_bin, str(conf_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            env=_clean_env(),
        )


def _launch_redis(
    data_dir: Path, password: str | None, *, appendonly: bool = False, extra: Sequence[str] = ()
) -> RedisServer:
    """Start redis-server with its config in ``data_dir``; retry on a new port if it is taken."""
    if password is not None and ("\0" in password or "\n" in password):
        raise ValueError("the password cannot contain a line break or NUL byte")
    conf_file = data_dir / "redis.conf"
    log_file = data_dir / "redis.log"
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        conf_file.unlink(missing_ok=True)
        fd = os.open(conf_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                _redis_config(port, data_dir, password, appendonly=appendonly, extra=extra)
            )
        proc = _spawn_redis(conf_file, data_dir, log_file)
        server = RedisServer(
            host=LOOPBACK,
            port=port,
            password=password,
            dir=data_dir,
            conf_file=conf_file,
            log_file=log_file,
            process=proc,
        )
        try:
            _wait_for_ping(server, proc)
        except SandboxError:
            server.stop()
            if attempt == _START_ATTEMPTS or "Address already in use" not in server.log_tail():
                raise
        else:
            return server
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_for_ping(server: RedisServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _REDIS_START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SandboxError(
                f"redis-server exited with {proc.returncode} on port {server.port}:\n"
                f"{server.log_tail()}"
            )
        try:
            last = server.cli("PING")
        except SandboxError as exc:
            last = str(exc)  # not listening yet, or LOADING a big RDB
        if last == "PONG":
            return
        time.sleep(0.05)
    raise SandboxError(
        f"redis-server on port {server.port} did not answer PING in "
        f"{_REDIS_START_TIMEOUT:g} s (last: {last}):\n{server.log_tail()}"
    )


@contextlib.contextmanager
def redis_on(
    data_dir: Path,
    *,
    password: str | None = None,
    appendonly: bool = False,
    extra: Sequence[str] = (),
) -> Iterator[RedisServer]:
    """A redis-server on ``data_dir`` as it is: it loads what the folder holds, and the folder
    stays when the server is stopped at the end. ``appendonly`` turns the AOF on, ``extra`` adds
    configuration lines (``save 900 1``, ``rename-command CONFIG ""``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _launch_redis(data_dir, password, appendonly=appendonly, extra=extra)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def start_redis(
    workdir: Path, *, password: str | None = None, appendonly: bool = False
) -> Iterator[RedisServer]:
    """Run a throwaway, empty redis-server of its own in a new folder below ``workdir``
    (``requirepass password`` when given); the folder is removed at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
    try:
        with redis_on(data_dir, password=password, appendonly=appendonly) as server:
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def load_rdb(rdb: Path, workdir: Path) -> Iterator[RedisServer]:
    """Run a fresh redis-server (no password) that loaded a copy of ``rdb`` at start.

    Compare its :meth:`RedisServer.digest` with the source server's to check a backup's content.
    """
    if not rdb.is_file():
        raise SandboxError(f"{rdb}: no such RDB file")
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="redis-rdb-", dir=workdir))
    try:
        shutil.copyfile(rdb, data_dir / "dump.rdb")
        with redis_on(data_dir) as server:
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
