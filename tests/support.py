"""What the tests share: names, datasets, servers' states, and ways to run and compare.

One module for every helper of the tests (fixtures are in the ``conftest.py`` files), each
defined once. Nothing here is mocked: the datasets go into the real throwaway servers of the
fixtures (:mod:`devtools.sandbox`), and the comparisons read them back from those servers
(``pg_dump``, ``DEBUG DIGEST``, the file tree).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import fcntl
import gzip
import hashlib
import http.server
import io
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar

import pytest

from devtools.sandbox import (
    LOOPBACK,
    PostgresServer,
    RedisServer,
    SandboxError,
    free_port,
    load_rdb,
    resp_command,
    sql_ident,
    sql_literal,
    start_redis,
)

ROOT = Path(__file__).resolve().parents[1]
# The installed command, beside this Python (make install puts both in .venv/bin).
GYM_BACKUP = Path(sys.executable).parent / "gym-backup"
RESTORE = "restore_script.sh"
BACKUP = "backup_script.sh"
# hostile on purpose, like the fixtures' passwords: the key must survive the shell untouched
KEY = "gym key 'q\" $k \\ `e` ! ; & end"
ENCRYPTION = [pytest.param(None, id="plain"), pytest.param(KEY, id="encrypted")]
EXTENSIONS = {"postgresql": "sql", "redis": "rdb", "files": "tar"}
TYPES = tuple(EXTENSIONS)
# The documented name of a backup: TYPE_backup_YYYYMMDD_HHMMSS.EXTENSION.(gz|zst)[.gpg].
BACKUP_NAME = re.compile(
    r"(?P<type>postgresql|redis|files)_backup_(?P<day>\d{8})_(?P<clock>\d{6})"
    r"\.(?P<extension>sql|rdb|tar)\.(?P<codec>gz|zst)(?P<gpg>\.gpg)?"
)
# The codecs (COMPRESSION) and their names' extensions.
CODECS = {"gzip": "gz", "zstd": "zst"}
# A row of `backup_script.sh list`: type, creation time, size, encrypted, name, (note).
LIST_ROW = re.compile(
    r"^(?P<type>\S+)\s+(?P<created>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+(?P<size>\d+(?:\.\d)? \S+)"
    r"\s+(?P<encrypted>yes|no)\s+(?P<name>\S+)(?:  \((?P<note>.*)\))?$"
)

# The fixtures' servers: gym_secure_db owned by gym_secure_user; the passwords are hostile on
# purpose (spaces, both quotes, $, backslash, backticks, !, ; and &).
PG_DB = "gym_secure_db"
PG_USER = "gym_secure_user"
PG_PASSWORD = "pg pass 'q\" $x \\ `b` ! ; &"
REDIS_PASSWORD = "re dis 'q\" $y \\ `c` ! ; &"


# ------------------------------------------------------------------------------ fixture types


class MakeEnv(Protocol):
    """conftest's ``backup_env`` factory."""

    def __call__(
        self,
        tmp_path: Path,
        *,
        encryption_key: str | None = None,
        redis: RedisServer | None = None,
        files_dir: Path | None = None,
        **extra: str,
    ) -> dict[str, str]: ...


class RunScript(Protocol):
    """conftest's ``run_script`` runner."""

    def __call__(
        self, script_name: str, *args: str, env: dict[str, str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


NewDb = Callable[..., str]  # conftest's ``new_db`` factory


# ------------------------------------------------------------------------------ running


# Where system daemons live (sshd is /usr/sbin/sshd), which a user's PATH may lack.
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def tool(name: str) -> str:
    """The path of a development tool (ruff, shellcheck, moto_server...) or system command (rclone,
    sshd): make install puts the first beside this Python, the others on PATH or in the sbin
    folders; the test is skipped when it is missing."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(
        name, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}"
    )
    if not found:
        pytest.skip(f"{name} is not installed (make install puts it in .venv)")
    return found


def run_direct(
    scripts: Path, script: str, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``bash <scripts>/<script> args...`` with exactly ``env`` (nothing is inherited from
    the test process) and capture its output: conftest's ``run_script`` runs the session's
    render with it, fixtures wider than one test call it themselves."""
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(scripts / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_ok(
    run_script: RunScript, script: str, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a script and insist on exit 0 (showing its output when it is not)."""
    result = run_script(script, *args, env=env, timeout=timeout)
    assert result.returncode == 0, (
        f"{script} {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def start_script(
    scripts: Path,
    script: str,
    *args: str,
    env: dict[str, str],
    quiet: bool = False,
    new_session: bool = False,
) -> subprocess.Popen[str]:
    """Start ``bash <scripts>/<script> args...`` in the background with exactly ``env``: its
    output in pipes (read them with ``communicate``), or thrown away when ``quiet``; in a
    process group of its own when ``new_session`` (to signal the whole run at once)."""
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        ["bash", str(scripts / script), *args],
        env=env,
        stdout=output,
        stderr=output,
        text=True,
        start_new_session=new_session,
    )


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def write_env(folder: Path, text: str) -> Path:
    """A .env file with ``text``, named ``test.env`` so that nothing takes it for the working
    folder's own ``.env``."""
    path = folder / "test.env"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ backups


def backups_of(backup_dir: Path, kind: str, *, encrypted: bool | None = None) -> list[Path]:
    """The backups of ``kind`` in ``backup_dir`` by their documented name, sorted: the encrypted
    ones, the plain ones, or by default both (safety backups included)."""
    found = []
    for path in backup_dir.iterdir():
        match = BACKUP_NAME.fullmatch(path.name)
        if match is None or match["type"] != kind or match["extension"] != EXTENSIONS[kind]:
            continue
        if encrypted is None or encrypted == bool(match["gpg"]):
            found.append(path)
    return sorted(found)


def only_backup(backup_dir: Path, kind: str, *, encrypted: bool) -> Path:
    """The one backup of ``kind`` in ``backup_dir`` (by its documented name)."""
    found = backups_of(backup_dir, kind, encrypted=encrypted)
    assert len(found) == 1, (
        f"expected one {kind} backup in {sorted(p.name for p in backup_dir.iterdir())}"
    )
    return found[0]


def name_parts(name: str) -> tuple[str, str, str]:
    """(type, YYYYMMDD, HHMMSS) of a backup's name."""
    match = BACKUP_NAME.match(name)
    assert match is not None, name
    return match["type"], match["day"], match["clock"]


def stamp(days_ago: float) -> str:
    """A backup-name timestamp ``days_ago`` days before now (negative: ahead); runs use TZ=UTC."""
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y%m%d_%H%M%S")


def with_sidecars(name: str) -> set[str]:
    """A backup's name and its two sidecars' names."""
    return {name, f"{name}.sha256", f"{name}.manifest.json"}


def runs_own(name: str) -> bool:
    """Whether a name in BACKUP_DIR is what the runs keep for themselves: the log, status.json,
    the metrics folder and the hidden bookkeeping files (the lock, the last-success marker, the run
    history)."""
    return name in {"backup.log", "status.json", "metrics"} or name.startswith(".")


def names_in(folder: Path) -> set[str]:
    """Every name in ``folder`` (files, folders, links) but the run's log and hidden files."""
    return {p.name for p in folder.iterdir() if not runs_own(p.name)}


def folder_state(folder: Path, leave_out: Callable[[str], bool] = runs_own) -> dict[str, bytes]:
    """Every file of ``folder`` (not below) and its bytes, but the names ``leave_out`` picks
    (by default what the runs keep for themselves)."""
    return {
        p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not leave_out(p.name)
    }


def write_sidecar(backup: Path) -> None:
    """Write ``backup.sha256`` for the bytes the file holds now (as backup_script.sh does)."""
    digest = hashlib.sha256(backup.read_bytes()).hexdigest()
    Path(f"{backup}.sha256").write_text(f"{digest}  {backup.name}\n")


def name_of(kind: str, when: str) -> str:
    """The name of a gzip backup of ``kind`` with the timestamp ``when`` (YYYYMMDD_HHMMSS)."""
    return f"{kind}_backup_{when}.{EXTENSIONS[kind]}.gz"


def make_backup(backups: Path, kind: str, when: str, *, sidecar: bool = True) -> str:
    """A backup-looking file (gzip data) of ``kind`` named with the timestamp ``when``, with a
    manifest and, when ``sidecar``, a ``.sha256`` that names it (as backup_script.sh writes)."""
    name = name_of(kind, when)
    path = backups / name
    path.write_bytes(gzip.compress(f"{kind} {when}\n".encode() * 50, mtime=0))
    manifest = {"schema_version": 1, "type": kind, "file": name}
    Path(f"{path}.manifest.json").write_text(json.dumps(manifest) + "\n")
    if sidecar:
        write_sidecar(path)
    return name


def restamped_copy(real: Path, new_stamp: str) -> Path:
    """Copy a real backup and its manifest to the same name with another timestamp, with a
    ``.sha256`` that names the copy (cleanup counts only backups whose sidecar names them)."""
    _, day, clock = name_parts(real.name)
    new_name = real.name.replace(f"_{day}_{clock}.", f"_{new_stamp}.")
    target = real.with_name(new_name)
    shutil.copyfile(real, target)
    shutil.copyfile(real.with_name(f"{real.name}.manifest.json"), f"{target}.manifest.json")
    write_sidecar(target)
    return target


# The head of a backup's roles block, as backup_script.sh writes it (dump_roles).
ROLES_BEGIN = (
    "-- gym-backup roles (pg_dumpall --globals-only --no-role-passwords): "
    "restore_script.sh creates those a new server lacks"
)


def hostile_dump(backup_dir: Path, payload: str, roles: Sequence[str] = ()) -> Path:
    """A plain backup holding ``payload`` between two good statements, with a matching sidecar
    and pg_dump's header and completion trailer: everything a real backup has; with ``roles``
    (statements as pg_dumpall writes them), a roles block at its head, as backups carry."""
    backup = backup_dir / "postgresql_backup_20240101_000000.sql.gz"
    block = "".join(f"--| {line}\n" for line in roles)
    sql = (
        (f"{ROLES_BEGIN}\n{block}-- gym-backup roles end\n" if roles else "")
        + "--\n-- PostgreSQL database dump\n--\n\n"
        "CREATE TABLE public.before_payload (x int);\n"
        f"{payload}\n"
        "CREATE TABLE public.after_payload (x int);\n"
        "--\n-- PostgreSQL database dump complete\n--\n\n"
    )
    backup.write_bytes(gzip.compress(sql.encode()))
    write_sidecar(backup)
    return backup


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def copy_backup(backup: Path, folder: Path, *, sidecars: bool = True) -> Path:
    """Copy a backup (and its sidecars) into ``folder`` under the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / backup.name
    shutil.copyfile(backup, copy)
    if sidecars:
        for suffix in (".sha256", ".manifest.json"):
            sidecar = Path(f"{backup}{suffix}")
            if sidecar.exists():
                shutil.copyfile(sidecar, f"{copy}{suffix}")
    return copy


def run_gpg(home: Path, key: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Real gpg in batch mode with the GnuPG home ``home`` and the passphrase ``key`` on stdin,
    never on the command line."""
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--quiet", "--pinentry-mode",
         "loopback", "--no-symkey-cache", "--passphrase-fd", "0", *args],
        input=key.encode() + b"\n",
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def decode(path: Path, key: str | None = None, home: Path | None = None) -> bytes:
    """A stored backup's raw content, decoded the way an operator would: decrypted with real gpg
    when ``key`` is given (``home`` the GnuPG home), then gunzipped, or for a ``.zst`` backup
    decompressed by the real ``zstd``."""
    data = path.read_bytes()
    if key is not None:
        assert home is not None, "decrypting needs a GnuPG home"
        decrypted = run_gpg(home, key, "--decrypt", str(path))
        assert decrypted.returncode == 0, decrypted.stderr.decode(errors="replace")
        data = decrypted.stdout
    if ".zst" in path.suffixes:
        assert data[:4] == ZSTD_MAGIC, f"{path.name} does not decode to zstd data"
        unzstd = subprocess.run(
            ["zstd", "-d", "-c", "-q"], input=data, capture_output=True, check=False
        )
        assert unzstd.returncode == 0, unzstd.stderr.decode(errors="replace")
        return unzstd.stdout
    assert data[:2] == b"\x1f\x8b", f"{path.name} does not decode to gzip data"
    return gzip.decompress(data)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class KeyPair:
    """A throwaway OpenPGP key pair made by real gpg: the armored public key (what
    ENCRYPTION_RECIPIENT names) and private key (what DECRYPTION_KEY_FILE names), its passphrase
    ("" for none), and the ID of the encryption subkey gpg encrypts to."""

    public: Path
    private: Path
    passphrase: str
    subkey_id: str
    fingerprint: str


def new_gpg_home() -> Path:
    """A new private GnuPG home with a short path (gpg-agent's socket paths are limited)."""
    home = Path(tempfile.mkdtemp(prefix="gpgt-"))
    home.chmod(0o700)
    return home


def drop_gpg_home(home: Path) -> None:
    """Stop the gpg-agent of ``home`` and remove it."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    shutil.rmtree(home, ignore_errors=True)


def make_key_pair(folder: Path, name: str, passphrase: str = "", usage: str = "default") -> KeyPair:
    """Generate a key pair with ``gpg --quick-gen-key`` in a throwaway home, export it to
    ``folder/NAME.pub.asc`` and ``folder/NAME.key.asc``; ``usage`` "sign" makes a key that
    cannot encrypt."""
    folder.mkdir(parents=True, exist_ok=True)
    home = new_gpg_home()
    try:
        # ed25519 and cv25519 keys: made in milliseconds, where RSA takes seconds
        algo, subkey = ("future-default", "default") if usage == "default" else ("ed25519", "sign")
        made = run_gpg(home, passphrase, "--quick-gen-key", f"{name} <{name}@gym.test>", algo,
                       subkey, "never")  # fmt: skip
        assert made.returncode == 0, made.stderr.decode(errors="replace")
        listed = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        records = [line.split(":") for line in listed.stdout.splitlines()]
        fingerprint = next(r[9] for r in records if r[0] == "fpr")
        subkey_id = next((r[4] for r in records if r[0] in ("pub", "sub") and "e" in r[11]), "")
        public = folder / f"{name}.pub.asc"
        exported = run_gpg(home, passphrase, "--export", "--armor", fingerprint)
        public.write_bytes(exported.stdout)
        private = folder / f"{name}.key.asc"
        exported = run_gpg(home, passphrase, "--export-secret-keys", "--armor", fingerprint)
        assert exported.returncode == 0, exported.stderr.decode(errors="replace")
        private.write_bytes(exported.stdout)
        private.chmod(0o600)
        return KeyPair(public, private, passphrase, subkey_id, fingerprint)
    finally:
        drop_gpg_home(home)


@contextlib.contextmanager
def holding_the_lock(backup_dir: Path, who: str) -> Iterator[None]:
    """For the block, hold ``backup_dir``'s lock as a running run does: ``flock`` on
    ``.gym-backup.lock``, which says ``who`` holds it."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    with (backup_dir / ".gym-backup.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(who + "\n")
        lock.flush()
        yield


# ------------------------------------------------------------------------------ processes


def processes_in(folder: Path) -> list[str]:
    """Processes whose working folder is in ``folder`` (redis-server changes into its ``dir``)."""
    found = []
    prefix = str(folder)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = str((proc / "cwd").readlink())
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            found.append(f"{proc.name}: {cmdline.strip()} (in {cwd})")
    return found


Result: TypeAlias = subprocess.CompletedProcess[str]
NOBODY = 65534
# The tests that run a script as another user than root (to meet a folder it may not read).
needs_root_and_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="running a script as another user than root needs root and setpriv",
)


@contextlib.contextmanager
def nobody_run(rendered_scripts: Path) -> Iterator[tuple[Path, Callable[..., Result]]]:
    """A folder in /tmp (mode 0755) whose ``backups`` folder belongs to nobody, and a runner
    ``run(args, env)`` of backup_script.sh as nobody from a copy in that folder; the folder is
    removed after."""
    base = Path(tempfile.mkdtemp(prefix="as-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "backups").mkdir()
        os.chown(base / "backups", NOBODY, NOBODY)
        script = base / BACKUP
        shutil.copyfile(rendered_scripts / BACKUP, script)

        def run(*args: str, env: dict[str, str]) -> Result:
            return subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "bash", str(script), *args],
                env={**env, "BACKUP_DIR": str(base / "backups"), "HOME": str(base)},
                cwd=base, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        yield base, run
    finally:
        shutil.rmtree(base, ignore_errors=True)


def kill_stage_when_writing(
    run: subprocess.Popen[str], flag: str, partial_glob: Path, min_bytes: int, what: str
) -> str:
    """SIGKILL the process of ``run`` (a backup started with :func:`start_script`) whose argv
    holds ``flag`` once a file matching ``partial_glob`` holds ``min_bytes`` or more; the run's
    stderr once it has ended (it is killed if it does not end by itself)."""
    victim: list[int] = []

    def ready() -> bool:
        pid = next((p for p, argv in descendants(run.pid) if flag in argv), None)
        partial = list(partial_glob.parent.glob(partial_glob.name))
        if pid is None or not partial or partial[0].stat().st_size < min_bytes:
            return False
        victim.append(pid)
        return True

    try:
        wait_for(ready, what, timeout=60)
        os.kill(victim[0], signal.SIGKILL)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    return err


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """The processes below ``pid`` (children, their children...), each with its argv."""
    parents: dict[int, int] = {}
    argvs: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat_line = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the command name in parentheses may hold spaces: the fields after it are fixed
        parents[int(proc.name)] = int(stat_line.rsplit(")", 1)[1].split()[1])
        argvs[int(proc.name)] = [a.decode(errors="replace") for a in argv if a]
    found: list[tuple[int, list[str]]] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and argvs.get(child):
                found.append((child, argvs[child]))
                frontier.append(child)
    return found


def runs_pg_dump(processes: list[tuple[int, list[str]]]) -> bool:
    """Whether a pg_dump dumping (not the pg_dumpall before it, nor the ``pg_dump --version``
    before that) is among ``processes`` (descendants)."""
    return any(
        argv and Path(argv[0]).name == "pg_dump" and "--version" not in argv
        for _, argv in processes
    )


# ------------------------------------------------------------------------------ PostgreSQL

# What a database owner (not a superuser) can restore. Left out on purpose, because restoring
# them needs a superuser: untrusted extensions (CREATE EXTENSION postgres_fdw, plpython3u),
# COMMENT ON EXTENSION of an extension the restoring role does not own, event triggers, and
# ownership by other roles (the --no-owner test covers that). citext is a trusted extension:
# the database owner may create it, so it stays in.
FIDELITY_SQL = r"""
CREATE SCHEMA gym;
COMMENT ON SCHEMA gym IS 'objetos del gimnasio, ñandú';
CREATE EXTENSION citext SCHEMA gym;
CREATE TYPE gym.mood AS ENUM ('sad', 'ok', 'happy', 'ñandú');
CREATE DOMAIN gym.positive_amount AS numeric(12, 2) CHECK (VALUE > 0);
CREATE TYPE gym.slot AS (starts timestamptz, room text);
CREATE SEQUENCE gym.receipt_no START 1000 INCREMENT 7;
SELECT nextval('gym.receipt_no') FROM generate_series(1, 5);
CREATE SEQUENCE gym.unused_seq;
CREATE TABLE gym.kitchen_sink (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ints int[],
    grid text[][],
    js json,
    jsb jsonb,
    blob bytea,
    exact numeric(40, 20),
    amount gym.positive_amount,
    at timestamptz,
    day date,
    span interval,
    feeling gym.mood,
    booked tstzrange,
    ages int4range,
    uid uuid,
    addr inet,
    flags bit varying(16),
    place point,
    slot gym.slot,
    words tsvector,
    email gym.citext,
    note text,
    CONSTRAINT note_not_blank CHECK (note <> ''),
    CONSTRAINT no_double_booking EXCLUDE USING gist (booked WITH &&)
);
COMMENT ON TABLE gym.kitchen_sink IS 'every column type';
COMMENT ON COLUMN gym.kitchen_sink.blob IS 'bytes with zeros';
INSERT INTO gym.kitchen_sink (ints, grid, js, jsb, blob, exact, amount, at, day, span, feeling,
                              booked, ages, uid, addr, flags, place, slot, words, email, note)
VALUES
    ('{1,NULL,-3}', '{{a,"b c"},{"d\"e",NULL}}', '{"b": 1, "a": [true, null]}',
     '{"nested": {"ñ": "日本語", "n": 1.50}}', '\x00ff00000001fe00'::bytea,
     '12345678901234567890.12345678901234567890', 15000.50, '2024-02-29 23:59:59.999999+00',
     '2024-02-29', '1 year 2 mons 3 days 04:05:06.789', 'ñandú',
     '[2024-01-01 10:00+00,2024-01-01 11:00+00)', '[18,65)',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', B'1011', '(1.5,-2)',
     ROW('2024-01-01 10:00+00', 'sala 1'), to_tsvector('simple', 'José Núñez corre'),
     'Ana@Gym.Example', E'José Núñez 🏋 \u05e9\u05dc\u05d5\u05dd e\u0301 tab\there'),
    (NULL, NULL, 'null', '[]', '\x00'::bytea, 'NaN', 0.01, '-infinity', 'infinity', '-1 day',
     'sad', '[2024-01-02 10:00+00,)', 'empty', NULL, '::1', B'', NULL, NULL, NULL, NULL,
     E'line1\nline2\\ and \r a carriage return'),
    ('{}', '{}', '{}', '{}', ''::bytea, -0.00000000000000000001, 99999999.99,
     '1999-12-31 21:00:00-03', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, 'O''Brien "quoted" \N not null');
CREATE TABLE gym.members (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    level gym.mood NOT NULL DEFAULT 'ok',
    joined date NOT NULL DEFAULT '2024-01-01'
);
CREATE INDEX members_lower_name ON gym.members (lower(name));
CREATE INDEX members_recent ON gym.members (joined) WHERE joined > '2023-01-01';
INSERT INTO gym.members (email, name, level)
SELECT 'member' || i || '@gym.example', 'Socio ' || i || ' Núñez',
       (ARRAY['sad', 'ok', 'happy', 'ñandú'])[1 + i % 4]::gym.mood
FROM generate_series(1, 300) AS i;
CREATE TABLE gym.payments (
    receipt bigint PRIMARY KEY DEFAULT nextval('gym.receipt_no'),
    member_id int NOT NULL REFERENCES gym.members (id) ON DELETE CASCADE,
    amount gym.positive_amount NOT NULL,
    paid_at timestamptz NOT NULL
);
CREATE INDEX payments_member ON gym.payments (member_id);
INSERT INTO gym.payments (member_id, amount, paid_at)
SELECT 1 + i % 300, 1000 + i, '2024-01-01 00:00+00'::timestamptz + i * interval '1 hour'
FROM generate_series(1, 500) AS i;
CREATE TABLE gym.checkins (member_id int NOT NULL, at timestamptz NOT NULL, door text)
    PARTITION BY RANGE (at);
CREATE TABLE gym.checkins_2024 PARTITION OF gym.checkins
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE gym.checkins_2025 PARTITION OF gym.checkins
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX checkins_at ON gym.checkins (at);
INSERT INTO gym.checkins
SELECT 1 + i % 300, '2024-06-01 00:00+00'::timestamptz + i * interval '1 day',
       CASE WHEN i % 2 = 0 THEN 'norte' ELSE 'sur' END
FROM generate_series(1, 400) AS i;
CREATE VIEW gym.member_totals AS
    SELECT m.id, m.name, sum(p.amount) AS total
    FROM gym.members m JOIN gym.payments p ON p.member_id = m.id GROUP BY m.id, m.name;
COMMENT ON VIEW gym.member_totals IS 'totals per member';
CREATE MATERIALIZED VIEW gym.door_counts AS
    SELECT door, count(*) AS n FROM gym.checkins GROUP BY door;
CREATE UNIQUE INDEX door_counts_door ON gym.door_counts (door);
CREATE TABLE gym.audit (
    id bigserial PRIMARY KEY,
    what text NOT NULL,
    at timestamptz NOT NULL DEFAULT '2024-01-01 00:00+00'
);
CREATE FUNCTION gym.log_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gym.audit (what) VALUES ('payment ' || NEW.receipt || ' of ' || NEW.amount);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION gym.log_payment() IS 'audit trail, ñ';
CREATE TRIGGER payments_audit AFTER INSERT ON gym.payments
    FOR EACH ROW EXECUTE FUNCTION gym.log_payment();
CREATE FUNCTION gym.add(a integer, b integer) RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
INSERT INTO gym.payments (member_id, amount, paid_at) VALUES (7, 123.45, '2024-05-05 05:05+00');
ALTER TABLE gym.members ENABLE ROW LEVEL SECURITY;
CREATE POLICY members_own ON gym.members FOR SELECT USING (email = current_user);
SELECT lo_from_bytea(0, '\x00010203ff00fe00'::bytea);
CREATE TABLE public.plain_table (k text PRIMARY KEY, v text);
INSERT INTO public.plain_table VALUES ('clave', 'valor ñ'), ('tab', E'a\tb');
"""

# Rows in the tables that hold them (a partitioned table's rows are in its partitions).
FIDELITY_TABLES = 7  # the tables whose data the dump loads: the partitions, not their parent
FIDELITY_ROWS = 3 + 300 + 501 + 400 + 1 + 2


def fidelity_grants(reader: str) -> str:
    """Grants of the fidelity objects to a second role (run as their owner)."""
    role = sql_ident(reader)
    return f"""
GRANT USAGE ON SCHEMA gym TO {role};
GRANT SELECT ON gym.members, gym.member_totals, gym.door_counts TO {role};
GRANT SELECT (receipt, amount), UPDATE (amount) ON gym.payments TO {role};
GRANT USAGE ON SEQUENCE gym.receipt_no TO {role};
GRANT EXECUTE ON FUNCTION gym.add(integer, integer) TO {role};
REVOKE EXECUTE ON FUNCTION gym.log_payment() FROM PUBLIC;
"""  # noqa: S608 - the role is quoted by sql_ident


def load_fidelity(pg: PostgresServer, db: str, reader: str) -> None:
    """The fidelity dataset in ``db``, created by the application role (not a superuser)."""
    pg.psql(FIDELITY_SQL + fidelity_grants(reader), db=db, superuser=False)


# Billing data with a table big enough that the decoders are still running while the restore
# waits on a lock (the pipes between them hold far less than the dump).
PAYMENTS_SQL = """
CREATE SCHEMA billing;
CREATE TABLE billing.payments (id int PRIMARY KEY, member int NOT NULL, amount numeric(10, 2),
                               note text);
INSERT INTO billing.payments
SELECT i, i % 500, i * 1.5, 'pago ' || i || ' ñandú ' || md5(i::text)
FROM generate_series(1, 100000) AS i;
CREATE TABLE billing.summary (member int PRIMARY KEY, total numeric);
INSERT INTO billing.summary SELECT member, sum(amount) FROM billing.payments GROUP BY member;
"""
CHANGE = (
    "UPDATE billing.payments SET note = 'cambiado' WHERE id <= 100; DELETE FROM billing.summary;"
)


def _lock_mode_name(mode: str) -> str:
    """How pg_locks names a table lock mode: ``ACCESS SHARE`` is ``AccessShareLock``."""
    return "".join(word.capitalize() for word in mode.split()) + "Lock"


@contextlib.contextmanager
def table_lock(
    pg: PostgresServer, db: str, table: str, mode: str = "ACCESS SHARE"
) -> Iterator[Callable[[], None]]:
    """For the block, a superuser session holds ``mode`` on ``table`` in an open transaction
    (ACCESS SHARE blocks what would drop the table; ACCESS EXCLUSIVE blocks pg_dump too). The
    block starts once the lock is granted; it gets a function that ends the session early."""
    session = subprocess.Popen(
        pg.client_argv("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", db=db),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=pg.client_env(),
        text=True,
    )
    assert session.stdin is not None
    stdin = session.stdin

    def release() -> None:
        if not stdin.closed:
            stdin.close()
        session.wait(timeout=30)

    try:
        stdin.write(f"BEGIN; LOCK TABLE {table} IN {mode} MODE;\n")
        stdin.flush()
        granted = (
            "SELECT count(*) FROM pg_locks WHERE granted "  # noqa: S608 - quoted literals
            f"AND relation = {sql_literal(table)}::regclass "
            f"AND mode = {sql_literal(_lock_mode_name(mode))}"
        )
        wait_for(lambda: pg.psql(granted, db) != "0", f"the {mode} lock on {table}")
        yield release
    finally:
        release()


def wait_for_blocked_session(pg: PostgresServer, db: str, timeout: float = 60) -> None:
    """Until a session of the application role in ``db`` (a run's pg_dump, a restore) waits
    for a lock."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "  # noqa: S608
        f"AND datname = {sql_literal(db)} AND usename = {sql_literal(pg.user)}"
    )
    wait_for(
        lambda: pg.psql(waiting, "postgres") != "0",
        f"a session of {pg.user} in {db} to wait for a lock",
        timeout,
    )


def database_names(pg: PostgresServer) -> set[str]:
    return set(pg.psql("SELECT datname FROM pg_database", "postgres").splitlines())


@contextlib.contextmanager
def createdb_privilege(pg: PostgresServer, *, allowed: bool) -> Iterator[None]:
    """Give (or take) the application role CREATEDB for the block, then put it back as it was."""
    role = sql_ident(pg.user)
    before = pg.psql(
        f"SELECT rolcreatedb FROM pg_roles WHERE rolname = '{pg.user}'",  # noqa: S608 - fixed name
        "postgres",
    )
    pg.psql(f"ALTER ROLE {role} {'CREATEDB' if allowed else 'NOCREATEDB'}", "postgres")
    try:
        yield
    finally:
        pg.psql(f"ALTER ROLE {role} {'CREATEDB' if before == 't' else 'NOCREATEDB'}", "postgres")


# ------------------------------------------------------------------------------ Redis

Reply: TypeAlias = "str | int | bytes | list[Reply] | RespError | None"


class RespError(Exception):
    """An error reply of the server (``-ERR ...``, ``-READONLY ...``)."""

    @property
    def kind(self) -> str:
        return str(self).split(" ", 1)[0]


class Resp:
    """A minimal RESP2 client over one TCP connection: any bytes in, replies out."""

    def __init__(self, server: RedisServer, *, timeout: float = 30) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        if server.password is not None:
            self.call("AUTH", server.password)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> Reply:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise ConnectionError(f"unexpected reply {line!r}")

    def call(self, *args: bytes | str) -> Reply:
        """Send one command; an error reply raises :class:`RespError`."""
        self.sock.sendall(resp_command(args))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[bytes | str]]) -> list[Reply]:
        """Send many commands at once; any error reply raises :class:`RespError`."""
        self.sock.sendall(b"".join(resp_command(c) for c in commands))
        replies = [self._read() for _ in commands]
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies


DATASET_DBS = (0, 1, 5, 15)


def load_redis_dataset(server: RedisServer) -> None:
    """Replace the server's data: every type, binary values, TTLs, four logical databases."""
    big_hash = [x for i in range(300) for x in (f"field {i}".encode(), bytes([i % 256]) * 40)]
    with Resp(server) as r:
        r.call("FLUSHALL")
        r.pipeline(
            [
                ["SELECT", "0"],
                ["SET", "bin:zeros", b"\x00\x01\xff\xfe\x00" + bytes(range(256))],
                ["SET", b"bin:key \x00\xff", b"binary key name"],
                ["SET", "text:unicode", "José Núñez 🏋 日本語 שלום"],
                ["SET", "counter", "12345"],
                ["SET", "big:string", os.urandom(1024).hex() * 40],
                ["RPUSH", "list:small", "a", "", "c d", b"\x00"],
                ["RPUSH", "list:big", *[str(i) for i in range(2000)]],
                ["HSET", "hash:small", "name", "Ana", "plan", "premium", b"\xff", b"\x00"],
                ["HSET", "hash:big", *big_hash],
                ["SADD", "set:ints", "1", "2", "3", "-9", "1000000"],
                ["SADD", "set:strs", "yoga", "crossfit", "spinning", "ñandú"],
                ["SADD", "set:big", *[f"m{i}" for i in range(600)]],
                ["ZADD", "zset:small", "1.5", "ana", "-2", "bruno", "inf", "carla"],
                ["ZADD", "zset:big", *[x for i in range(300) for x in (str(i / 7), f"p{i}")]],
                ["XADD", "stream:checkins", "1700000000000-0", "member", "1", "door", "norte"],
                ["XADD", "stream:checkins", "1700000000001-0", "member", "2", "door", "sur"],
                ["XADD", "stream:checkins", "1700000000002-5", "member", "3", "foto", b"\x00\xff"],
                ["XGROUP", "CREATE", "stream:checkins", "staff", "0"],
                [
                    "XREADGROUP",
                    "GROUP",
                    "staff",
                    "ana",
                    "COUNT",
                    "2",
                    "STREAMS",
                    "stream:checkins",
                    ">",
                ],
                ["PFADD", "hll:visitors", "a", "b", "c", "d"],
                ["SETBIT", "bitmap:days", "1000", "1"],
                ["GEOADD", "geo:gyms", "-58.3816", "-34.6037", "centro"],
                ["SET", "session:abc", "token", "EX", "3600"],
                ["PEXPIRE", "hash:small", "7200000"],
                ["EXPIRE", "list:small", "86400"],
                ["SELECT", "1"],
                ["SET", "db1:key", "in db one"],
                ["SET", "db1:ttl", "expiring", "PX", "5000000"],
                ["LPUSH", "db1:jobs", "job-1", "job-2"],
                ["SELECT", "5"],
                ["HSET", "db5:hash", "a", "1", "b", "2"],
                ["EXPIRE", "db5:hash", "9000"],
                ["ZADD", "db5:rank", "10", "x", "20", "y"],
                ["SELECT", "15"],
                ["SET", "db15:last", "the last logical database"],
                ["SELECT", "0"],
            ]
        )


@dataclass(frozen=True)
class RedisState:
    """What a restore must bring back: the dataset digest, the keys and their TTLs."""

    digest: str
    keys: dict[int, int]  # db -> number of keys
    ttls: dict[tuple[int, bytes], int]  # (db, key) -> PTTL in ms, -1 without one


def load_random_values(server: RedisServer, megabytes: int) -> None:
    """Replace the server's data with ``megabytes`` MB of incompressible values (1 kB each):
    enough for a snapshot to take a while to compress, encrypt or replicate."""
    server.cli("FLUSHALL")
    for start in range(0, megabytes * 1024, 4096):
        server.pipe(
            [
                ["SET", f"blob:{i}", os.urandom(512).hex()]
                for i in range(start, min(start + 4096, megabytes * 1024))
            ]
        )


RDB_MAGIC = b"REDIS00"


class RdbWatch(threading.Thread):
    """Watches folders (and what is below them) while a script runs: every file that starts
    with an RDB header is plaintext of a Redis dataset; ``seen`` maps it to the mode of the
    first folder below the watched one that holds it (the script's private WORK_DIR)."""

    def __init__(self, *folders: Path) -> None:
        super().__init__(daemon=True)
        self.folders = folders
        self.halt = threading.Event()
        self.seen: dict[Path, int] = {}

    def run(self) -> None:
        while not self.halt.is_set():
            for folder in self.folders:
                for path in rdb_files(folder, head_only=True):
                    top = folder / path.relative_to(folder).parts[0]
                    with contextlib.suppress(OSError):
                        self.seen.setdefault(path, stat.S_IMODE(top.stat().st_mode))
            time.sleep(0.005)

    def __enter__(self) -> RdbWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=30)


def rdb_files(folder: Path, *, head_only: bool = False) -> list[Path]:
    """The files below ``folder`` that start with an RDB header or, unless ``head_only``, hold
    one anywhere (an RDB in clear inside any other file)."""
    found = []
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            try:
                # only regular files: reading a script's FIFO would steal its data
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue
                with path.open("rb") as handle:
                    data = handle.read(len(RDB_MAGIC)) if head_only else handle.read()
            except OSError:  # gone meanwhile
                continue
            if RDB_MAGIC in data:
                found.append(path)
    return found


def redis_state(server: RedisServer) -> RedisState:
    ttls: dict[tuple[int, bytes], int] = {}
    keys: dict[int, int] = {}
    with Resp(server) as r:
        digest = r.call("DEBUG", "DIGEST")
        for db in range(16):
            r.call("SELECT", str(db))
            names = r.call("KEYS", "*")
            assert isinstance(names, list)
            if names:
                keys[db] = len(names)
            for name in names:
                assert isinstance(name, bytes)
                pttl = r.call("PTTL", name)
                assert isinstance(pttl, int)
                ttls[(db, name)] = pttl
    assert isinstance(digest, str)
    return RedisState(digest=digest, keys=keys, ttls=ttls)


def assert_same_redis(after: RedisState, before: RedisState, *, elapsed_ms: int) -> None:
    """Same digest and keys; every TTL kept (less the time that passed, within a tolerance)."""
    assert after.digest == before.digest
    assert after.keys == before.keys
    assert after.ttls.keys() == before.ttls.keys()
    for key, old in before.ttls.items():
        new = after.ttls[key]
        if old == -1:
            assert new == -1, key
        else:
            assert old - elapsed_ms - 2000 <= new <= old, (key, old, new)


@contextlib.contextmanager
def restarted_when_stopped(server: RedisServer) -> Iterator[threading.Event]:
    """As Docker's restart policy does: when the process of ``server`` exits, start redis-server
    again, once, with the same configuration (folder, port, password): it loads what the folder
    holds. The event is set once the new process answers PING."""
    halt = threading.Event()
    restarted = threading.Event()

    def watch() -> None:
        old = server.process
        assert old is not None
        while old.poll() is None:
            if halt.wait(0.02):
                return
        server.relaunch()
        while not halt.is_set():
            with contextlib.suppress(SandboxError):
                if server.cli("PING") == "PONG":
                    restarted.set()
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield restarted
    finally:
        halt.set()
        watcher.join(timeout=30)


def redis_files(server: RedisServer) -> dict[str, bytes]:
    """Every file in the server's folder (not below) and its bytes, but its configuration and
    log."""
    own = {server.conf_file.name, server.log_file.name}
    return folder_state(server.dir, leave_out=own.__contains__)


def wait_aof_rewrite(server: RedisServer) -> None:
    """Until the AOF rewrite a server with appendonly does when it starts is done."""
    wait_for(
        lambda: "aof_rewrite_in_progress:0" in server.cli("INFO", "persistence"),
        "the AOF rewrite to finish",
        timeout=30,
    )


# The settings of the live server that a backup's snapshot must leave as they are.
SNAPSHOT_SETTINGS = (
    "save",
    "dir",
    "dbfilename",
    "appendonly",
    "repl-diskless-sync",
    "repl-diskless-sync-delay",
)


def redis_settings(server: RedisServer) -> dict[str, bytes]:
    """The server's :data:`SNAPSHOT_SETTINGS` (CONFIG GET), by name."""
    settings: dict[str, bytes] = {}
    with Resp(server) as r:
        for name in SNAPSHOT_SETTINGS:
            reply = r.call("CONFIG", "GET", name)
            assert isinstance(reply, list), (name, reply)
            assert len(reply) == 2, (name, reply)
            value = reply[1]
            assert isinstance(value, bytes)
            settings[name] = value
    return settings


def persistence(server: RedisServer) -> dict[str, str]:
    """The server's INFO persistence, field by field (``rdb_saves``: the saves it started)."""
    lines = server.cli("INFO", "persistence").replace("\r", "").splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


@contextlib.contextmanager
def paused_fork(server: RedisServer, command: str) -> Iterator[None]:
    """``command`` (BGSAVE or BGREWRITEAOF) has the server write its dataset in a child process,
    which is stopped (SIGSTOP) for the block: a save or rewrite in progress for as long as the test
    needs; at the end it goes on (SIGCONT) and finishes. The child writes its keys 50 ms apart, so
    that it is still at work when it is stopped; the server's later saves go at full speed."""
    assert server.process is not None
    pid = server.process.pid
    server.cli("CONFIG", "SET", "rdb-key-save-delay", "50000")
    try:
        reply = server.cli(command)
    finally:
        server.cli("CONFIG", "SET", "rdb-key-save-delay", "0")
    assert "started" in reply, reply
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, f"after {command} the server has the children {children}"
    child = int(children[0])
    os.kill(child, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)


def backup_digest(
    backup: Path, workdir: Path, key: str | None = None, home: Path | None = None
) -> str:
    """The DEBUG DIGEST of a fresh redis-server that loaded the RDB of the Redis backup ``backup``
    (decoded as :func:`decode` does, in ``workdir``): equal to the source's for the same data."""
    workdir.mkdir(parents=True, exist_ok=True)
    rdb = workdir / "restored.rdb"
    rdb.write_bytes(decode(backup, key, home))
    with load_rdb(rdb, workdir / "loaded") as restored:
        return restored.digest()


@contextlib.contextmanager
def read_only_view(folder: Path, mount_point: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only at ``mount_point`` (made) for the block, as a container
    mounts a volume ``:ro``; the test is skipped where it cannot mount (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    mount_point.mkdir(parents=True)
    bound = subprocess.run(
        ["mount", "--bind", str(folder), str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if ro.returncode != 0:
            pytest.skip(f"cannot make a bind mount read-only here: {ro.stderr.strip()}")
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)


# ------------------------------------------------------------------------------ files

Entry: TypeAlias = tuple[str, int, bytes | str, int, int, int, int]


def write_files(root: Path, files: Mapping[str, bytes | tuple[bytes, int]]) -> Path:
    """Write each file of ``files`` (relative path: content, or content and mode) below
    ``root``, making the folders on the way; ``root`` itself."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, spec in files.items():
        data, mode = spec if isinstance(spec, tuple) else (spec, None)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mode is not None:
            path.chmod(mode)
    return root


def tree_state(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (not ``root`` itself) by relative path: type, mode, content or
    link target, owner, group, modification time (seconds: what tar keeps) and, for files, the
    number of hard links; links are never followed."""
    entries: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", 0, str(path.readlink()), st.st_uid, st.st_gid, 0, 1)
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", mode, b"", st.st_uid, st.st_gid, int(st.st_mtime), 1)
            else:
                entries[rel] = (
                    "file",
                    mode,
                    path.read_bytes(),
                    st.st_uid,
                    st.st_gid,
                    int(st.st_mtime),
                    st.st_nlink,
                )
    return entries


def tar_members(tar_bytes: bytes) -> set[str]:
    """The entries of a decoded files backup, as real tar lists them: relative, no root."""
    proc = subprocess.run(
        ["tar", "-tf", "-"], input=tar_bytes, capture_output=True, check=True, timeout=60
    )
    names = {line.removeprefix("./").rstrip("/") for line in proc.stdout.decode().splitlines()}
    return names - {""}


def make_uploads(root: Path) -> Path:
    """Uploads that stress a files restore: unicode and spaced names, nested and empty folders,
    links inside the tree (to a file, to a folder, dangling), a hard link, varied modes, owners
    and times."""
    files: dict[str, bytes | tuple[bytes, int]] = {
        "Fotos del gimnasio/año 2024/mañana ñandú.jpg": (
            b"\xff\xd8\xff\xe0" + bytes(range(256)),
            0o644,
        ),
        "Fotos del gimnasio/año 2024/socio 0002.jpg": (b"\x00" * 4096, 0o640),
        "contratos/contrato #1 (firmado).pdf": (b"%PDF-1.4 privado", 0o600),
        "scripts/run me.sh": (b"#!/bin/sh\necho hola\n", 0o755),
        "solo lectura.txt": (b"read only\n", 0o444),
        "vacío.txt": (b"", 0o604),
        "a/b/c/d/profundo.txt": (b"deep\n", 0o644),
        "日本語/ファイル.txt": ("こんにちは\n".encode(), 0o644),
        "nombre con\ttab y 'comillas'.txt": (b"odd name\n", 0o644),
    }
    write_files(root, files)
    (root / "carpeta vacía").mkdir()
    (root / "deep/empty nested").mkdir(parents=True)
    (root / "privado").mkdir(mode=0o700)
    (root / "privado/llave.txt").write_bytes(b"secret-ish")
    (root / "privado/llave.txt").chmod(0o600)
    (root / "compartido").mkdir()
    (root / "compartido").chmod(0o2775)
    (root / "última foto.jpg").symlink_to("Fotos del gimnasio/año 2024/mañana ñandú.jpg")
    (root / "a/b/arriba").symlink_to("../../contratos")
    (root / "roto").symlink_to("no existe todavía")
    (root / "enlace duro.jpg").hardlink_to(root / "Fotos del gimnasio/año 2024/socio 0002.jpg")
    if os.geteuid() == 0:
        os.chown(root / "contratos/contrato #1 (firmado).pdf", 65534, 65534)
        os.chown(root / "privado", 65534, 65534)
    old = 1_600_000_000
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            os.utime(path, (old, old))
    return root


def evil_files_backup(backup_dir: Path, members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A files backup holding exactly ``members`` (built with tarfile, gzipped), with a correct
    .sha256 sidecar: only the content checks of the restore can refuse it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    backup_dir.mkdir(parents=True, exist_ok=True)
    path = backup_dir / "files_backup_20240101_000000.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    write_sidecar(path)
    return path


def tar_file(
    name: str, data: bytes = b"evil\n", mode: int = 0o644
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def tar_dir(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, b""


def tar_symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def tar_node(name: str, kind: bytes, mode: int = 0o666) -> tuple[tarfile.TarInfo, bytes]:
    """A member that is no file, folder or link: ``kind`` tarfile.CHRTYPE or BLKTYPE (device
    1,1: /dev/mem's), or FIFOTYPE; owned by root."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.devmajor, info.devminor = 1, 1
    info.uid = info.gid = 0
    return info, b""


def script_env(
    base: Path,
    pg: PostgresServer,
    redis: RedisServer,
    files_dir: Path,
    *,
    encryption_key: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of one script run (the run sees exactly this, nothing else).

    BACKUP_DIR is ``base/backups`` (created), HOME ``base/home`` (gpg writes there), TZ is UTC;
    ``extra`` is applied last and overrides anything. conftest's ``backup_env`` builds on it.
    """
    home = base / "home"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    backups = base / "backups"
    backups.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": pg.client_path(os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "BACKUP_DIR": str(backups),
        "FILES_DIR": str(files_dir),
        **pg.env(),
        **redis.env(),
    }
    if encryption_key is not None:
        env["ENCRYPTION_KEY"] = encryption_key
    env.update(extra)
    return env


@dataclass
class Sources:
    """A database, a Redis and a folder with a little data, and good backups of each (by
    ``backup_script.sh full``, once plain and once encrypted with :data:`KEY`)."""

    db: str
    redis: RedisServer
    files: Path
    backups: dict[tuple[str, bool], Path]  # (type, encrypted) -> backup


@contextlib.contextmanager
def backed_up_sources(pg: PostgresServer, scripts: Path, base: Path) -> Iterator[Sources]:
    db = f"rf_{uuid.uuid4().hex[:12]}"
    pg.createdb(db)
    pg.psql(
        "CREATE TABLE members (id int PRIMARY KEY, name text);"
        "INSERT INTO members SELECT i, 'Socio ' || i || ' ñ' FROM generate_series(1, 2000) i;",
        db,
        superuser=False,
    )
    files = write_files(
        base / "uploads",
        {rel: os.urandom(30000) for rel in ("a/uno.txt", "a/b/dos.txt", "tres con espacio.txt")},
    )
    (files / "vacía").mkdir()
    try:
        with start_redis(base / "redis") as redis:
            redis.pipe([["SET", f"key:{i}", f"value {i} " * 20] for i in range(3000)])
            redis.pipe([["HSET", "h", "a", "1"], ["EXPIRE", "h", "3600"]], db=2)
            backups: dict[tuple[str, bool], Path] = {}
            for key in (None, KEY):
                run_base = base / ("encrypted" if key else "plain")
                env = script_env(run_base, pg, redis, files, encryption_key=key, POSTGRES_DB=db)
                result = run_direct(scripts, BACKUP, "full", env=env)
                assert result.returncode == 0, result.stdout + result.stderr
                for kind in EXTENSIONS:
                    backups[(kind, key is not None)] = only_backup(
                        run_base / "backups", kind, encrypted=key is not None
                    )
            yield Sources(db=db, redis=redis, files=files, backups=backups)
    finally:
        pg.dropdb(db)


# ------------------------------------------------------------------------------ alerts


@dataclass(frozen=True)
class Received:
    """One HTTP request an :class:`HttpReceiver` answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        """The body, read as a JSON object (what Apprise's ``json://`` POSTs)."""
        value = json.loads(self.body)
        assert isinstance(value, dict), f"not a JSON object: {self.body!r}"
        return value


class HttpReceiver:
    """A real HTTP server on 127.0.0.1 that records every request (an Apprise ``json://``
    webhook, a healthchecks.io-style ping endpoint). ``status`` is the code it answers with;
    ``delay`` the seconds it waits before answering."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.delay = 0.0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.requests.append(
                    Received(self.command, self.path, dict(self.headers.items()), body)
                )
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]

    def url(self, path: str, scheme: str = "http") -> str:
        """``scheme://127.0.0.1:PORT/path``."""
        return f"{scheme}://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    def posted(self, path: str) -> list[dict[str, object]]:
        """The JSON bodies POSTed to ``/path``, oldest first."""
        return [r.json() for r in self.requests if r.method == "POST" and r.path == path]


@contextlib.contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    """An :class:`HttpReceiver` serving for the block."""
    receiver = HttpReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


# A mailbox login the SMTP receiver accepts (the password is a secret of ALERT_URLS).
SMTP_USER = "backup"
SMTP_PASSWORD = "Sm7p-pass-4e1f"


@dataclass
class SmtpReceiver:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that asks for a login (AUTH without TLS, as a
    local relay may) and records every mail it accepts."""

    port: int
    mails: list[email.message.Message]
    logins: list[tuple[bytes, bytes]]

    def url(self, to: str = "ops@gym.test") -> str:
        """The Apprise ``mailto://`` URL of this server: plain SMTP (no TLS), with the login."""
        return (
            f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@{LOOPBACK}:{self.port}"
            f"?from=backup@gym.test&to={to}"
        )

    def bodies(self) -> list[str]:
        """The text part of each mail, oldest first."""
        texts = []
        for mail in self.mails:
            part = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            texts.append(payload.decode())
        return texts


@contextlib.contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """An :class:`SmtpReceiver` serving for the block."""
    from aiosmtpd.controller import Controller  # noqa: PLC0415 - only the alert tests need it
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session  # noqa: PLC0415

    received = SmtpReceiver(port=free_port(), mails=[], logins=[])

    class Handler:
        async def handle_DATA(  # noqa: N802 - the name aiosmtpd calls
            self, server: SMTP, session: Session, envelope: Envelope
        ) -> str:
            content = envelope.original_content or b""
            received.mails.append(email.message_from_bytes(content))
            return "250 OK"

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        received.logins.append((data.login, data.password))
        ok = (data.login, data.password) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
        return AuthResult(success=ok)

    controller = Controller(
        Handler(),
        hostname=LOOPBACK,
        port=received.port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield received
    finally:
        controller.stop()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port of 127.0.0.1 that accepts connections (the kernel completes them) but never
    answers: a receiver that hangs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def write_conditions(path: Path, conditions: Mapping[str, str]) -> Path:
    """The file ``alerts_update`` reads: one ``KEY<TAB>MESSAGE`` line per condition firing."""
    path.write_text("".join(f"{key}\t{text}\n" for key, text in conditions.items()))
    return path


def sourcing(scripts: Path, script: str, commands: str, *args: str) -> list[str]:
    """The argv that runs bash ``commands`` after sourcing the rendered ``script`` (its functions,
    not its main), with its secrets read and its settings checked; ``args`` are ``$1``, ``$2``..."""
    program = f'source "$1"; shift; load_secrets; check_settings; {commands}'
    return ["bash", "-c", program, "bash", str(scripts / script), *args]


def source_and_run(
    scripts: Path, script: str, commands: str, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run :func:`sourcing`'s command with exactly ``env`` and capture its output."""
    return subprocess.run(
        sourcing(scripts, script, commands, *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def alert_state(backup_dir: Path) -> dict[str, list[str]]:
    """BACKUP_DIR/.alerts: KEY -> [SINCE, LAST_SENT, DELIVERED, MESSAGE]."""
    path = backup_dir / ".alerts"
    if not path.exists():
        return {}
    rows = [line.split("\t") for line in path.read_text().splitlines() if line]
    return {row[0]: row[1:] for row in rows}


# ------------------------------------------------------------------------------ remotes

# The off-site targets of the replica tests: real servers on 127.0.0.1 that real rclone copies to,
# started by the fixtures (conftest's ``sftp_full``, ``sftp_only``, ``s3_server`` and ``remotes``).
#
# What rclone (Debian 12's 1.60) compares on each, as test_remotes.py proves:
# - SFTP with a login shell (``sftpfull``): md5 and sha1, computed by running ``md5sum`` and
#   ``sha1sum`` on the server over SSH. rclone 1.60's sftp backend has no sha256, so the .sha256
#   sidecar cannot be compared by rclone itself; ``rclone check`` compares md5.
# - SFTP with ``ForceCommand internal-sftp`` (``sftponly``): no hash at all. ``rclone check`` then
#   compares sizes only and still exits 0 ("1 hashes could not be checked"); only a read-back
#   (``rclone check --download``, or ``rclone cat`` into sha256sum against the sidecar) verifies.
# - S3 (moto): md5, the ETag of a single-part upload.
# Left to itself, rclone probes an SFTP server's shell and hash commands at its first connection
# and WRITES what it found into the config file (shell_type, md5sum_command, sha1sum_command): the
# sections below pin exactly what the probe finds, so the file stays as written.

# rclone failing fast on a target that is down: one try, short connect and idle timeouts (the
# flags --retries 1 --low-level-retries 1 --contimeout 2s --timeout 5s, as rclone reads them from
# its environment). With rclone's defaults a refused connection takes some 45 s to give up.
RCLONE_QUICK = {
    "RCLONE_RETRIES": "1",
    "RCLONE_LOW_LEVEL_RETRIES": "1",
    "RCLONE_CONTIMEOUT": "2s",
    "RCLONE_TIMEOUT": "5s",
}
# (shell_type, md5sum_command, sha1sum_command) as rclone's probe writes them, by login shell or
# not: over internal-sftp only, the probe still says "unix" but every hash command fails.
RCLONE_HASHES = {True: ("unix", "md5sum", "sha1sum"), False: ("unix", "none", "none")}
S3_REGION = "us-east-1"
# moto's IAM keys are random: the same seed before the same calls gives the same keys again.
_MOTO_SEED = 20240101
_SERVER_START_TIMEOUT = 30.0
# What each S3 remote's keys may do. "s3nodelete" is the REPLICA_PRUNE=false case: it may list,
# read and write, and every delete is refused (an explicit Deny, as an append-only policy would).
S3_POLICIES: dict[str, dict[str, object]] = {
    "s3": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    },
    "s3nodelete": {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:ListBucket",
                    "s3:GetBucketLocation",
                    "s3:ListBucketMultipartUploads",
                    "s3:ListMultipartUploadParts",
                    "s3:AbortMultipartUpload",
                ],
                "Resource": "*",
            },
            {
                "Effect": "Deny",
                "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:DeleteBucket"],
                "Resource": "*",
            },
        ],
    },
}


def rclone_env() -> dict[str, str]:
    """The environment rclone runs in for the tests: PATH, HOME, the language and
    :data:`RCLONE_QUICK` only. An inherited AWS_* or RCLONE_* variable changes what rclone does
    (AWS_CA_BUNDLE, set on this host, alone makes every S3 remote fail:
    "LoadCustomCABundleError")."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        **RCLONE_QUICK,
    }


def rclone(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Real rclone with the config file ``config``, failing fast, in :func:`rclone_env`; its
    output captured."""
    return subprocess.run(
        [tool("rclone"), "--config", str(config), *args],
        env=rclone_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_rclone_config(path: Path, sections: Mapping[str, Mapping[str, str]]) -> Path:
    """An rclone config file (mode 0600 from its creation) with one section per remote name."""
    text = "".join(
        f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in section.items()) + "\n"
        for name, section in sections.items()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def end_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """Stop ``process`` and what it started (it leads its own session): SIGTERM to the group,
    SIGKILL after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def port_open(port: int) -> bool:
    """Whether something accepts connections on ``port`` of 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass
class LoopbackServer:
    """A server process on a fixed port of 127.0.0.1 that a test may stop (the target is down:
    connections are refused) and start again on the same port, with the same keys and data."""

    name: str
    folder: Path  # its configuration, keys and log
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, init=False)

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    def prepare(self) -> None:
        """Write what the server needs in ``folder`` for ``port`` (before the first start)."""
        self.folder.mkdir(parents=True, exist_ok=True)

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the server's process (in a session of its own), not waiting for it."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the started server answers."""
        return port_open(self.port)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server (when it is not running) and wait until it answers."""
        if self.running:
            return
        process = self.process = self.launch()

        def answers() -> bool:
            if process.poll() is not None:
                raise SandboxError(
                    f"{self.name} server exited with {process.returncode} on port {self.port}:\n"
                    f"{self.log_tail()}"
                )
            return self.ready()

        wait_for(answers, f"the {self.name} server on port {self.port}", _SERVER_START_TIMEOUT)

    def stop(self) -> None:
        """Stop the server and its live connections; the port refuses connections after."""
        self.end()

    def end(self) -> None:
        """Stop the server for good (nothing is kept for a next start)."""
        process, self.process = self.process, None
        end_process(process)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped for the block, started again on the same port after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with self.log_file.open("ab") as log:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=dict(env),
                start_new_session=True,
            )


@dataclass
class SftpServer(LoopbackServer):
    """A real OpenSSH ``sshd`` serving SFTP on 127.0.0.1 to the current user with key
    authentication only (its own host key, a client key pair, both in ``folder``). With
    ``login_shell`` the login runs commands (rclone computes md5/sha1 with them); without it
    every session is ``internal-sftp`` (ForceCommand), so rclone has no remote hash. Remote
    paths are this host's absolute paths: the tests read and corrupt a target's files on disk,
    below ``root``."""

    login_shell: bool = True
    root: Path = Path()  # where the tests' targets are, on this host's disk

    @property
    def client_key(self) -> Path:
        return self.folder / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def user(self) -> str:
        return pwd.getpwuid(os.getuid()).pw_name

    def prepare(self) -> None:
        """Write the host key, the client key pair, authorized_keys, known_hosts and
        sshd_config in ``folder`` (sshd checks the configuration)."""
        super().prepare()
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = self.folder / "host_key"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f",
                     str(key)],
                    check=True, capture_output=True, timeout=30,
                )  # fmt: skip
        authorized = self.folder / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o600)
        kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[{LOOPBACK}]:{self.port} {kind} {blob}\n")
        settings = [
            f"ListenAddress {LOOPBACK}:{self.port}",
            f"HostKey {host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "StrictModes no",  # the keys are in a pytest folder, not in a private ~/.ssh
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "Subsystem sftp internal-sftp",
            *([] if self.login_shell else ["ForceCommand internal-sftp"]),
        ]
        config = self.folder / "sshd_config"
        config.write_text("\n".join(settings) + "\n")
        if os.geteuid() == 0:
            # sshd started as root insists on its privilege separation folder (the package's
            # service makes it at boot)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([tool("sshd"), "-t", "-f", str(config)], check=True, timeout=30)

    def launch(self) -> subprocess.Popen[bytes]:
        sshd = tool("sshd")  # sshd re-executes itself: it needs its absolute path
        return self._spawn([sshd, "-D", "-e", "-f", str(self.folder / "sshd_config")], {})

    def sections(self, *, probe: bool = False) -> dict[str, dict[str, str]]:
        """The rclone section of this server, by key file and known_hosts (no password); with
        ``probe``, without the pinned shell and hash commands (rclone finds and saves them)."""
        section = {
            "type": "sftp",
            "host": LOOPBACK,
            "port": str(self.port),
            "user": self.user,
            "key_file": str(self.client_key),
            "known_hosts_file": str(self.known_hosts),
        }
        if not probe:
            shell_type, md5, sha1 = RCLONE_HASHES[self.login_shell]
            section |= {"shell_type": shell_type, "md5sum_command": md5, "sha1sum_command": sha1}
        return {self.name: section}


if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_s3 import S3Client


@dataclass
class S3Server(LoopbackServer):
    """A real S3 API on 127.0.0.1: ``moto_server`` (moto[server]), with IAM enforced. Each
    remote name of :data:`S3_POLICIES` has an IAM user and access keys in ``keys``. moto keeps its
    data in memory: :meth:`stop` saves the buckets' objects and :meth:`start` puts them back (and
    the same users with the same keys), so a target that was down comes back as it was."""

    keys: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    saved: dict[str, dict[str, tuple[bytes, dict[str, str]]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def launch(self) -> subprocess.Popen[bytes]:
        moto = tool("moto_server")  # the venv's, beside this Python
        return self._spawn([moto, "-H", LOOPBACK, "-p", str(self.port)], rclone_env())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as answer:  # noqa: S310
                return bool(answer.status == 200)
        except OSError:
            return False

    def _moto_api(self, path: str, data: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own http URL
            f"{self.endpoint}/moto-api/{path}",
            data=data,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    def client(self, remote: str = "s3") -> S3Client:
        """A boto3 S3 client with the keys of ``remote`` (``s3`` may do anything)."""
        import boto3  # noqa: PLC0415 - only the replica tests need it

        key_id, secret = self.keys[remote]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def start(self) -> None:
        """Start moto, make the users (the same keys as before a stop) and put back the saved
        buckets, then enforce IAM: from there every request needs a user's keys."""
        if self.running:
            return
        super().start()
        import boto3  # noqa: PLC0415 - only the replica tests need it

        # Before IAM is enforced any keys are accepted; moto's random keys follow its seed.
        self._moto_api(f"seed?a={_MOTO_SEED}", b"")
        iam: IAMClient = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        keys = {}
        for remote, policy in S3_POLICIES.items():
            iam.create_user(UserName=remote)
            iam.put_user_policy(
                UserName=remote, PolicyName=remote, PolicyDocument=json.dumps(policy)
            )
            made = iam.create_access_key(UserName=remote)["AccessKey"]
            keys[remote] = (made["AccessKeyId"], made["SecretAccessKey"])
        if self.keys and keys != self.keys:
            raise SandboxError("moto gave other keys after a restart: its seed no longer holds")
        self.keys = keys
        # moto's own switch (what INITIAL_NO_AUTH_ACTION_COUNT sets at start): enforce from now
        self._moto_api("reset-auth", b"0")
        s3 = self.client()
        for bucket, objects in self.saved.items():
            s3.create_bucket(Bucket=bucket)
            for key, (data, metadata) in objects.items():
                s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata)
        self.saved = {}

    def stop(self) -> None:
        if self.running:
            self.saved = {bucket: self.objects(bucket) for bucket in self.buckets()}
        self.end()

    def buckets(self) -> list[str]:
        return [b["Name"] for b in self.client().list_buckets().get("Buckets", []) if "Name" in b]

    def objects(self, bucket: str, prefix: str = "") -> dict[str, tuple[bytes, dict[str, str]]]:
        """Every object of ``bucket`` under ``prefix``: its bytes and user metadata."""
        s3 = self.client()
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                got = s3.get_object(Bucket=bucket, Key=item["Key"])
                found[item["Key"]] = (got["Body"].read(), got.get("Metadata", {}))
        return found

    def sections(self, *, probe: bool = False) -> dict[str, dict[str, str]]:
        """One rclone section per remote name of :data:`S3_POLICIES`, by access keys; the
        buckets exist (``no_check_bucket``: rclone neither checks nor creates them)."""
        del probe  # S3 has nothing to probe
        return {
            remote: {
                "type": "s3",
                "provider": "Other",
                "endpoint": self.endpoint,
                "region": S3_REGION,
                "access_key_id": key_id,
                "secret_access_key": secret,
                "force_path_style": "true",
                "no_check_bucket": "true",
            }
            for remote, (key_id, secret) in self.keys.items()
        }


RemoteServer: TypeAlias = SftpServer | S3Server
ServerT = TypeVar("ServerT", SftpServer, S3Server)


@contextlib.contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """``server`` prepared and started for the block (on another free port when its port was
    taken meanwhile), stopped after."""
    for attempt in range(1, 4):
        server.prepare()
        try:
            server.start()
        except SandboxError:
            if attempt == 3 or "in use" not in server.log_tail():
                raise
            server.port = free_port()
        else:
            break
    try:
        yield server
    finally:
        server.end()


@dataclass(frozen=True)
class Target:
    """One off-site target of a test, empty at first: ``spec`` is its rclone ``remote:path``
    (REPLICA_TARGETS takes ``NAME=spec``). Read and change what it holds directly, as the
    server stores it (by names relative to the target): on disk below ``folder`` for SFTP, as
    the objects under ``prefix`` of ``bucket`` for S3."""

    remote: str
    spec: str
    server: RemoteServer
    folder: Path | None = None  # SFTP: the target's folder on this host's disk
    bucket: str = ""  # S3: the bucket and the prefix of the target's objects
    prefix: str = ""

    def files(self) -> dict[str, bytes]:
        """Every file of the target (relative name -> bytes)."""
        if self.folder is not None:
            return {
                str(p.relative_to(self.folder)): p.read_bytes()
                for p in sorted(self.folder.rglob("*"))
                if p.is_file()
            }
        assert isinstance(self.server, S3Server)
        objects = self.server.objects(self.bucket, self.prefix)
        return {key.removeprefix(self.prefix): data for key, (data, _) in objects.items()}

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` as the target's file ``name`` behind rclone's back (to corrupt it)."""
        if self.folder is not None:
            path = self.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        assert isinstance(self.server, S3Server)
        self.server.client().put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def delete(self, name: str) -> None:
        """Remove the target's file ``name`` behind rclone's back."""
        if self.folder is not None:
            (self.folder / name).unlink()
            return
        assert isinstance(self.server, S3Server)
        self.server.client().delete_object(Bucket=self.bucket, Key=self.prefix + name)


@dataclass(frozen=True)
class Remotes:
    """conftest's ``remotes``: an rclone config file (mode 0600) defining every remote, and one
    fresh target of this test on each: ``sftpfull``, ``sftponly``, ``s3``, ``s3nodelete``."""

    config: Path
    targets: dict[str, Target]

    def __getitem__(self, remote: str) -> Target:
        return self.targets[remote]

    def rclone(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """:func:`rclone` with this config file."""
        return rclone(self.config, *args, timeout=timeout)

    def env(self, *remotes: str) -> dict[str, str]:
        """The settings of a run that copies to the targets of ``remotes`` (each under its
        remote's name): REPLICA_TARGETS, REPLICA_RCLONE_CONFIG_FILE, and rclone failing fast."""
        targets = ",".join(f"{remote}={self.targets[remote].spec}" for remote in remotes)
        return {
            "REPLICA_TARGETS": targets,
            "REPLICA_RCLONE_CONFIG_FILE": str(self.config),
            **RCLONE_QUICK,
        }


def make_remotes(
    base: Path, sftp_servers: Sequence[SftpServer], s3: S3Server, *, probe: bool = False
) -> Remotes:
    """Fresh targets on the running servers for one test (a folder below each SFTP root, a new
    bucket for each S3 remote), and the rclone config file ``base/rclone.conf`` for them."""
    tag = f"t{uuid.uuid4().hex[:12]}"
    targets: dict[str, Target] = {}
    sections: dict[str, dict[str, str]] = {}
    for sftp in sftp_servers:
        folder = sftp.root / tag
        folder.mkdir()
        targets[sftp.name] = Target(sftp.name, f"{sftp.name}:{folder}", sftp, folder=folder)
        sections |= sftp.sections(probe=probe)
    for remote in S3_POLICIES:
        bucket = f"{tag}-{remote}"
        s3.client().create_bucket(Bucket=bucket)
        targets[remote] = Target(remote, f"{remote}:{bucket}", s3, bucket=bucket)
    sections |= s3.sections()
    base.mkdir(parents=True, exist_ok=True)
    return Remotes(write_rclone_config(base / "rclone.conf", sections), targets)
