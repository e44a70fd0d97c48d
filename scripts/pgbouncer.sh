#!/usr/bin/env bash
# Starts a PgBouncer in transaction mode in front of the local Postgres, for the Postgres
# backend's tests (the shared tier as deployed). Installs Debian's `pgbouncer` when missing.
# Prints the URL to reach it through (the `nimbus_conformance` database); a PgBouncer this
# script started earlier is stopped first, so the configuration is always this one.
#
# Environment:
#   PGBOUNCER_PORT       loopback port to listen on (default 6439; Debian's own service, if
#                        it runs, keeps 6432)
#   PGBOUNCER_DIR        configuration, pid and log directory (default /tmp/nimbus-pgbouncer)
#   POSTGRES_HOST/PORT   the server behind it (default 127.0.0.1:5432, trust auth)
#   PGBOUNCER_POOL_SIZE  server connections per database and user (default 4: small, so
#                        transactions of different clients share server connections)
#   PGBOUNCER_SERVER_IDLE_TIMEOUT  seconds an unused server connection is kept (default 10)
#   PGBOUNCER_MAX_CLIENT_CONN  client connections it accepts (default 10000: every active
#                        tenant keeps up to --postgres-connections-per-tenant open). Its
#                        file descriptor limit is raised to fit (runuser's session would
#                        leave it at 1024, and a PgBouncer out of descriptors can neither
#                        accept clients nor reach Postgres).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${PGBOUNCER_PORT:-6439}"
DIR="${PGBOUNCER_DIR:-/tmp/nimbus-pgbouncer}"
PG_HOST="${POSTGRES_HOST:-127.0.0.1}"
PG_PORT="${POSTGRES_PORT:-5432}"
POOL_SIZE="${PGBOUNCER_POOL_SIZE:-4}"
SERVER_IDLE_TIMEOUT="${PGBOUNCER_SERVER_IDLE_TIMEOUT:-10}"
MAX_CLIENT_CONN="${PGBOUNCER_MAX_CLIENT_CONN:-10000}"
# Descriptors: every client, every server connection, and some to spare.
HARD_NOFILE="$(ulimit -Hn)"
NOFILE=$((MAX_CLIENT_CONN + 1024))
if [ "$HARD_NOFILE" != unlimited ] && [ "$NOFILE" -gt "$HARD_NOFILE" ]; then
  NOFILE="$HARD_NOFILE"
  MAX_CLIENT_CONN=$((HARD_NOFILE - 1024))
  [ "$MAX_CLIENT_CONN" -gt 100 ] || die "the file descriptor limit ($HARD_NOFILE) is too low for pgbouncer"
  info "max_client_conn lowered to $MAX_CLIENT_CONN to fit the file descriptor limit $HARD_NOFILE" >&2
fi

PGBOUNCER="$(command -v pgbouncer || true)"
[ -n "$PGBOUNCER" ] || [ ! -x /usr/sbin/pgbouncer ] || PGBOUNCER=/usr/sbin/pgbouncer
if [ -z "$PGBOUNCER" ]; then
  info "pgbouncer not found: installing Debian package pgbouncer" >&2
  apt_install pgbouncer >&2
  PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
fi
[ -x "$PGBOUNCER" ] || die "pgbouncer missing after installing it"

# PgBouncer refuses to run as root; run it as the postgres user when we are root.
RUN_AS=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a postgres user to run pgbouncer as"
  RUN_AS=(runuser -u postgres --)
fi

mkdir -p "$DIR"
OLD_PID="$(cat "$DIR/pgbouncer.pid" 2>/dev/null || true)"
if [ -n "$OLD_PID" ] && kill -0 "$OLD_PID" 2>/dev/null; then
  kill "$OLD_PID"
  for _ in $(seq 50); do kill -0 "$OLD_PID" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$DIR/pgbouncer.pid"

# Trust auth needs the user names in auth_file; passwords are not checked.
cat > "$DIR/userlist.txt" <<USERS
"postgres" ""
"root" ""
USERS
cat > "$DIR/pgbouncer.ini" <<INI
[databases]
* = host=$PG_HOST port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $MAX_CLIENT_CONN
server_idle_timeout = $SERVER_IDLE_TIMEOUT
; After a failed server login (Postgres restarting), retry in 1 s, not the default 15 s
; during which every client of the pool waits.
server_login_retry = 1
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
admin_users = postgres
stats_users = postgres
INI
chown -R postgres "$DIR" 2>/dev/null || true

# The limit is set in the shell that becomes pgbouncer, after runuser's session has set its own.
"${RUN_AS[@]}" bash -c 'ulimit -n "$1" && exec "$2" -d "$3"' pgbouncer "$NOFILE" "$PGBOUNCER" "$DIR/pgbouncer.ini" >&2
PID="$(cat "$DIR/pgbouncer.pid" 2>/dev/null || true)"
if [ -n "$PID" ] && [ -r "/proc/$PID/limits" ]; then
  grep -q "Max open files *$NOFILE " "/proc/$PID/limits" ||
    die "pgbouncer runs with a lower file descriptor limit than $NOFILE: $(grep 'Max open files' "/proc/$PID/limits")"
fi
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "postgres://postgres@127.0.0.1:$PORT/nimbus_conformance"
    exit 0
  fi
  sleep 0.1
done
tail -20 "$DIR/pgbouncer.log" >&2 || true
die "pgbouncer did not start listening on 127.0.0.1:$PORT"
