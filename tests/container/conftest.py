"""The container tests: the Debian-flavour image next to PostgreSQL and Redis, under Docker.

`make test-container` runs them (it starts a Docker engine when it can). The stack is a compose
project in a temporary folder laid out like the gym system's: its own docker-compose.yml with
the postgres and redis services (and a receiver of alerts and pings, standins/receiver), the
rendered service in docker/backup/ (joined with docker-compose.backup.yml, profile production),
a .env both read, and a test override with short health-check intervals. An off-site SFTP
server (standins/sftp, service ``sftp-nas``) takes the service's copies as a user would set it up
(docker-compose.nas.yml: an rclone config, the client key and the pinned host key mounted
read-only; REPLICA_TARGETS in the service's environment, not in .env, so the containers the tests
start from .env do not copy). Ports are published on 127.0.0.1 only; containers address each
other by service name.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from generator import render
from generator.config import load_settings

HERE = Path(__file__).resolve().parent
PROJECT_NAME = "gymbackuptest"
CONTAINER = "gym_backup"
# Hostile on purpose: quotes, $, backticks and spaces must survive compose, cron and the scripts.
PG_PASSWORD = "pg p'a \"s $x `y` !"
REDIS_PASSWORD = "re d'i \"s $y"
ENCRYPTION_KEY = "k e'y \"$z"

TEST_ENV = f"""\
POSTGRES_PASSWORD={PG_PASSWORD}
POSTGRES_USER=gym_secure_user
POSTGRES_DB=gym_secure_db
REDIS_PASSWORD={REDIS_PASSWORD}
ENCRYPTION_KEY={ENCRYPTION_KEY}
TZ=UTC
BACKUP_SCHEDULE=* * * * *
BACKUP_ON_START=false
BACKUP_IMAGE=gym-backup:container-test
REDIS_CONTAINER={PROJECT_NAME}_redis_1
"""

# The gym system's side of the stack (the stand-ins honour the official images' interface).
GYM_COMPOSE = """\
version: "3.9"
services:
  postgres:
    image: postgres:15
    env_file: .env
    ports: ["127.0.0.1::5432"]
    healthcheck:
      test: ["CMD", "pg_isready", "-q", "-h", "127.0.0.1"]
      interval: 1s
      timeout: 5s
      retries: 60
  redis:
    image: redis:7
    env_file: .env
    command: ["sh", "-c", "exec redis-server --dir /data --requirepass \\"$$REDIS_PASSWORD\\""]
    ports: ["127.0.0.1::6379"]
    volumes: ["redis_data:/data"]
    healthcheck:
      test: ["CMD-SHELL", "REDISCLI_AUTH=\\"$$REDIS_PASSWORD\\" redis-cli ping | grep -q PONG"]
      interval: 1s
      timeout: 5s
      retries: 60
  # Where the alerts and pings of the monitoring test go (the test reads GET /received).
  receiver:
    build: {context: "@RECEIVER_CONTEXT@"}
    image: gym-test-receiver:latest
    environment: {RECEIVER_DELAY: "0.5"}
    ports: ["127.0.0.1::8080"]
volumes:
  redis_data:
""".replace("@RECEIVER_CONTEXT@", str(HERE / "standins" / "receiver"))

# The off-site target: the replica's remote "nas" is the sftp-nas service, by key, its host key
# pinned; the files under nas/ in the stack's folder (written by the stack_folder fixture). The
# key file is named by RCLONE_CONFIG_NAS_KEY_FILE in the service's environment (NAS_COMPOSE).
NAS_SERVICE = "sftp-nas"
NAS_FOLDER = "/backups/gym"
NAS_RCLONE_CONFIG = f"""\
[nas]
type = sftp
host = {NAS_SERVICE}
user = gymbackup
known_hosts_file = /run/secrets/nas_known_hosts
shell_type = unix
md5sum_command = md5sum
sha1sum_command = sha1sum
"""
NAS_COMPOSE = """\
version: "3.9"
services:
  sftp-nas:
    build: {context: "@SFTP_CONTEXT@"}
    image: gym-test-sftp:latest
    volumes:
      - "@NAS@/host_key:/etc/ssh/host_key:ro"
      - "@NAS@/nas_key.pub:/etc/ssh/authorized_keys/gymbackup:ro"
  backup:
    environment:
      REPLICA_TARGETS: nas=nas:@NAS_FOLDER@
      REPLICA_RCLONE_CONFIG_FILE: /run/secrets/rclone.conf
      # One key of the remote as rclone's own variable, which the entrypoint hands to the cron
      # jobs: without it a scheduled copy cannot log in.
      RCLONE_CONFIG_NAS_KEY_FILE: /run/secrets/nas_key
    volumes:
      - "@NAS@/rclone.conf:/run/secrets/rclone.conf:ro"
      - "@NAS@/nas_key:/run/secrets/nas_key:ro"
      - "@NAS@/known_hosts:/run/secrets/nas_known_hosts:ro"
"""

TEST_OVERRIDE = """\
version: "3.9"
services:
  backup:
    healthcheck:
      interval: 2s
      timeout: 20s
      start_period: 2s
      retries: 2
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder as ``container``."""
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.container)


def docker_ready() -> str | None:
    """None when a Docker engine and docker-compose answer, else why not."""
    if shutil.which("docker") is None:
        return "docker is not installed (make test-container installs it when run as root)"
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (make test-container installs it as root)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return "no Docker engine is running (make test-container starts one as root)"
    return None


def docker(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """A docker command; its output captured as text."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


@dataclass(frozen=True)
class Stack:
    """The running test stack."""

    folder: Path

    @property
    def backups(self) -> Path:
        return self.folder / "backups"

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        files = [a for f in compose_files(self.folder) for a in ("-f", str(f))]
        return subprocess.run(
            ["docker-compose", "-p", PROJECT_NAME, *files, "--profile", "production", *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )

    def container(self, service: str) -> str:
        return f"{PROJECT_NAME}_{service}_1"

    def health(self) -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", CONTAINER).stdout.strip()

    def wait_for_health(self, wanted: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() == wanted:
                return
            time.sleep(1)
        last = docker("inspect", "--format", "{{json .State.Health}}", CONTAINER).stdout
        raise AssertionError(f"{CONTAINER} not {wanted} after {timeout}s: {last[-1500:]}")

    def exec(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker exec`` in the backup container; ``env``: settings for this run (no secret:
        they are on docker's command line)."""
        options = [f"--env={name}={value}" for name, value in (env or {}).items()]
        return docker("exec", *options, CONTAINER, *args, check=False, timeout=timeout)

    def port(self, service: str, port: int) -> int:
        out = self.compose("port", service, str(port)).stdout.strip()
        return int(out.rsplit(":", 1)[1])


def compose_files(folder: Path) -> list[Path]:
    return [
        folder / "docker-compose.yml",
        folder / "docker" / "backup" / "docker-compose.backup.yml",
        folder / "docker-compose.test.yml",
        folder / "docker-compose.nas.yml",
    ]


def ssh_key_pair(key: Path) -> None:
    """A new ed25519 key pair without passphrase: ``key`` (mode 0600) and ``key``.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def write_nas_files(folder: Path) -> None:
    """What the service needs for its SFTP target, in ``folder``/nas: the client key pair, the
    server's host key (so the client can pin it in known_hosts) and the rclone config; and the
    compose file that mounts them."""
    nas = folder / "nas"
    (nas / "host_key").mkdir(parents=True)
    host_key = nas / "host_key" / "ssh_host_ed25519_key"
    ssh_key_pair(host_key)
    ssh_key_pair(nas / "nas_key")
    kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
    (nas / "known_hosts").write_text(f"{NAS_SERVICE} {kind} {blob}\n", encoding="utf-8")
    (nas / "rclone.conf").write_text(NAS_RCLONE_CONFIG, encoding="utf-8")
    (nas / "rclone.conf").chmod(0o600)
    compose = (
        NAS_COMPOSE.replace("@SFTP_CONTEXT@", str(HERE / "standins" / "sftp"))
        .replace("@NAS@", str(nas))
        .replace("@NAS_FOLDER@", NAS_FOLDER)
    )
    (folder / "docker-compose.nas.yml").write_text(compose, encoding="utf-8")


@pytest.fixture(scope="session")
def stack_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose project: the gym system's files plus the rendered Debian-flavour service."""
    reason = docker_ready()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(HERE / "build-standins.sh")], check=True, timeout=900)
    existing = docker("inspect", CONTAINER, check=False)
    if existing.returncode == 0:
        pytest.fail(f"a container named {CONTAINER} already exists; remove it to run these tests")
    folder = tmp_path_factory.mktemp("gym-project")
    (folder / ".env").write_text(TEST_ENV, encoding="utf-8")
    (folder / "docker-compose.yml").write_text(GYM_COMPOSE, encoding="utf-8")
    (folder / "docker-compose.test.yml").write_text(TEST_OVERRIDE, encoding="utf-8")
    write_nas_files(folder)
    (folder / "backups").mkdir()
    uploads = folder / "uploads" / "members" / "fotos"
    uploads.mkdir(parents=True)
    (uploads / "socia 0001 ñ.jpg").write_bytes(b"\xff\xd8\xff\xe0 photo")
    settings = load_settings(folder / ".env", {})
    render.write(render.render(settings, "debian"), folder / "docker" / "backup")
    return folder


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    """Debian's docker-compose is v1 (no `docker compose` plugin)."""
    return "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file(stack_folder: Path) -> list[str]:
    return [str(f) for f in compose_files(stack_folder)]


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return PROJECT_NAME


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    """v1 has no `up --wait`: the stack fixture waits for health itself."""
    return ["--profile production up --build -d"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["--profile production down -v --remove-orphans"]


@pytest.fixture(scope="session")
def stack(stack_folder: Path, docker_services: object) -> Iterator[Stack]:
    """The stack, up and healthy; the time it started is in ``started``."""
    running = Stack(stack_folder)
    running.wait_for_health("healthy")
    yield running
    logs = docker("logs", CONTAINER, check=False)
    print(f"--- docker logs {CONTAINER} ---\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
