#!/usr/bin/env bash
# The official image's start-up, in short: initialise PGDATA on first start with
# POSTGRES_USER (default postgres) as the superuser and POSTGRES_PASSWORD as its password,
# create POSTGRES_DB (default: the user's name), then run the server as PID 1.
set -Eeuo pipefail
run_as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [[ "${1:-}" == postgres ]]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-${user}}"
  chown postgres:postgres "${PGDATA}"
  chmod 0700 "${PGDATA}"
  if [[ ! -s "${PGDATA}/PG_VERSION" ]]; then
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD}" >"${pwfile}"
    chown postgres "${pwfile}"
    run_as_postgres initdb -D "${PGDATA}" -U "${user}" --pwfile="${pwfile}" \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >/dev/null
    rm -f "${pwfile}"
    printf 'host all all all scram-sha-256\n' >>"${PGDATA}/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"${PGDATA}/postgresql.conf"
    run_as_postgres pg_ctl -D "${PGDATA}" -w -o "-c listen_addresses=''" start >/dev/null
    if [[ "${db}" != postgres ]]; then
      printf 'CREATE DATABASE "%s";\n' "${db//\"/\"\"}" |
        run_as_postgres psql -X -q -v ON_ERROR_STOP=1 -U "${user}" -d postgres
    fi
    run_as_postgres pg_ctl -D "${PGDATA}" -m fast -w stop >/dev/null
  fi
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
fi
exec "$@"
