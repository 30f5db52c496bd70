"""A PostgreSQL restore is all or nothing, and nothing in a backup ever runs as a command.

Each test writes data into a real database, backs it up with backup_script.sh (or writes a
hostile backup by hand), changes the target, then makes the restore fail in a chosen way: the
decoded stream cut at a chosen byte, the decompressor or decryptor killed mid-restore, a psql
command planted in the dump. The target's pg_dump is compared before and after, and a control
run without the fault shows the restore would have changed it.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
import zlib
from pathlib import Path

import pytest

from devtools.sandbox import PostgresServer, sql_ident, sql_literal
from tests.support import (
    BACKUP,
    CHANGE,
    ENCRYPTION,
    KEY,
    PG_USER,
    RESTORE,
    MakeEnv,
    NewDb,
    RunScript,
    database_names,
    decode,
    descendants,
    hostile_dump,
    only_backup,
    run_gpg,
    run_ok,
    start_script,
    table_lock,
    wait_for_blocked_session,
    write_sidecar,
)

PAYMENTS = 100_000


# ------------------------------------------------------------- a decompressor that stops early


@pytest.fixture
def cutting_decompressor(tmp_path: Path) -> Path:
    """A folder to put first on PATH: ``pigz`` and ``gzip`` there run the real ones, and count
    the decompressions in ``count``; the one numbered ``$CUT_AT`` stops after ``$CUT_BYTES``
    bytes of output and exits 0, as a decoder that was cut short without noticing would."""
    folder = tmp_path / "cutting-bin"
    folder.mkdir()
    for name in ("pigz", "gzip"):
        real = shutil.which(name)
        assert real, f"{name} is needed"
        script = folder / name
        script.write_text(
            "#!/bin/bash\n"
            'if [[ " $* " == *" -d "* ]]; then\n'
            f'  n=$(( $(cat "{folder}/count" 2>/dev/null || echo 0) + 1 ))\n'
            f'  echo "$n" >"{folder}/count"\n'
            '  if [[ "$n" == "${CUT_AT:-0}" ]]; then\n'
            f'    "{real}" "$@" | head -c "$CUT_BYTES"\n'
            "    exit 0\n"
            "  fi\n"
            "fi\n"
            f'exec "{real}" "$@"\n'
        )
        script.chmod(0o755)
    return folder


def cut_at(dump: bytes, where: str) -> int:
    """The byte offset of a cut in the decoded dump."""
    if where == "line-break-in-copy-data":
        start = dump.index(b'COPY "billing"."payments"')
        offset = start
        for _ in range(PAYMENTS // 2):
            offset = dump.index(b"\n", offset) + 1
        return offset
    if where == "middle-of-a-statement":
        # the constraints come after all the data: everything is loaded but half a statement
        return dump.index(b"ADD CONSTRAINT") + 7
    # between statements: the whole dump but its completion trailer
    return dump.index(b"\n--\n-- PostgreSQL database dump complete") + 1


@pytest.mark.parametrize("key", ENCRYPTION)
@pytest.mark.usefixtures("createdb")
def test_a_backup_whose_damage_only_its_end_tells_is_reported_as_damaged_not_as_bad_sql(
    key: str | None,
    pg: PostgresServer,
    payments_db: str,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    gpg_home: Path,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, encryption_key=key, POSTGRES_DB=payments_db)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=key is not None)
    sql = decode(backup, key, gpg_home)
    # Stored deflate blocks carry a damaged byte through as it is, to the gzip trailer's CRC at
    # the end (as gpg releases plaintext before its integrity check at the end): psql gets a
    # statement before the data that is not SQL, and fails first, while megabytes are to come.
    packer = zlib.compressobj(0, zlib.DEFLATED, 31)
    packed = bytearray(packer.compress(sql) + packer.flush())
    packed[packed.index(b"\nCREATE TABLE ") + len("\nCREATE ")] = ord("X")
    if key is None:
        backup.write_bytes(bytes(packed))
    else:
        plain = tmp_path / "damaged.sql.gz"
        plain.write_bytes(bytes(packed))
        backup.unlink()
        sealed = run_gpg(gpg_home, key, "--symmetric", "--output", str(backup), str(plain))
        assert sealed.returncode == 0, sealed.stderr
    write_sidecar(backup)
    target = new_db(create=False)

    result = run_script(RESTORE, "postgresql", backup.name, "--target-db", target, env=env)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "the compressed data is damaged" in result.stderr
    assert "42601" in result.stderr  # the consequence, named after the cause
    assert target not in database_names(pg)


@pytest.mark.parametrize(
    "where", ["line-break-in-copy-data", "middle-of-a-statement", "between-statements"]
)
def test_a_restore_whose_stream_ends_early_changes_nothing(
    where: str,
    pg: PostgresServer,
    payments_db: str,
    cutting_decompressor: Path,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, POSTGRES_DB=payments_db)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    written = pg.dump(payments_db)
    env["PATH"] = f"{cutting_decompressor}:{env['PATH']}"
    count = cutting_decompressor / "count"

    # control: the same restore, not cut, changes the database back to the backup
    pg.psql(CHANGE, payments_db, superuser=False)
    assert pg.dump(payments_db) != written
    run_ok(run_script, RESTORE, "postgresql", backup.name, "--clean", env=env)
    assert pg.dump(payments_db) == written
    loads = int(count.read_text())

    pg.psql(CHANGE, payments_db, superuser=False)
    before = pg.dump(payments_db)
    count.unlink()
    env |= {"CUT_AT": str(loads), "CUT_BYTES": str(cut_at(decode(backup), where))}
    result = run_script(RESTORE, "postgresql", backup.name, "--clean", env=env)

    assert int(count.read_text()) == loads, "the cut must hit the load itself"
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the restore failed and was rolled back" in result.stderr
    assert "it is incomplete" in result.stderr
    assert pg.dump(payments_db) == before


@pytest.mark.parametrize(
    ("key", "decoder"),
    [pytest.param(None, "pigz", id="decompressor"), pytest.param(KEY, "gpg", id="decryptor")],
)
def test_killing_the_decoder_mid_restore_changes_nothing(
    key: str | None,
    decoder: str,
    pg: PostgresServer,
    payments_db: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    rendered_scripts: Path,
    tmp_path: Path,
) -> None:
    env = backup_env(tmp_path, encryption_key=key, POSTGRES_DB=payments_db, LOCK_TIMEOUT="120")
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=key is not None)
    pg.psql(CHANGE, payments_db, superuser=False)
    before = pg.dump(payments_db)

    # the test's session holds a lock the restore's first statement needs: meanwhile every
    # stage of its decode is alive, blocked on a full pipe
    with table_lock(pg, payments_db, "billing.summary"):
        restore = start_script(
            rendered_scripts, RESTORE, "postgresql", backup.name, "--clean", env=env
        )
        wait_for_blocked_session(pg, payments_db)
        victims = [
            pid
            for pid, argv in descendants(restore.pid)
            if argv[0].endswith(decoder) and ("--decrypt" in argv or "-d" in argv)
        ]
        assert len(victims) == 1, descendants(restore.pid)
        os.kill(victims[0], signal.SIGKILL)
    out, err = restore.communicate(timeout=120)

    assert restore.returncode == 4, out + err
    assert "the restore failed and was rolled back" in err
    assert "stopped" in err
    assert pg.dump(payments_db) == before


# ------------------------------------------------------------------- --clean over a live schema

RICH_SCHEMA_SQL = """
CREATE SCHEMA billing;
COMMENT ON SCHEMA billing IS 'facturación';
CREATE SCHEMA crm;
CREATE EXTENSION citext SCHEMA crm;
CREATE TYPE billing.method AS ENUM ('cash', 'card', 'transfer');
CREATE DOMAIN billing.amount AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE SEQUENCE billing.receipt_seq START 1000 INCREMENT 3;
CREATE TABLE crm.members (id int PRIMARY KEY, email crm.citext UNIQUE NOT NULL, name text);
INSERT INTO crm.members SELECT i, 'socio' || i || '@gym.example', 'Socio ' || i
FROM generate_series(1, 50) AS i;
CREATE TABLE billing.payments (
    id bigint NOT NULL DEFAULT nextval('billing.receipt_seq'),
    member_id int NOT NULL REFERENCES crm.members (id),
    paid_at date NOT NULL,
    amount billing.amount,
    method billing.method NOT NULL DEFAULT 'cash',
    PRIMARY KEY (id, paid_at)
) PARTITION BY RANGE (paid_at);
CREATE INDEX payments_member ON billing.payments (member_id);
COMMENT ON TABLE billing.payments IS 'pagos, por mes';
CREATE TABLE billing.payments_2024_01 PARTITION OF billing.payments
    FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
CREATE TABLE billing.payments_2024_02 PARTITION OF billing.payments
    FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
CREATE TABLE billing.payments_2024_03 PARTITION OF billing.payments
    FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');
INSERT INTO billing.payments (member_id, paid_at, amount, method)
SELECT 1 + i % 50, '2024-01-01'::date + i % 90, i,
       (ARRAY['cash', 'card', 'transfer'])[1 + i % 3]::billing.method
FROM generate_series(1, 600) AS i;
CREATE TABLE billing.by_method (id int, method billing.method, note text, PRIMARY KEY (id, method))
    PARTITION BY LIST (method);
CREATE TABLE billing.by_method_cash PARTITION OF billing.by_method FOR VALUES IN ('cash');
CREATE TABLE billing.by_method_other PARTITION OF billing.by_method
    FOR VALUES IN ('card', 'transfer');
CREATE FUNCTION billing.default_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.note := coalesce(NEW.note, 'auto ' || NEW.method);
    RETURN NEW;
END
$$;
CREATE TRIGGER by_method_note BEFORE INSERT ON billing.by_method
    FOR EACH ROW EXECUTE FUNCTION billing.default_note();
INSERT INTO billing.by_method (id, method)
SELECT i, (ARRAY['cash', 'card'])[1 + i % 2]::billing.method FROM generate_series(1, 40) AS i;
CREATE TABLE crm.contacts (id serial PRIMARY KEY, note text);
CREATE TABLE crm.staff_contacts (role text) INHERITS (crm.contacts);
INSERT INTO crm.contacts (note) VALUES ('proveedor'), ('médico');
INSERT INTO crm.staff_contacts (note, role) VALUES ('Ana', 'coach');
CREATE VIEW billing.monthly AS
    SELECT date_trunc('month', paid_at) AS month, sum(amount) AS total
    FROM billing.payments GROUP BY 1;
CREATE MATERIALIZED VIEW billing.monthly_mv AS SELECT * FROM billing.monthly;
COMMENT ON VIEW billing.monthly IS 'totales';
CREATE TABLE public.settings (k text PRIMARY KEY, v text);
INSERT INTO public.settings VALUES ('currency', 'ARS');
"""

RICH_GRANTS = """
GRANT USAGE ON SCHEMA billing TO {reader};
GRANT SELECT ON billing.payments, billing.monthly TO {reader};
GRANT USAGE ON SEQUENCE billing.receipt_seq TO {reader};
"""

# After the backup: data and structure change in every dumped schema.
RICH_CHANGES = """
DROP TABLE billing.payments_2024_03;
ALTER TABLE crm.members ADD COLUMN phone text;
CREATE TABLE billing.added_later (x int);
CREATE TABLE public.also_added (x int);
UPDATE crm.members SET name = 'cambiado';
DELETE FROM billing.payments WHERE amount::int % 2 = 0;
ALTER TYPE billing.method ADD VALUE 'crypto';
DROP VIEW billing.monthly CASCADE;
INSERT INTO public.settings VALUES ('nuevo', 'valor');
SELECT setval('billing.receipt_seq', 99999);
"""


def rich_db(pg: PostgresServer, new_db: NewDb, reader: str) -> str:
    db = new_db()
    pg.psql(RICH_SCHEMA_SQL + RICH_GRANTS.format(reader=sql_ident(reader)), db, superuser=False)
    return db


@pytest.mark.parametrize("key", ENCRYPTION)
def test_clean_restore_over_a_changed_partitioned_schema_brings_back_the_backup_exactly(
    key: str | None,
    pg: PostgresServer,
    new_db: NewDb,
    reader_role: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = rich_db(pg, new_db, reader_role)
    written = pg.dump(db)
    env = backup_env(tmp_path, encryption_key=key, POSTGRES_DB=db)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=key is not None)
    pg.psql(RICH_CHANGES, db, superuser=False)
    assert pg.dump(db) != written

    result = run_ok(run_script, RESTORE, "postgresql", backup.name, "--clean", env=env)

    assert pg.dump(db) == written
    assert "replaces everything in the schemas of the backup: billing crm public" in result.stdout
    # the tables whose rows the dump loads: 3 + 2 partitions (not their 2 parents), members,
    # contacts and its child, settings
    assert "postgresql: restored" in result.stdout
    assert "9 tables" in result.stdout


def test_clean_restore_refuses_to_drop_what_a_schema_outside_the_backup_uses(
    pg: PostgresServer,
    new_db: NewDb,
    reader_role: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    db = rich_db(pg, new_db, reader_role)
    env = backup_env(tmp_path, POSTGRES_DB=db)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    pg.psql(
        "CREATE SCHEMA reports;"
        "CREATE VIEW reports.big_payers AS "
        "SELECT member_id FROM billing.payments WHERE amount > 500;"
        "CREATE TABLE reports.notes (member_id int REFERENCES crm.members (id), m billing.method);",
        db,
        superuser=False,
    )
    before = pg.dump(db)

    result = run_script(RESTORE, "postgresql", backup.name, "--clean", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "outside the schemas of the backup that depend on what it replaces" in result.stderr
    assert "view reports.big_payers" in result.stderr
    assert "column m of table reports.notes" in result.stderr
    assert "rolled back" in result.stderr
    assert pg.dump(db) == before


# ------------------------------------------------------------------ no psql command ever runs


PAYLOADS = {
    "shell-at-line-start": "\\! touch {marker}",
    "shell-mid-line": "SELECT 1; \\! touch {marker}",
    "output-to-a-pipe": "\\o |touch {marker}\nSELECT 1;",
    "copy-to-a-program": "\\copy (SELECT 1) TO PROGRAM 'touch {marker}'",
    "include-a-file": "\\i {script}",
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.usefixtures("createdb")
def test_no_psql_command_in_a_backup_ever_runs(
    payload: str,
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "included.sql"
    script.write_text(f"\\! touch {marker}\n")
    env = backup_env(tmp_path)
    backup = hostile_dump(
        tmp_path / "backups", PAYLOADS[payload].format(marker=marker, script=script)
    )
    target = new_db(create=False)

    checked = run_script(RESTORE, "verify", backup.name, env=env)
    deep = run_script(RESTORE, "verify", backup.name, "--deep", env=env)
    restored = run_script(RESTORE, "postgresql", backup.name, "--target-db", target, env=env)

    assert not marker.exists(), "a command from the backup ran"
    assert checked.returncode == 0, checked.stderr
    for result in (deep, restored):
        assert result.returncode == 4, result.stdout + result.stderr
        assert "the backup holds a psql command" in result.stderr
    assert target not in database_names(pg)


@pytest.mark.usefixtures("createdb")
def test_a_function_whose_body_has_lines_starting_with_a_backslash_restores_unchanged(
    pg: PostgresServer,
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    source = new_db()
    pg.psql(
        "CREATE FUNCTION public.backslash_lines() RETURNS text LANGUAGE sql AS $body$\n"
        "SELECT '\n\\! not a command\n\\. nor this\n\\restrict nor this\n'::text\n$body$;\n"
        "CREATE TABLE public.t (x text);\n"
        "INSERT INTO public.t VALUES (E'\\\\! data that looks like a command');\n",
        source,
        superuser=False,
    )
    written = pg.dump(source)
    env = backup_env(tmp_path, POSTGRES_DB=source)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    target = new_db(create=False)

    run_ok(run_script, RESTORE, "verify", backup.name, "--deep", env=env)
    run_ok(run_script, RESTORE, "postgresql", backup.name, "--target-db", target, env=env)

    assert pg.dump(target) == written
    assert pg.psql("SELECT public.backslash_lines()", target) == pg.psql(
        "SELECT public.backslash_lines()", source
    )


# ------------------------------------------------------------- an administrator creates databases


def test_an_admin_creates_the_database_but_the_dump_loads_as_the_application_role(
    pg: PostgresServer,
    admin: tuple[str, str],
    new_db: NewDb,
    payments_db: str,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    name, password = admin
    env = backup_env(tmp_path, POSTGRES_DB=payments_db)
    run_ok(run_script, BACKUP, "postgresql", env=env)
    backup = only_backup(tmp_path / "backups", "postgresql", encrypted=False)
    written = pg.dump(payments_db)
    target = new_db(create=False)
    without = run_script(RESTORE, "postgresql", backup.name, "--target-db", target, env=env)
    env_admin = env | {"POSTGRES_ADMIN_USER": name, "POSTGRES_ADMIN_PASSWORD": password}

    run_ok(run_script, RESTORE, "verify", backup.name, "--deep", env=env_admin)
    run_ok(run_script, RESTORE, "postgresql", backup.name, "--target-db", target, env=env_admin)

    assert without.returncode == 6
    assert "or set POSTGRES_ADMIN_USER" in without.stderr
    assert pg.dump(target) == written
    named = sql_literal(target)
    owner = f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {named}"  # noqa: S608
    tables = "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'billing'"
    assert pg.psql(f"{owner} UNION {tables}", target) == pg.user
    assert not [db for db in database_names(pg) if db.startswith("gym_backup_verify_")]

    # a planted server-side program never runs with the administrator's rights
    marker = tmp_path / "ran"
    hostile = hostile_dump(
        tmp_path / "backups",
        f"COPY public.before_payload FROM PROGRAM 'touch {marker}';",
    )
    planted = new_db(create=False)
    result = run_script(RESTORE, "postgresql", hostile.name, "--target-db", planted, env=env_admin)
    assert result.returncode == 1, result.stdout + result.stderr
    assert not marker.exists()
    assert planted not in database_names(pg)


# ------------------------------------------------------------ the roles a backup carries


def test_the_roles_of_a_hostile_backup_get_no_more_power_than_an_application_role(
    pg: PostgresServer,
    admin: tuple[str, str],
    new_db: NewDb,
    backup_env: MakeEnv,
    run_script: RunScript,
    tmp_path: Path,
) -> None:
    evil, ally = (f"{what}_{uuid.uuid4().hex[:8]}" for what in ("evil", "ally"))
    # the server's own folder: the server (running as postgres when the tests run as root) may
    # write there, as a superuser's COPY TO PROGRAM shows
    marker = pg.data_dir.parent / f"pwned-{uuid.uuid4().hex[:8]}"
    pg.psql(f"COPY (SELECT 1) TO PROGRAM {sql_literal(f'id > {marker}')}")
    assert marker.exists(), "the control: the server can write the marker"
    marker.unlink()
    roles = [
        f'CREATE ROLE "{evil}";',
        f'ALTER ROLE "{evil}" WITH NOSUPERUSER INHERIT CREATEROLE NOCREATEDB LOGIN REPLICATION '
        "BYPASSRLS;",
        f'CREATE ROLE "{ally}";',
        f'ALTER ROLE "{ally}" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN '
        "NOREPLICATION NOBYPASSRLS;",
        f'GRANT "pg_execute_server_program" TO "{evil}" GRANTED BY "postgres";',
        f'GRANT "postgres" TO "{evil}" GRANTED BY "postgres";',
        f'GRANT "{evil}" TO "{PG_USER}" GRANTED BY "postgres";',
        f'GRANT "{ally}" TO "{evil}" GRANTED BY "postgres";',
    ]
    name, password = admin
    env = backup_env(tmp_path) | {"POSTGRES_ADMIN_USER": name, "POSTGRES_ADMIN_PASSWORD": password}
    planted = new_db(create=False)
    target = new_db(create=False)
    try:
        hostile = hostile_dump(
            tmp_path / "backups",
            f"COPY (SELECT 1) TO PROGRAM {sql_literal(f'id > {marker}')};",
            roles,
        )
        refused = run_script(RESTORE, "postgresql", hostile.name, "--target-db", planted, env=env)
        benign = hostile_dump(tmp_path / "backups", "SELECT 1;", roles)
        restored = run_ok(
            run_script, RESTORE, "postgresql", benign.name, "--target-db", target, env=env
        )

        assert not marker.exists(), "the program of the backup ran"
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "42501" in refused.stderr
        assert planted not in database_names(pg)
        names = f"{sql_literal(ally)}, {sql_literal(evil)}"
        attributes = pg.psql(
            "SELECT rolname, rolsuper, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "  # noqa: S608 - quoted literals
            f"FROM pg_roles WHERE rolname IN ({names}) ORDER BY rolname = {sql_literal(evil)}",
            "postgres",
        ).splitlines()
        assert attributes == [f"{ally}|f|f|f|f|f", f"{evil}|f|f|f|f|t"]
        memberships = pg.psql(
            "SELECT g.rolname || ' TO ' || m.rolname FROM pg_auth_members a "  # noqa: S608 - quoted literals
            "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
            f"WHERE g.rolname IN ({names}) OR m.rolname IN ({names})",
            "postgres",
        ).splitlines()
        assert memberships == [f"{ally} TO {evil}"]
        log = (tmp_path / "backups/restore.log").read_text()
        for said in (restored.stderr, log):
            assert f'ALTER ROLE "{evil}" CREATEROLE REPLICATION BYPASSRLS;' in said, restored.stderr
            for grant in (
                f'GRANT "pg_execute_server_program" TO "{evil}";',
                f'GRANT "postgres" TO "{evil}";',
                f'GRANT "{evil}" TO "{PG_USER}";',
            ):
                assert grant in said, restored.stderr
            assert f'GRANT "{ally}" TO "{evil}";' not in said
    finally:
        pg.dropdb(target)
        pg.psql(f"DROP ROLE IF EXISTS {sql_ident(evil)}, {sql_ident(ally)}", "postgres")
