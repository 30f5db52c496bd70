"""The sandbox servers behind the integration fixtures work, hostile passwords included."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.sandbox import PostgresServer, RedisServer, load_rdb


def test_postgres_user_over_tcp_with_hostile_password(pg: PostgresServer) -> None:
    assert pg.host == "127.0.0.1"
    assert pg.port != 5432
    pg.psql(
        "DROP TABLE IF EXISTS sandbox_check;"
        "CREATE TABLE sandbox_check (id int PRIMARY KEY, name text);"
        "INSERT INTO sandbox_check VALUES (1, 'José Núñez'), (2, 'O''Brien');",
        superuser=False,
    )

    rows = pg.psql("SELECT id, name FROM sandbox_check ORDER BY id", superuser=False)
    owner = pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'sandbox_check'")

    assert rows.splitlines() == ["1|José Núñez", "2|O'Brien"]
    assert owner == "gym_secure_user"
    assert "José Núñez" in pg.dump()


def test_redis_with_hostile_password(redis_auth: RedisServer) -> None:
    assert redis_auth.password is not None
    assert " " in redis_auth.password
    assert redis_auth.port != 6379

    redis_auth.cli("SET", "sandbox:check", "héllo wörld")

    assert redis_auth.cli("GET", "sandbox:check") == "héllo wörld"
    assert len(redis_auth.digest()) == 40
    assert redis_auth.digest() != "0" * 40


def test_load_rdb_has_the_same_digest(redis_open: RedisServer, tmp_path: Path) -> None:
    redis_open.cli("FLUSHALL")  # the server is shared by the session's tests
    redis_open.pipe(
        [
            ["HSET", "session:abc", "member_id", "42", "ip", "10.0.0.1"],
            ["EXPIRE", "session:abc", "3600"],
            ["SET", "cache:plans", '{"monthly": 15000}'],
            ["ZADD", "leaderboard", "12", "ana", "7", "bruno"],
        ]
    )
    rdb = tmp_path / "snapshot.rdb"
    subprocess.run(
        ["redis-cli", "-h", redis_open.host, "-p", str(redis_open.port), "--rdb", str(rdb)],
        check=True,
        capture_output=True,
        timeout=60,
    )

    with load_rdb(rdb, tmp_path / "restore") as restored:
        assert restored.port != redis_open.port
        assert restored.cli("HGET", "session:abc", "member_id") == "42"
        assert restored.digest() == redis_open.digest()
