"""Public-key encryption (ENCRYPTION_RECIPIENT) and key rotation, with real gpg and real servers.

The host that makes the backups holds only the public key: it cannot read what it wrote. A
restore takes the private key (DECRYPTION_KEY_FILE) for that run only. Older keys keep
decrypting: older passphrases in ENCRYPTION_KEY_PREVIOUS, older private keys beside the current
one in DECRYPTION_KEY_FILE. The key pairs are throwaway ones made by ``gpg --quick-gen-key``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, start_redis
from tests.support import (
    BACKUP,
    KEY,
    PAYMENTS_SQL,
    RESTORE,
    KeyPair,
    MakeEnv,
    NewDb,
    RunScript,
    database_names,
    drop_gpg_home,
    flip_middle_byte,
    kill_stage_when_writing,
    make_key_pair,
    make_uploads,
    new_gpg_home,
    only_backup,
    redis_state,
    run_gpg,
    run_ok,
    start_script,
    tree_state,
    truncate_half,
    write_sidecar,
)

NEEDS_KEY = "needs DECRYPTION_KEY_FILE"


def public_env(env: dict[str, str], keys: KeyPair) -> dict[str, str]:
    """``env`` with backups encrypted to ``keys``' public key (and no passphrase)."""
    return {**env, "ENCRYPTION_RECIPIENT": str(keys.public)}


def restoring_env(
    env: dict[str, str], keys: KeyPair, private: Path | None = None
) -> dict[str, str]:
    """``env`` of a restore given the private key file (``private``, by default ``keys``' own)
    and, when the key has one, its passphrase in a file."""
    given = {**env, "DECRYPTION_KEY_FILE": str(private or keys.private)}
    if keys.passphrase:
        passphrase = keys.private.with_suffix(".pass")
        passphrase.write_text(keys.passphrase + "\n")
        given["DECRYPTION_KEY_PASSPHRASE_FILE"] = str(passphrase)
    return given


def assert_refused_for_want_of_the_key(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 6, result.stdout + result.stderr
    assert "is encrypted to a public key" in result.stderr
    assert NEEDS_KEY in result.stderr
    assert "DECRYPTION_KEY_FILE=/path/to/private-key.asc" in result.stderr


# ------------------------------------------------------------------------- backup and restore


def test_a_public_key_postgresql_backup_restores_only_with_the_private_key(
    pg: PostgresServer,
    new_db: NewDb,
    createdb: None,
    key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    source = new_db()
    pg.psql(PAYMENTS_SQL, source, superuser=False)
    written = pg.dump(source)
    env = public_env(backup_env(tmp_path, POSTGRES_DB=source), key_pair)
    result = run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=True)
    assert f"to public key ID {key_pair.subkey_id}" in result.stdout
    assert "this host cannot decrypt them" in result.stdout
    target = new_db(create=False)

    refused = run_script(RESTORE, "postgresql", backup.name, "--target-db", target, env=env)

    assert_refused_for_want_of_the_key(refused)
    assert key_pair.subkey_id in refused.stderr
    assert target not in database_names(pg)

    run_ok(
        run_script,
        RESTORE,
        "postgresql",
        backup.name,
        "--target-db",
        target,
        env=restoring_env(env, key_pair),
    )

    assert pg.dump(target) == written


def test_a_public_key_redis_backup_restores_only_with_the_private_key(
    key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    with start_redis(tmp_path / "redis") as live:
        live.pipe([["SET", f"member:{i}", f"socio {i}"] for i in range(500)])
        live.pipe([["HSET", "plan", "gold", "30"], ["EXPIRE", "plan", "3600"]], db=3)
        written = redis_state(live)
        env = public_env(backup_env(tmp_path, redis=live, TMPDIR=str(short_tmp)), key_pair)
        run_ok(run_script, BACKUP, "redis", env=env)
        backup = only_backup(tmp_path / "backups", "redis", encrypted=True)
        live.cli("FLUSHALL")
        emptied = redis_state(live)

        refused = run_script(RESTORE, "redis", backup.name, env=env)

        assert_refused_for_want_of_the_key(refused)
        assert redis_state(live).digest == emptied.digest

        run_ok(run_script, RESTORE, "redis", backup.name, env=restoring_env(env, key_pair))

        assert redis_state(live).digest == written.digest
        # the safety backup taken first is encrypted to the public key as well
        safety = [p for p in (tmp_path / "backups").glob("redis_backup_*.gpg") if p != backup]
        assert len(safety) == 1
        manifest = json.loads(Path(f"{safety[0]}.manifest.json").read_text())
        assert manifest["encryption"]["format"] == "openpgp-public-key"


def test_a_public_key_files_backup_restores_only_with_the_private_key(
    key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    uploads = make_uploads(tmp_path / "uploads")
    written = tree_state(uploads)
    env = public_env(backup_env(tmp_path, files_dir=uploads), key_pair)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    dest = tmp_path / "restored"

    refused = run_script(RESTORE, "files", backup.name, str(dest), env=env)

    assert_refused_for_want_of_the_key(refused)
    assert not dest.exists()

    run_ok(run_script, RESTORE, "files", backup.name, str(dest), env=restoring_env(env, key_pair))

    assert tree_state(dest) == written


def test_the_host_cannot_decrypt_what_it_wrote_but_verify_and_info_check_what_they_can(
    key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = public_env(backup_env(tmp_path), key_pair)
    run_ok(run_script, BACKUP, "full", env=env)
    backups = tmp_path / "backups"
    backup = only_backup(backups, "files", encrypted=True)
    manifest = json.loads(Path(f"{backup}.manifest.json").read_text())
    assert manifest["encrypted"] is True
    assert manifest["encryption"]["format"] == "openpgp-public-key"
    assert manifest["encryption"]["recipient_key_id"] == key_pair.subkey_id
    assert manifest["encryption"]["recipient_fingerprint"] == key_pair.fingerprint
    # no private key anywhere this host's gpg looks: real gpg cannot decrypt it
    home = new_gpg_home()
    try:
        attempt = run_gpg(home, "", "--decrypt", str(backup))
    finally:
        drop_gpg_home(home)
    assert attempt.returncode != 0
    assert b"No secret key" in attempt.stderr
    assert not (tmp_path / "home" / ".gnupg").exists(), "the run used the user's keyring"

    verified = run_ok(run_script, RESTORE, "verify", backup.name, env=env)
    info = run_ok(run_script, RESTORE, "info", backup.name, env=env).stdout
    deep = run_script(RESTORE, "verify", backup.name, "--deep", env=env)

    assert "check checksum: ok" in verified.stdout
    assert f"check packets: ok (an OpenPGP message to public key ID {key_pair.subkey_id}" in (
        verified.stdout
    )
    assert f"its content was not checked: it {NEEDS_KEY}" in verified.stdout
    assert f"encrypted:    yes, OpenPGP public key (to key ID {key_pair.subkey_id};" in info
    assert_refused_for_want_of_the_key(deep)
    full = run_ok(
        run_script, RESTORE, "verify", backup.name, "--deep", env=restoring_env(env, key_pair)
    )
    assert "check decrypt: ok (OpenPGP public-key encryption" in full.stdout
    assert "every check passed; found" in full.stdout


@pytest.mark.parametrize(
    ("damage", "check"),
    [
        pytest.param(truncate_half, "packets", id="truncated"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes() + b"more"), "packets", id="appended"),
        pytest.param(flip_middle_byte, "decrypt", id="flipped"),
    ],
)
def test_a_damaged_public_key_backup_with_a_matching_sidecar_is_rejected_at_verify(
    damage: object,
    check: str,
    key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = public_env(backup_env(tmp_path), key_pair)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    assert callable(damage)
    damage(backup)
    write_sidecar(backup)  # the damage happened before the checksum: only the content shows it

    if check == "packets":
        # without the private key, the OpenPGP structure shows a cut or lengthened file
        result = run_script(RESTORE, "verify", backup.name, env=env)
    else:
        # a flipped byte inside the encrypted data: only decryption (its MDC) can show it
        result = run_script(RESTORE, "verify", backup.name, env=restoring_env(env, key_pair))

    assert result.returncode == 4, result.stdout + result.stderr
    assert f"check {check}: FAILED" in result.stderr
    assert "damaged or truncated" in result.stderr


def test_gpg_killed_while_encrypting_to_the_public_key_fails_the_backup_and_leaves_nothing(
    key_pair: KeyPair,
    rendered_scripts: Path,
    backup_env: MakeEnv,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    uploads = tmp_path / "big"
    uploads.mkdir()
    for i in range(3):  # random bytes: compression cannot shrink them, encryption takes a while
        (uploads / f"video-{i}.bin").write_bytes(os.urandom(25 * 1024 * 1024))
    env = public_env(backup_env(tmp_path, files_dir=uploads, TMPDIR=str(short_tmp)), key_pair)
    backups = tmp_path / "backups"

    run = start_script(rendered_scripts, BACKUP, "files", env=env)
    err = kill_stage_when_writing(
        run, "--recipient-file", backups / "files_backup_*.tar.gz.gpg.partial", 1,
        "gpg to be encrypting into the .partial file",
    )  # fmt: skip

    assert run.returncode == 1, err
    assert "files: encrypt failed (exit 137)" in err
    assert "nothing was written under a final name" in err
    assert not [p for p in backups.iterdir() if "_backup_" in p.name]
    assert list(short_tmp.iterdir()) == [], "the run left its work folder behind"


def test_a_private_key_that_does_not_match_is_a_wrong_key_naming_the_key_ids(
    key_pair: KeyPair,
    old_key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = public_env(backup_env(tmp_path), key_pair)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)

    result = run_script(RESTORE, "verify", backup.name, env=restoring_env(env, old_key_pair))

    assert result.returncode == 5, result.stdout + result.stderr
    assert "check decrypt: FAILED" in result.stderr
    assert f"encrypted to key ID {key_pair.subkey_id}" in result.stderr
    assert f"tried the private keys {old_key_pair.subkey_id}" in result.stderr
    assert old_key_pair.passphrase not in result.stdout + result.stderr


def test_a_wrong_passphrase_of_the_private_key_is_a_wrong_key_that_says_so(
    old_key_pair: KeyPair, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = public_env(backup_env(tmp_path), old_key_pair)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not 'it'\n")
    given = {**restoring_env(env, old_key_pair), "DECRYPTION_KEY_PASSPHRASE_FILE": str(wrong)}

    result = run_script(RESTORE, "verify", backup.name, env=given)

    assert result.returncode == 5, result.stdout + result.stderr
    assert f"the private key {old_key_pair.subkey_id} in DECRYPTION_KEY_FILE is the right one" in (
        result.stderr
    )
    assert "DECRYPTION_KEY_PASSPHRASE does not unlock it" in result.stderr
    assert "not 'it'" not in result.stdout + result.stderr


# ------------------------------------------------------------------------------- key rotation


def test_after_a_key_change_backups_of_both_keys_restore_from_one_private_key_file(
    key_pair: KeyPair,
    old_key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    uploads = make_uploads(tmp_path / "uploads")
    written = tree_state(uploads)
    env = backup_env(tmp_path, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=public_env(env, old_key_pair))
    old = only_backup(tmp_path / "backups", "files", encrypted=True)
    # the key changes: new backups go to the new key; the private keys of both, in one file
    run_ok(run_script, BACKUP, "files", env=public_env(env, key_pair))
    new = next(p for p in (tmp_path / "backups").glob("files_backup_*.gpg") if p != old)
    both = tmp_path / "both.key.asc"
    both.write_bytes(key_pair.private.read_bytes() + old_key_pair.private.read_bytes())
    restoring = restoring_env(public_env(env, key_pair), old_key_pair, both)

    for backup in (old, new):
        dest = tmp_path / f"restored-{backup.name}"
        run_ok(run_script, RESTORE, "files", backup.name, str(dest), env=restoring)
        assert tree_state(dest) == written


def test_a_backup_made_with_an_older_passphrase_restores_when_it_is_in_encryption_key_previous(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    uploads = make_uploads(tmp_path / "uploads")
    written = tree_state(uploads)
    env = backup_env(tmp_path, encryption_key=KEY, files_dir=uploads)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    previous = tmp_path / "previous-keys"
    previous.write_text(f"a key from long ago\n{KEY}\n")
    rotated = {
        **env,
        "ENCRYPTION_KEY": "the new key",
        "ENCRYPTION_KEY_PREVIOUS_FILE": str(previous),
    }
    dest = tmp_path / "restored"

    result = run_ok(run_script, RESTORE, "files", backup.name, str(dest), env=rotated)

    assert tree_state(dest) == written
    assert "ENCRYPTION_KEY_PREVIOUS line 2 decrypts" in result.stdout
    # new backups are written with the new key only
    run_ok(run_script, BACKUP, "files", env=rotated)
    newest = max((tmp_path / "backups").glob("files_backup_*.gpg"))
    assert run_script(RESTORE, "verify", newest.name, env=env).returncode == 5


def test_a_wrong_passphrase_lists_the_keys_tried_without_their_values(
    backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = backup_env(tmp_path, encryption_key=KEY)
    run_ok(run_script, BACKUP, "files", env=env)
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    previous = tmp_path / "previous-keys"
    previous.write_text("older one\n\nolder two\n")
    wrong = {**env, "ENCRYPTION_KEY": "the new key", "ENCRYPTION_KEY_PREVIOUS_FILE": str(previous)}

    result = run_script(RESTORE, "verify", backup.name, env=wrong)

    assert result.returncode == 5, result.stdout + result.stderr
    assert (
        "none of the passphrases tried decrypts this backup (tried ENCRYPTION_KEY, "
        "ENCRYPTION_KEY_PREVIOUS line 1, ENCRYPTION_KEY_PREVIOUS line 3)"
    ) in result.stderr
    log = (tmp_path / "backups" / "restore.log").read_text()
    for value in ("the new key", "older one", "older two"):
        assert value not in result.stdout + result.stderr + log


# ------------------------------------------------------------------------------ the settings


@pytest.mark.parametrize(
    ("recipient", "message"),
    [
        pytest.param("missing", "ENCRYPTION_RECIPIENT: cannot read", id="missing"),
        pytest.param("private", "holds a PRIVATE key", id="private-key"),
        pytest.param("two", "holds 2 OpenPGP keys", id="two-keys"),
        pytest.param("sign-only", "cannot encrypt (no usable encryption subkey", id="sign-only"),
    ],
)
def test_an_unusable_recipient_file_refuses_the_backup_and_writes_nothing(
    recipient: str,
    message: str,
    key_pair: KeyPair,
    old_key_pair: KeyPair,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    files = {
        "missing": tmp_path / "nothing-here.asc",
        "private": key_pair.private,
        "two": tmp_path / "two.asc",
    }
    files["two"].write_bytes(key_pair.public.read_bytes() + old_key_pair.public.read_bytes())
    if recipient == "sign-only":
        files[recipient] = make_key_pair(tmp_path / "keys", "signer", usage="sign").public
    env = backup_env(tmp_path, ENCRYPTION_RECIPIENT=str(files[recipient]))

    result = run_script(BACKUP, "full", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert message in result.stderr
    assert "gpg --export --armor" in result.stderr
    # each part fails on it (in the status and the alerts, as any failed backup)
    assert "backup full FAILED: postgresql FAILED (exit 6) redis FAILED (exit 6) files FAILED" in (
        result.stderr
    )
    assert not list((tmp_path / "backups").glob("*_backup_*"))


def test_a_passphrase_and_a_public_key_together_are_refused_as_ambiguous(
    key_pair: KeyPair, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = public_env(backup_env(tmp_path, encryption_key=KEY), key_pair)

    result = run_script(BACKUP, "files", env=env)

    assert result.returncode == 6, result.stdout + result.stderr
    assert "ENCRYPTION_RECIPIENT: ENCRYPTION_KEY is set too; keep only one of them" in result.stderr
    assert not list((tmp_path / "backups").glob("*_backup_*"))


# ------------------------------------------------------------------------ drill and secrets


def test_the_drill_skips_public_key_backups_without_the_private_key_and_does_not_alert(
    key_pair: KeyPair, backup_env: MakeEnv, run_script: RunScript, tmp_path: Path
) -> None:
    env = public_env(backup_env(tmp_path, POSTGRES_DB="gym_secure_db"), key_pair)
    run_ok(run_script, BACKUP, "files", env=env)

    result = run_ok(run_script, BACKUP, "drill", env=env, timeout=300)

    assert f"drill files: skipped: {NEEDS_KEY}" in result.stderr
    assert re.search(rf"drill finished: .*files skipped \({NEEDS_KEY}\)", result.stdout)
    status = json.loads((tmp_path / "backups" / "status.json").read_text())
    assert "encryption" not in json.dumps(status.get("attention", status))


def test_the_private_key_and_its_passphrase_never_appear_in_argv_or_logs(
    old_key_pair: KeyPair, backup_env: MakeEnv, rendered_scripts: Path, tmp_path: Path
) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed; it is needed to see the argv of every exec")
    env = public_env(backup_env(tmp_path), old_key_pair)
    made = subprocess.run(
        ["bash", str(rendered_scripts / BACKUP), "files"], env=env, capture_output=True, check=False
    )
    assert made.returncode == 0, made.stderr
    backup = only_backup(tmp_path / "backups", "files", encrypted=True)
    trace = tmp_path / "execve.trace"

    result = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=execve", "-s", "65536", "-o", str(trace), "bash",
         str(rendered_scripts / RESTORE), "files", backup.name, str(tmp_path / "dest")],
        env=restoring_env(env, old_key_pair),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip

    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    traced = trace.read_text(errors="replace")
    assert re.search(r'execve\("[^"]*/gpg"', traced)
    log = (tmp_path / "backups" / "restore.log").read_text()
    private = old_key_pair.private.read_text()
    block = private.splitlines()[3]  # a line of the key's armored body
    for value in (old_key_pair.passphrase, block):
        for seen in (traced, log, result.stdout, result.stderr):
            assert value not in seen
    assert not (tmp_path / "home" / ".gnupg").exists(), "the run used the user's keyring"
