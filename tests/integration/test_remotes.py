"""The off-site targets of the replica tests are real: rclone copies to a real sshd (with a login
shell, and internal-sftp only) and a real S3 API (moto_server) on 127.0.0.1 and reads back the same
bytes; what each can compare by hash, the keys that cannot delete, a server down and back.

The facts rclone 1.60 shows here are summed up in tests/support.py, in the "remotes" section.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.support import (
    RCLONE_HASHES,
    Remotes,
    SftpServer,
    flip_middle_byte,
    port_open,
    rclone,
    write_rclone_config,
)

REMOTES = ["sftpfull", "sftponly", "s3", "s3nodelete"]
NAME = "postgresql_backup_20240101_000000.sql.gz"


def upload(remotes: Remotes, remote: str, tmp_path: Path, data: bytes) -> Path:
    """``data`` as ``tmp_path/out/NAME``, copied by rclone into the target of ``remote``."""
    source = tmp_path / "out" / NAME
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    copied = remotes.rclone("copy", str(source.parent), remotes[remote].spec)
    assert copied.returncode == 0, copied.stderr
    return source


@pytest.mark.parametrize("remote", REMOTES)
def test_rclone_copies_to_each_remote_and_back_byte_for_byte(
    remotes: Remotes, remote: str, tmp_path: Path
) -> None:
    config_before = remotes.config.read_bytes()
    data = os.urandom(300_000)
    upload(remotes, remote, tmp_path, data)
    assert remotes[remote].files() == {NAME: data}
    back = tmp_path / "back"
    fetched = remotes.rclone("copy", remotes[remote].spec, str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert (back / NAME).read_bytes() == data
    assert remotes.config.stat().st_mode & 0o777 == 0o600
    assert remotes.config.read_bytes() == config_before, "rclone rewrote its config file"


@pytest.mark.parametrize(
    ("remote", "hashes"),
    [("sftpfull", ["md5", "sha1"]), ("sftponly", []), ("s3", ["md5"]), ("s3nodelete", ["md5"])],
)
def test_rclone_compares_md5_on_full_sftp_and_s3_and_no_hash_on_internal_sftp(
    remotes: Remotes, remote: str, hashes: list[str], tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    upload(remotes, remote, tmp_path, data)
    spec = remotes[remote].spec
    features = remotes.rclone("backend", "features", f"{remote}:")
    assert features.returncode == 0, features.stderr
    assert json.loads(features.stdout)["Hashes"] == hashes
    md5 = remotes.rclone("md5sum", spec)
    if "md5" in hashes:
        assert md5.returncode == 0, md5.stderr
        assert md5.stdout == f"{hashlib.md5(data).hexdigest()}  {NAME}\n"  # noqa: S324
    else:
        assert md5.returncode != 0
        assert "hash type not supported" in md5.stderr
    # no remote computes sha256 in rclone 1.60; reading it back does, on every remote
    sha256 = remotes.rclone("hashsum", "sha256", spec)
    assert sha256.returncode != 0
    assert "hash type not supported" in sha256.stderr
    read_back = remotes.rclone("hashsum", "sha256", "--download", spec)
    assert read_back.returncode == 0, read_back.stderr
    assert read_back.stdout == f"{hashlib.sha256(data).hexdigest()}  {NAME}\n"


@pytest.mark.parametrize("remote", REMOTES)
def test_a_corrupted_copy_is_caught_by_rclone_check_only_by_download_on_internal_sftp(
    remotes: Remotes, remote: str, tmp_path: Path
) -> None:
    source = upload(remotes, remote, tmp_path, os.urandom(50_000))
    target = remotes[remote]
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(target.files()[NAME])
    flip_middle_byte(corrupt)  # the same size: only a hash or the bytes tell
    target.write(NAME, corrupt.read_bytes())
    by_hash = remotes.rclone("check", str(source.parent), target.spec)
    if remote == "sftponly":
        assert by_hash.returncode == 0, "rclone check passes what it cannot hash"
        assert "1 hashes could not be checked" in by_hash.stderr
    else:
        assert by_hash.returncode == 1, by_hash.stderr
        assert "1 differences found" in by_hash.stderr
    by_download = remotes.rclone("check", "--download", str(source.parent), target.spec)
    assert by_download.returncode == 1, by_download.stderr
    assert "1 differences found" in by_download.stderr


def test_the_probe_of_rclone_finds_what_the_sftp_sections_pin(
    sftp_full: SftpServer, sftp_only: SftpServer, tmp_path: Path
) -> None:
    sections = sftp_full.sections(probe=True) | sftp_only.sections(probe=True)
    config = write_rclone_config(tmp_path / "probed.conf", sections)
    for server in (sftp_full, sftp_only):
        listed = rclone(config, "lsf", f"{server.name}:{server.root}")
        assert listed.returncode == 0, listed.stderr
    probed = configparser.ConfigParser()
    probed.read(config)
    for server in (sftp_full, sftp_only):
        found = tuple(
            probed[server.name][key] for key in ("shell_type", "md5sum_command", "sha1sum_command")
        )
        assert found == RCLONE_HASHES[server.login_shell]


def test_the_no_delete_s3_keys_copy_and_read_but_cannot_delete(
    remotes: Remotes, tmp_path: Path
) -> None:
    data = os.urandom(10_000)
    upload(remotes, "s3nodelete", tmp_path, data)
    target = remotes["s3nodelete"]
    for command in (["deletefile", f"{target.spec}/{NAME}"], ["delete", target.spec]):
        refused = remotes.rclone(*command)
        assert refused.returncode != 0, command
        assert "AccessDenied" in refused.stderr
    assert target.files() == {NAME: data}
    # the same server deletes with the other keys
    upload(remotes, "s3", tmp_path, data)
    deleted = remotes.rclone("deletefile", f"{remotes['s3'].spec}/{NAME}")
    assert deleted.returncode == 0, deleted.stderr
    assert remotes["s3"].files() == {}


@pytest.mark.parametrize("remote", ["sftpfull", "s3"])
def test_a_stopped_server_fails_rclone_fast_and_serves_the_same_data_after_restart(
    remotes: Remotes, remote: str, tmp_path: Path
) -> None:
    first = os.urandom(20_000)
    upload(remotes, remote, tmp_path, first)
    target = remotes[remote]
    later = tmp_path / "later.gz"
    later.write_bytes(b"after the outage")
    with target.server.down():
        assert not port_open(target.server.port)
        started = time.monotonic()
        failed = remotes.rclone("copy", str(later), target.spec)
        elapsed = time.monotonic() - started
        assert failed.returncode != 0
        assert "connection refused" in failed.stderr
        assert elapsed < 10, f"rclone took {elapsed:.1f} s to give up"
    assert target.files() == {NAME: first}
    caught_up = remotes.rclone("copy", str(later), target.spec)
    assert caught_up.returncode == 0, caught_up.stderr
    assert target.files() == {NAME: first, "later.gz": b"after the outage"}
