# Shared helpers for the scripts in .ci/. Source it; it defines functions and
# a few variables and runs nothing else.
#
#   PGINV_CI_STATE  where images and the private engine's data live between
#                   runs (default /var/lib/pg-invalidator-ci). Outside the clone,
#                   so that a second run on the same machine reuses them.

export PATH="/usr/local/go/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

PGINV_CI_STATE="${PGINV_CI_STATE:-/var/lib/pg-invalidator-ci}"
# Every container a script or the test harness starts carries this label, so
# that whatever a crash leaves behind is found and removed by it.
PGINV_CI_LABEL="pg-invalidator.testenv"

# The docker.io package's own CLI matches its engine (20.10). A newer CLI
# elsewhere on PATH may lack the BuildKit plugin and so refuse to build.
if [ -z "${DOCKER:-}" ]; then
	if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi

ci_log() { echo "ci: $*" >&2; }
ci_die() { echo "ci: $*" >&2; exit 1; }

# ci_time LABEL COMMAND...: runs COMMAND and logs how long it took.
ci_time() {
	local label=$1 start rc=0
	shift
	start=$(date +%s)
	"$@" || rc=$?
	ci_log "$label took $(($(date +%s) - start))s (exit $rc)"
	return "$rc"
}

# ci_install PACKAGE=PATH-GLOB...: installs with apt each Debian package whose
# glob matches nothing. Services that a package would start stay stopped: the
# scripts start what they need themselves, on private sockets and ports.
ci_install() {
	local missing=() arg pkg glob
	for arg in "$@"; do
		pkg=${arg%%=*} glob=${arg#*=}
		compgen -G "$glob" >/dev/null || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	[ "$(id -u)" = 0 ] || ci_die "missing ${missing[*]}; install them as root (apt-get install ${missing[*]})"
	ci_log "installing ${missing[*]}"
	local policy=/usr/sbin/policy-rc.d made_policy=
	if [ ! -e "$policy" ]; then
		# Exit 101 tells invoke-rc.d not to start the service (dockerd, above all).
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
	fi
	local rc=0
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
	[ -z "$made_policy" ] || rm -f "$policy"
	[ "$rc" = 0 ] || ci_die "apt-get install ${missing[*]} failed"
}

# ci_hash FILE...: a short hash of the files' contents, for image tags that
# change when the recipe changes.
ci_hash() {
	cat "$@" | sha256sum | cut -c1-12
}

# ci_image_exists NAME:TAG
ci_image_exists() {
	"$DOCKER" image inspect "$1" >/dev/null 2>&1
}

# ci_drop_other_tags REPOSITORY KEEP-TAG [PREFIX]: removes the repository's images of
# older recipes, so that the state directory does not grow run after run.
# With PREFIX, only the tags that start with it go (one suite's, of several).
ci_drop_other_tags() {
	local ref
	for ref in $("$DOCKER" image ls "$1" --format '{{.Repository}}:{{.Tag}}'); do
		[ "$ref" = "$1:$2" ] || [[ "${ref#"$1":}" != "${3:-}"* ]] || "$DOCKER" image rm "$ref" >/dev/null 2>&1 || true
	done
}

# ci_free_port: a TCP port on 127.0.0.1 that nothing answers on right now.
# It picks below the kernel's ephemeral range: a port in that range can be
# taken as the local end of an outgoing connection (a client's, or the
# daemon's own to PostgreSQL) between this check and the server's bind, which
# once failed smoke-image with "bind: address already in use".
ci_free_port() {
	local p low=32768
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
	[ "$low" -gt 11000 ] || ci_die "the ephemeral port range starts at $low; ci_free_port wants room below it"
	for p in $(shuf -i "10000-$((low - 1))" -n 100); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	ci_die "no free port found on 127.0.0.1"
}

# ci_wait SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, at most
# SECONDS long; fails naming WHAT.
ci_wait() {
	local secs=$1 what=$2 deadline
	shift 2
	deadline=$(($(date +%s) + secs))
	until "$@" >/dev/null 2>&1; do
		if (($(date +%s) >= deadline)); then
			ci_log "$what: not within ${secs}s"
			return 1
		fi
		sleep 0.2
	done
}

# The container command that runs PostgreSQL from the test image as the
# postgres user: initdb, then the server on 127.0.0.1:$1 with wal_level=logical.
ci_postgres_cmd() {
	printf '%s' 'set -e
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$bin/initdb" -D /tmp/pgdata -A trust -U postgres --no-sync --locale=C -E UTF8 >/dev/null
exec "$bin/postgres" -D /tmp/pgdata -c port='"$1"' -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c wal_level=logical -c fsync=off'
}
