#!/usr/bin/env bash
# Storage backends side by side: the same examples/pos workload on one server per backend,
# over real HTTP, in the same run.
#
#   bash scripts/bench-storage.sh
#   DURATION=20 TENANTS=100 bash scripts/bench-storage.sh
#   SERVER_ARGS="--js-isolates-per-worker 128" BACKENDS=sqlite bash scripts/bench-storage.sh
#
# Backends: sqlite (embedded, the default), postgres-direct (shared tier, a schema per
# tenant, direct connections), postgres-pgbouncer (shared tier through PgBouncer in
# transaction mode, started by scripts/pgbouncer.sh) and postgres-dedicated (a database per
# tenant). Each gets a fresh server and a fresh Postgres database; per backend:
#   hot      one tenant, PRODUCTS products: durable mutations (orders:create) with
#            CONNECTIONS closed loops
#   tenants  TENANTS tenants evenly loaded, the same mutations and connections: SQLite and
#            the shared tier through PgBouncer only. Without a pooler every active tenant
#            holds its own server connections, and 100 tenants exceed the default
#            max_connections (100): that is what the shared tier's pooler is for.
# Prints a table (throughput, p50, p99) and leaves the JSON in OUT (default
# ./target-bench/storage). Needs the local Postgres (127.0.0.1:5432, trust auth). Everything
# targets 127.0.0.1 and stops by itself.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
PRODUCTS="${PRODUCTS:-1000}"
TENANTS="${TENANTS:-100}"
TENANT_PRODUCTS="${TENANT_PRODUCTS:-20}"
PORT="${PORT:-3298}"
PG="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
OUT="${OUT:-$REPO_ROOT/target-bench/storage}"
BACKENDS="${BACKENDS:-sqlite postgres-direct postgres-pgbouncer postgres-dedicated}"

log "building release binaries"
ensure_libnode
cargo build --release -p nimbus -p nimbus-bench
NIMBUS="$CARGO_TARGET_DIR/release/nimbus"
BENCH="$CARGO_TARGET_DIR/release/nimbus-bench"
npm_ci "$REPO_ROOT/examples/pos"
need_cmd psql postgresql-client
# Server connections PgBouncer may open for all the tenants together (this restarts the
# PgBouncer of scripts/pgbouncer.sh: do not run the tests meanwhile).
PGBOUNCER_URL="$(PGBOUNCER_POOL_SIZE="${PGBOUNCER_POOL_SIZE:-20}" bash scripts/pgbouncer.sh)"

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log
WORK="$(mktemp -d)"
export NIMBUS_ADMIN_KEY="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BASE="http://127.0.0.1:$PORT"
SERVER=""
DB=""
stop_server() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi; }
drop_db() {
  [ -n "$DB" ] || return 0
  psql "$PG/postgres" -XAtq -c "SELECT datname FROM pg_database WHERE starts_with(datname, 'bench_')" |
    while read -r name; do psql "$PG/postgres" -XAtq -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)"; done
  psql "$PG/postgres" -XAtq -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" 2>/dev/null || true
  DB=""
}
cleanup() { stop_server; drop_db; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

# The CLI's push request, written once against a throwaway SQLite server and replayed by
# `nimbus-bench provision` to every tenant of every backend.
log "writing the push request with the official CLI"
start() { # start BACKEND_ARGS...
  RUST_LOG=warn "$NIMBUS" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data-$1" "${@:2}" \
    >>"$OUT/server.log" 2>&1 &
  SERVER=$!
  wait_healthy "$BASE" "$SERVER" 30 "$OUT/server.log"
}
start push
write_push_request "$BASE" "$WORK/push-request" "$OUT/push.log"
stop_server

for backend in $BACKENDS; do
  DB="bench_run_$$"
  args=()
  case "$backend" in
    sqlite) ;;
    postgres-direct) args=(--storage postgres-shared --postgres-url "$PG/$DB" --postgres-prefix bench_) ;;
    postgres-pgbouncer)
      args=(--storage postgres-shared --postgres-url "$PG/$DB" --postgres-prefix bench_
        --postgres-pooler-url "${PGBOUNCER_URL%/*}/$DB") ;;
    postgres-dedicated) args=(--storage postgres-dedicated --postgres-url "$PG/$DB" --postgres-prefix bench_) ;;
    *) die "unknown backend $backend" ;;
  esac
  log "$backend: one hot tenant, $PRODUCTS products"
  # shellcheck disable=SC2086 # SERVER_ARGS: more `nimbus serve` flags, split on spaces
  start "$backend" "${args[@]}" ${SERVER_ARGS:-}
  "$BENCH" provision --base "$BASE" --prefix hot --count 1 --push-request "$WORK/push-request.json" \
    --push-count 1 --products "$PRODUCTS" --out "$WORK/hot.json" >"$OUT/$backend-hot-provision.json"
  "$BENCH" http --warmup-secs "$WARMUP" --duration-secs "$DURATION" --targets "$WORK/hot.json" \
    --workload mutation --connections "$CONNECTIONS" --label "$backend hot mutations" >"$OUT/$backend-hot.json"
  case "$backend" in postgres-direct | postgres-dedicated) stop_server; drop_db; continue ;; esac
  log "$backend: $TENANTS tenants evenly loaded"
  "$BENCH" provision --base "$BASE" --prefix t --count "$TENANTS" --push-request "$WORK/push-request.json" \
    --push-count "$TENANTS" --products "$TENANT_PRODUCTS" --out "$WORK/tenants.json" >"$OUT/$backend-tenants-provision.json"
  "$BENCH" http --warmup-secs "$WARMUP" --duration-secs "$DURATION" --targets "$WORK/tenants.json" \
    --workload mutation --connections "$CONNECTIONS" --label "$backend $TENANTS tenants mutations" >"$OUT/$backend-tenants.json"
  stop_server
  drop_db
done

printf '\n| backend | hot mutations/s | p50 ms | p99 ms | %s tenants mutations/s | p50 ms | p99 ms | errors |\n' "$TENANTS"
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
for backend in $BACKENDS; do
  tenants="$OUT/$backend-tenants.json"
  [ -f "$tenants" ] || tenants=/dev/null
  jq -r -n --arg b "$backend" --slurpfile h "$OUT/$backend-hot.json" --slurpfile t "$tenants" '
    def row(r): if r == null then ["—", "—", "—"] else [r.throughput_per_sec, r.latency_ms.p50, r.latency_ms.p99] end;
    def errors(r): if r == null then 0 else (r.errors | add // 0) end;
    ([$b] + row($h[0]) + row($t[0]) + [errors($h[0]) + errors($t[0])])
    | "| " + (map(tostring) | join(" | ")) + " |"'
done
