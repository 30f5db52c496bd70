"""Fixtures of the integration tests: real PostgreSQL, Redis and the rendered scripts.

Every test under ``tests/integration`` is marked ``integration`` (deselect them with
``-m "not integration"``). The servers are throwaway ones from :mod:`devtools.sandbox` on free
ports of 127.0.0.1; nothing here uses a PostgreSQL or Redis already running on the machine. The
helpers the tests share are in :mod:`tests.support`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import (
    PostgresServer,
    RedisServer,
    free_port,
    sql_ident,
    start_postgres,
    start_redis,
)
from generator import render
from generator.config import load_settings
from tests.support import (
    PAYMENTS_SQL,
    PG_DB,
    PG_PASSWORD,
    PG_USER,
    REDIS_PASSWORD,
    HttpReceiver,
    MakeEnv,
    NewDb,
    Remotes,
    RunScript,
    S3Server,
    SftpServer,
    SmtpReceiver,
    Sources,
    backed_up_sources,
    createdb_privilege,
    http_receiver,
    make_remotes,
    processes_in,
    run_direct,
    script_env,
    serving,
    smtp_receiver,
    write_files,
)

HERE = Path(__file__).resolve().parent

# FILES_DIR tree made for a run that does not bring its own
SAMPLE_FILES: dict[str, bytes | tuple[bytes, int]] = {
    "members/photos/member_0001.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
    "members/photos/member 0002.jpg": b"\xff\xd8\xff\xe0 name with a space",
    "receipts/2024/recibo-ñandú.pdf": b"%PDF-1.4 unicode name",
    "notes.txt": b"hello\n",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder (or below) as ``integration``."""
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL: ``gym_secure_db`` owned by ``gym_secure_user`` (hostile password)."""
    with start_postgres(
        tmp_path_factory.mktemp("pg"), db=PG_DB, user=PG_USER, password=PG_PASSWORD
    ) as server:
        yield server


@pytest.fixture(scope="session")
def redis_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway Redis with ``requirepass`` set to a hostile password."""
    with start_redis(tmp_path_factory.mktemp("redis-auth"), password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture(scope="session")
def redis_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway Redis without a password."""
    with start_redis(tmp_path_factory.mktemp("redis-open")) as server:
        yield server


@pytest.fixture(scope="session")
def rendered_scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service rendered once with default settings (scripts read settings at run time)."""
    folder = tmp_path_factory.mktemp("service")
    render.write(render.render(load_settings(None, environ={})), folder)
    return folder


@pytest.fixture
def backup_env(pg: PostgresServer, redis_auth: RedisServer) -> MakeEnv:
    """A factory of the environment of one script run (the run sees exactly this, nothing else).

    ``make_env(tmp_path, encryption_key=..., redis=..., files_dir=..., **extra)``: BACKUP_DIR is
    ``tmp_path/backups`` (created), HOME ``tmp_path/home`` (gpg writes there), FILES_DIR a small
    tree under ``tmp_path/files`` unless given, Redis is ``redis_auth`` unless given, TZ is UTC;
    ``extra`` is applied last and overrides anything.
    """

    def make_env(
        tmp_path: Path,
        *,
        encryption_key: str | None = None,
        redis: RedisServer | None = None,
        files_dir: Path | None = None,
        **extra: str,
    ) -> dict[str, str]:
        if files_dir is None:
            files_dir = write_files(tmp_path / "files", SAMPLE_FILES)
            (files_dir / "empty-folder").mkdir(exist_ok=True)
        return script_env(
            tmp_path,
            pg,
            redis or redis_auth,
            files_dir,
            encryption_key=encryption_key,
            **extra,
        )

    return make_env


@pytest.fixture
def run_script(rendered_scripts: Path) -> RunScript:
    """A runner: ``run(script_name, *args, env=..., timeout=120)`` -> CompletedProcess (text).

    Runs ``bash <rendered_scripts>/<script_name> args...`` with exactly ``env`` (nothing is
    inherited from the test process) and captures stdout and stderr.
    """

    def run(
        script_name: str, *args: str, env: dict[str, str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_direct(rendered_scripts, script_name, *args, env=env, timeout=timeout)

    return run


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private TMPDIR for the scripts, outside the test's folder and with a short path (the
    socket paths of gpg-agent are limited): what they leave there shows. A process a failed test
    leaves running there (a temporary redis-server) is killed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="gbt-", dir="/tmp"))
    try:
        yield folder
    finally:
        for process in processes_in(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(process.split(":", 1)[0]), signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted on a fresh folder (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)


@pytest.fixture
def new_db(pg: PostgresServer) -> Iterator[NewDb]:
    """``new_db(create=True, suffix="")``: a unique database name (created, owned by the
    application role);
    every name handed out is dropped at the end, also those a restore created."""
    names: list[str] = []

    def make(*, create: bool = True, suffix: str = "") -> str:
        name = f"rs_{uuid.uuid4().hex[:12]}{suffix}"
        names.append(name)
        if create:
            pg.createdb(name)
        return name

    try:
        yield make
    finally:
        for name in names:
            pg.dropdb(name)


@pytest.fixture
def createdb(pg: PostgresServer) -> Iterator[None]:
    """The application role may create databases (restores into a new database need it)."""
    with createdb_privilege(pg, allowed=True):
        yield


@pytest.fixture(scope="module")
def reader_role(pg: PostgresServer) -> Iterator[str]:
    """A second role that the fidelity dataset grants privileges to."""
    name = f"gym_reader_{uuid.uuid4().hex[:8]}"
    pg.psql(f"CREATE ROLE {sql_ident(name)}", "postgres")
    try:
        yield name
    finally:
        pg.psql(f"DROP ROLE IF EXISTS {sql_ident(name)}", "postgres")


@pytest.fixture
def payments_db(pg: PostgresServer, new_db: NewDb) -> str:
    db = new_db()
    pg.psql(PAYMENTS_SQL, db, superuser=False)
    return db


@pytest.fixture(scope="module")
def sources(
    pg: PostgresServer, rendered_scripts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sources]:
    """A database, a Redis and a folder with a little data, and good backups of them (one set
    for each module that uses them)."""
    with backed_up_sources(pg, rendered_scripts, tmp_path_factory.mktemp("sources")) as made:
        yield made


@pytest.fixture(scope="module")
def gpg_home() -> Iterator[Path]:
    """One short private GnuPG home for all decryptions of this module (its agent starts once)."""
    home = Path(tempfile.mkdtemp(prefix="gpgt-"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
            timeout=30,
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def webhook() -> Iterator[HttpReceiver]:
    """A real HTTP server on 127.0.0.1 recording what it receives: Apprise ``json://`` notices,
    dead man's switch pings."""
    with http_receiver() as receiver:
        yield receiver


@pytest.fixture
def mailbox() -> Iterator[SmtpReceiver]:
    """A real SMTP server on 127.0.0.1 (login required, no TLS) recording the mails it accepts."""
    with smtp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def sftp_full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """A real sshd on 127.0.0.1 serving SFTP by key to the current user, with a login shell:
    rclone compares md5/sha1 computed on the server (``md5sum`` over SSH). Remote name
    ``sftpfull``; the targets are below ``.root`` on this host's disk."""
    base = tmp_path_factory.mktemp("sftpfull")
    server = SftpServer(
        "sftpfull", base / "server", free_port(), login_shell=True, root=base / "root"
    )
    with serving(server):
        yield server


@pytest.fixture(scope="session")
def sftp_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """As ``sftp_full`` but every session is ``internal-sftp`` (no shell): rclone has no remote
    hash, a copy is verified only by reading it back. Remote name ``sftponly``."""
    base = tmp_path_factory.mktemp("sftponly")
    server = SftpServer(
        "sftponly", base / "server", free_port(), login_shell=False, root=base / "root"
    )
    with serving(server):
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API on 127.0.0.1 (moto_server) enforcing IAM: remote ``s3`` may do anything,
    ``s3nodelete`` may list, read and write but never delete."""
    with serving(S3Server("s3", tmp_path_factory.mktemp("s3"), free_port())) as server:
        yield server


@pytest.fixture
def remotes(
    tmp_path: Path, sftp_full: SftpServer, sftp_only: SftpServer, s3_server: S3Server
) -> Iterator[Remotes]:
    """Empty off-site targets of this test, one on each remote (``remotes["sftpfull"]``,
    ``"sftponly"``, ``"s3"``, ``"s3nodelete"``: ``.spec`` is the rclone ``remote:path``), and
    ``remotes.config``, the rclone config file (mode 0600, ``tmp_path/rclone.conf``) defining the
    four. A server a test stopped (``target.server.down()``) is running again after the test."""
    made = make_remotes(tmp_path, [sftp_full, sftp_only], s3_server)
    try:
        yield made
    finally:
        for server in (sftp_full, sftp_only, s3_server):
            server.start()
