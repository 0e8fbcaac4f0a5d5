#!/bin/sh
# deploy/ci/postgres-entrypoint.sh: the part of the official postgres image's
# entrypoint that docker-compose.yml relies on, for CI's local test image,
# which has the PostgreSQL binaries but no entrypoint (deploy/ci/docker-compose.ci.yml).
#
# On an empty data directory it runs initdb (password authentication over TCP
# with $POSTGRES_PASSWORD, trust on the Unix socket), then every
# /docker-entrypoint-initdb.d/*.sql in name order with psql against a server
# that listens on no TCP port. Then it runs the server in the foreground on
# 127.0.0.1:$PGPORT with the arguments compose passes ("postgres -c ...").
# Started as root, it makes the data directory the postgres user's and runs
# everything else as that user.
set -eu

: "${PGPORT:?set PGPORT: the container shares the host network, so the port must be a free one}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
sockets=/tmp/pginv-ci-postgres
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" "$sockets"
	chown postgres:postgres "$PGDATA" "$sockets"
	chmod 700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

# compose's command is the official image's: "postgres" and its flags.
if [ "${1:-}" = postgres ]; then
	shift
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	"$bin/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" \
		--auth-local=trust --auth-host=scram-sha-256 --locale=C -E UTF8 >/dev/null
	rm -f "$pwfile"
	"$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$sockets" start >/dev/null
	for f in /docker-entrypoint-initdb.d/*.sql; do
		[ -e "$f" ] || continue
		echo "postgres-entrypoint: running $f"
		psql -h "$sockets" -U postgres -d postgres -v ON_ERROR_STOP=1 -q -f "$f"
	done
	"$bin/pg_ctl" -D "$PGDATA" -w -m fast stop >/dev/null
fi

exec "$bin/postgres" -D "$PGDATA" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$sockets" "$@"
