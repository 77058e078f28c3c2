#!/usr/bin/env bash
# One role and one database per service, each database reachable only by its own role
# (CONNECT revoked from PUBLIC; superusers still can). Idempotent: safe to run again.
#
#   In the postgres image: mounted into /docker-entrypoint-initdb.d/ and run on first start.
#   scripts/setup:         deploy/postgres/init.sh --sql | psql ...   (the same SQL, local server)
#
# Passwords: EVENTBANK_<SERVICE>_DB_PASSWORD, default eventbank_<service>.
set -euo pipefail

services=(deposit account email interest compliance)

sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }

emit_sql() {
    # shellcheck disable=SC2016 # $$...$$ is SQL dollar quoting, not a shell expansion
    printf '%s\n' \
        '\set ON_ERROR_STOP on' \
        'SET client_min_messages = warning;' \
        '-- Serialise concurrent runs (two setups at once): session-level lock, released at exit.' \
        'SELECT pg_advisory_lock(hashtext($$eventbank-init$$)) \g /dev/null'
    local svc name var password
    for svc in "${services[@]}"; do
        name="eventbank_${svc}"
        var="EVENTBANK_${svc^^}_DB_PASSWORD"
        password="${!var:-$name}"
        cat <<SQL
-- ${svc}
SELECT format('CREATE ROLE %I LOGIN', '${name}')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${name}') \gexec
ALTER ROLE ${name} WITH LOGIN PASSWORD $(sql_literal "$password");
SELECT format('CREATE DATABASE %I OWNER %I', '${name}', '${name}')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${name}') \gexec
ALTER DATABASE ${name} OWNER TO ${name};
REVOKE CONNECT, TEMPORARY ON DATABASE ${name} FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE ${name} TO ${name};
SQL
    done
}

case "${1:-}" in
    --sql) emit_sql ;;
    "")
        # The postgres image's entrypoint runs this with POSTGRES_USER/POSTGRES_DB set and the
        # server listening on its socket only.
        emit_sql | psql -X -q -v ON_ERROR_STOP=1 \
            --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}"
        echo "init.sh: databases and roles ready: ${services[*]/#/eventbank_}"
        ;;
    *) echo "usage: $0 [--sql]" >&2; exit 2 ;;
esac
