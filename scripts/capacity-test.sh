#!/usr/bin/env bash
# The capacity runbook as a program: many shared-tier tenants on a Postgres cluster with a
# small max_connections, through PgBouncer in transaction mode, under load; prints a
# pass/fail checklist and exits non-zero on any failure.
#
#   bash scripts/capacity-test.sh                 # 200 tenants, 20 s of load
#   TENANTS=300 DURATION=60 bash scripts/capacity-test.sh
#
# It brings up its own throwaway cluster (initdb from the installed PostgreSQL binaries, run
# as the `postgres` user since initdb refuses root; loopback port PG_PORT, max_connections
# MAX_CONNECTIONS) and its own PgBouncer (scripts/pgbouncer.sh on PGBOUNCER_PORT,
# POOL_SIZE server connections, SERVER_IDLE_TIMEOUT), starts `nimbus serve --storage
# postgres` against them, creates TENANTS tenants with examples/pos (pushed by replaying the
# official CLI's push request, seeded), and drives durable mutations over all of them
# (CONNECTIONS closed loops, or open loop at RATE requests/s in all when RATE is set;
# DURATION seconds). Extra `nimbus serve` flags go in SERVER_ARGS. Client backends are sampled every 100 ms
# throughout (psql's \watch on a direct connection). Checks:
#   1. every tenant was created, pushed and seeded, and the load had zero errors (no
#      connection errors, no 503s);
#   2. client backends never exceeded max_connections minus the control reserve;
#   3. p95 latency of the load (reported) and GET /admin/capacity says ok;
#   4. after the load, the tenants' database has no backend within SERVER_IDLE_TIMEOUT + 5 s;
#   5. search_path isolation: each tenant's rows are in its own schema only (its seeded shop
#      name is there, no other tenant's is), and no tables outside the tenants' schemas;
#   6. no server connection of the pool has a non-default search_path, and no advisory
#      lock is held;
#   7. faults (FAULTS=1, the default): one-document durable inserts over every tenant for
#      FAULT_DURATION seconds while PgBouncer is restarted and then Postgres is restarted
#      (`pg_ctl restart -m fast`); requests fail only with retryable statuses (503, 429),
#      every acknowledged insert is in Postgres afterwards, and after the outage (and the
#      tenants' storage backoff, at most 5 s) inserts succeed with no error and no restart
#      of Nimbus.
# Everything listens on 127.0.0.1 and is stopped and removed on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

TENANTS="${TENANTS:-200}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-50}"
POOL_SIZE="${POOL_SIZE:-20}"
SERVER_IDLE_TIMEOUT="${SERVER_IDLE_TIMEOUT:-10}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
RATE="${RATE:-}" # requests/s in all: open loop (nimbus-bench http --rate); empty: closed loops
PG_PORT="${PG_PORT:-5499}"
PGBOUNCER_PORT="${PGBOUNCER_PORT:-6499}"
PORT="${PORT:-3297}"
FAULTS="${FAULTS:-1}"
FAULT_DURATION="${FAULT_DURATION:-16}"
OUT="${OUT:-$REPO_ROOT/target-bench/capacity}"
CONTROL_RESERVE=2 # nimbus-app/src/capacity.rs
DB=nimbus
PREFIX=nimbus_

PG_BIN="$(dirname "$(readlink -f "$(command -v initdb || echo /usr/lib/postgresql/15/bin/initdb)")")"
[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || die "PostgreSQL server binaries not found (Debian package postgresql)"
need_cmd psql postgresql-client
need_cmd jq jq
id postgres >/dev/null 2>&1 || die "needs a postgres user to run the throwaway cluster as"
AS_POSTGRES=()
[ "$(id -u)" -ne 0 ] || AS_POSTGRES=(runuser -u postgres --)

log "building release binaries"
ensure_libnode
cargo build --release -p nimbus -p nimbus-bench
NIMBUS="$CARGO_TARGET_DIR/release/nimbus"
BENCH="$CARGO_TARGET_DIR/release/nimbus-bench"
npm_ci "$REPO_ROOT/examples/pos"

mkdir -p "$OUT"
rm -f "$OUT"/*
WORK="$(mktemp -d /tmp/nimbus-capacity-XXXXXX)"
chmod 755 "$WORK"
CLUSTER="$WORK/cluster"
SERVER=""
SAMPLER=""
cleanup() {
  cp "$WORK/pgbouncer/pgbouncer.log" "$OUT/" 2>/dev/null || true
  [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [ -f "$WORK/pgbouncer/pgbouncer.pid" ]; then kill "$(cat "$WORK/pgbouncer/pgbouncer.pid")" 2>/dev/null || true; fi
  [ ! -d "$CLUSTER" ] || "${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log "throwaway cluster on 127.0.0.1:$PG_PORT, max_connections=$MAX_CONNECTIONS"
mkdir -p "$CLUSTER" && chown postgres "$CLUSTER" 2>/dev/null || true
"${AS_POSTGRES[@]}" "$PG_BIN/initdb" -D "$CLUSTER" -U postgres --auth=trust -E UTF8 >"$OUT/initdb.log" 2>&1 ||
  { cat "$OUT/initdb.log"; die "initdb failed"; }
"${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER" -w -l "$CLUSTER/server.log" \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$CLUSTER -c max_connections=$MAX_CONNECTIONS" \
  start >/dev/null || { cat "$CLUSTER/server.log"; die "the throwaway cluster did not start"; }
DIRECT="postgres://postgres@127.0.0.1:$PG_PORT"
psql "$DIRECT/postgres" -XAtq -c "CREATE DATABASE $DB"

log "PgBouncer on 127.0.0.1:$PGBOUNCER_PORT: transaction mode, $POOL_SIZE server connections, server_idle_timeout $SERVER_IDLE_TIMEOUT s"
PGBOUNCER_DIR="$WORK/pgbouncer" PGBOUNCER_PORT="$PGBOUNCER_PORT" POSTGRES_PORT="$PG_PORT" \
  PGBOUNCER_POOL_SIZE="$POOL_SIZE" PGBOUNCER_SERVER_IDLE_TIMEOUT="$SERVER_IDLE_TIMEOUT" \
  bash scripts/pgbouncer.sh >/dev/null
POOLED="postgres://postgres@127.0.0.1:$PGBOUNCER_PORT"

# Every 100 ms: all client backends, and those of the tenants' database. Its own session
# is in database `postgres`, so it counts in the first number only.
cat >"$WORK/sample.sql" <<SQL
SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, count(*),
       count(*) FILTER (WHERE datname = '$DB')
FROM pg_stat_activity WHERE backend_type = 'client backend' \watch 0.1
SQL
psql "$DIRECT/postgres" -XAtq -F ' ' -f "$WORK/sample.sql" >"$OUT/backends.txt" 2>"$OUT/sampler.log" &
SAMPLER=$!

export NIMBUS_ADMIN_KEY="capacity-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BASE="http://127.0.0.1:$PORT"
RUST_LOG=warn "$NIMBUS" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/nimbus" \
  --storage postgres --postgres-url "$DIRECT/$DB" --postgres-pooler-url "$POOLED/$DB" \
  --postgres-prefix "$PREFIX" --max-active-tenants "$((TENANTS + 10))" ${SERVER_ARGS:-} >"$OUT/server.log" 2>&1 &
SERVER=$!
wait_healthy "$BASE" "$SERVER" 30 "$OUT/server.log"

log "writing the push request with the official CLI"
write_push_request "$BASE" "$WORK/push-request" "$OUT/push.log"

log "creating $TENANTS shared-tier tenants with examples/pos"
provisioned=0
if "$BENCH" provision --base "$BASE" --prefix t --count "$TENANTS" --push-request "$WORK/push-request.json" \
  --push-count "$TENANTS" --products 5 --open-orders 2 --out "$WORK/targets.json" >"$OUT/provision.json"; then
  provisioned=1
fi

LOAD_FROM=$(( $(date +%s%3N) ))
log "load: durable mutations over $TENANTS tenants, $CONNECTIONS connections, ${DURATION}s"
loaded=0
if [ "$provisioned" -eq 1 ] && "$BENCH" http --warmup-secs "$WARMUP" --duration-secs "$DURATION" \
  --targets "$WORK/targets.json" --workload mutation --connections "$CONNECTIONS" \
  ${RATE:+--rate "$RATE"} --label "capacity: $TENANTS tenants" >"$OUT/load.json"; then
  loaded=1
fi
curl -fsS "$BASE/admin/capacity" -H "authorization: Bearer $NIMBUS_ADMIN_KEY" >"$OUT/capacity.json" || echo '{}' >"$OUT/capacity.json"
curl -fsS "$BASE/metrics" -H "authorization: Bearer $NIMBUS_ADMIN_KEY" | grep -v '^nimbus_tenant\|^nimbus_request' >"$OUT/metrics.txt" || true
LOAD_UNTIL=$(( $(date +%s%3N) ))

log "waiting for the pool's backends to go (server_idle_timeout $SERVER_IDLE_TIMEOUT s + 5 s)"
idle_deadline=$((SECONDS + SERVER_IDLE_TIMEOUT + 5))
idle_after=""
while [ "$SECONDS" -le "$idle_deadline" ]; do
  left="$(psql "$DIRECT/postgres" -XAtq -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = '$DB'")"
  if [ "$left" -eq 0 ]; then idle_after=$((SECONDS - idle_deadline + SERVER_IDLE_TIMEOUT + 5)); break; fi
  sleep 0.5
done
kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""

# search_path isolation: each tenant's shop name only in its own schema.
tenant_names="$(jq -r '.targets[].name // empty' "$WORK/targets.json" 2>/dev/null || true)"
[ -n "$tenant_names" ] || tenant_names="$(seq -f 't%03g' 0 $((TENANTS - 1)))"
{
  first=1
  for t in $tenant_names; do
    [ "$first" -eq 1 ] || echo "UNION ALL"
    first=0
    echo "SELECT '$t', count(*) FILTER (WHERE convert_from(body, 'UTF8') LIKE '%\"Shop of $t\"%'),"
    echo "  count(*) FILTER (WHERE convert_from(body, 'UTF8') LIKE '%\"Shop of %' AND convert_from(body, 'UTF8') NOT LIKE '%\"Shop of $t\"%')"
    echo "FROM \"$PREFIX$t\".documents"
  done
  echo ";"
} >"$WORK/isolation.sql"
psql "$DIRECT/$DB" -XAtq -F ' ' -f "$WORK/isolation.sql" >"$OUT/isolation.txt" 2>&1 || true
own_missing="$(awk '$2 < 1' "$OUT/isolation.txt" | wc -l)"
foreign="$(awk '$3 > 0' "$OUT/isolation.txt" | wc -l)"
checked="$(grep -c '^t' "$OUT/isolation.txt" || true)"
stray_tables="$(psql "$DIRECT/$DB" -XAtq -c "SELECT count(*) FROM pg_tables WHERE schemaname NOT LIKE '${PREFIX}%' AND schemaname NOT IN ('pg_catalog', 'information_schema')")"

# Every server connection of the pool, held at once (each client keeps its transaction
# open for a second): its search_path must be the default.
holders=()
for i in $(seq "$POOL_SIZE"); do
  psql "$POOLED/$DB" -XAtq -F ' ' -c "BEGIN; SELECT pg_backend_pid(), current_setting('search_path'); SELECT pg_sleep(1); COMMIT;" \
    >"$WORK/path-$i.txt" 2>&1 &
  holders+=($!)
done
wait "${holders[@]}" || true
cat "$WORK"/path-*.txt | grep -E '^[0-9]+ ' >"$OUT/search-paths.txt" || true
server_conns="$(cut -d' ' -f1 "$OUT/search-paths.txt" | sort -u | wc -l)"
odd_paths="$(grep -cv ' "\$user", public$' "$OUT/search-paths.txt" || true)"
advisory="$(psql "$DIRECT/postgres" -XAtq -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")"

# Faults: PgBouncer, then Postgres, restarted under inserts.
documents() { # the documents of every tenant schema, summed
  {
    echo "SELECT sum(n) FROM ("
    first=1
    for t in $tenant_names; do
      [ "$first" -eq 1 ] || echo "UNION ALL"
      first=0
      echo "SELECT count(*) AS n FROM \"$PREFIX$t\".documents"
    done
    echo ") counts;"
  } >"$WORK/documents.sql"
  psql "$DIRECT/$DB" -XAtq -f "$WORK/documents.sql"
}
fault_kinds="n/a"; fault_ok=0; fault_lost="n/a"; recovered_ok=0; fault_accepted=0; recovery_accepted=0
if [ "$FAULTS" = 1 ] && [ "$provisioned" -eq 1 ]; then
  log "faults: inserts for ${FAULT_DURATION}s; PgBouncer restarted at 4 s, Postgres at $((FAULT_DURATION / 2 + 2)) s"
  before="$(documents)"
  "$BENCH" http --warmup-secs 0 --duration-secs "$FAULT_DURATION" --targets "$WORK/targets.json" \
    --workload insert --connections "$CONNECTIONS" --label "inserts under faults" >"$OUT/faults.json" &
  load_pid=$!
  sleep 4
  info "restarting PgBouncer"
  PGBOUNCER_DIR="$WORK/pgbouncer" PGBOUNCER_PORT="$PGBOUNCER_PORT" POSTGRES_PORT="$PG_PORT" \
    PGBOUNCER_POOL_SIZE="$POOL_SIZE" PGBOUNCER_SERVER_IDLE_TIMEOUT="$SERVER_IDLE_TIMEOUT" \
    bash scripts/pgbouncer.sh >/dev/null
  sleep $((FAULT_DURATION / 2 - 2))
  info "restarting Postgres"
  "${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER" -m fast -w restart -l "$CLUSTER/server.log" \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$CLUSTER -c max_connections=$MAX_CONNECTIONS" >/dev/null
  wait "$load_pid" || true
  # The tenants whose writes failed reopen their storage with a backoff of at most 5 s.
  sleep 6
  "$BENCH" http --warmup-secs 0 --duration-secs 5 --targets "$WORK/targets.json" \
    --workload insert --connections "$CONNECTIONS" --label "inserts after the faults" >"$OUT/recovered.json" || true
  after="$(documents)"
  fault_accepted="$(jq '.accepted.count // 0' "$OUT/faults.json")"
  recovery_accepted="$(jq '.accepted.count // 0' "$OUT/recovered.json")"
  fault_kinds="$(jq -c '.errors // {}' "$OUT/faults.json")"
  # Only retryable answers while the pooler or the server was down.
  fault_ok="$(jq '[(.errors // {}) | keys[] | select(. != "http-503" and . != "http-429")] | length == 0' "$OUT/faults.json" | grep -c true || true)"
  fault_lost=$((fault_accepted + recovery_accepted - (after - before)))
  recovered_ok="$(jq '((.errors // {}) | add // 0) == 0 and .accepted.count > 0' "$OUT/recovered.json" | grep -c true || true)"
fi

# The numbers.
budget=$((MAX_CONNECTIONS - CONTROL_RESERVE))
samples="$(wc -l <"$OUT/backends.txt")"
max_all="$(awk 'NF == 3 { if ($2 > m) m = $2 } END { print m + 0 }' "$OUT/backends.txt")"
max_db="$(awk 'NF == 3 { if ($3 > m) m = $3 } END { print m + 0 }' "$OUT/backends.txt")"
max_load="$(awk -v a="$LOAD_FROM" -v b="$LOAD_UNTIL" 'NF == 3 && $1 >= a && $1 <= b { if ($2 > m) m = $2 } END { print m + 0 }' "$OUT/backends.txt")"
errors="$(jq '[.errors[]?] | add // 0' "$OUT/load.json" 2>/dev/null || echo 1)"
throughput="$(jq '.throughput_per_sec // 0' "$OUT/load.json" 2>/dev/null || echo 0)"
p95="$(jq '.latency_ms.p95 // "n/a"' "$OUT/load.json" 2>/dev/null || echo n/a)"
p99="$(jq '.latency_ms.p99 // "n/a"' "$OUT/load.json" 2>/dev/null || echo n/a)"
capacity_ok="$(jq '.servers[0].ok // false' "$OUT/capacity.json")"
active_shared="$(jq '.servers[0].tenants.shared.active // 0' "$OUT/capacity.json")"

failed=0
check() { # check OK DESCRIPTION
  if [ "$1" = 1 ]; then printf '%s\n' "${C_GREEN}PASS${C_OFF} $2"; else printf '%s\n' "${C_RED}FAIL${C_OFF} $2"; failed=1; fi
}
yes() { if eval "$1"; then echo 1; else echo 0; fi; }
echo
log "capacity checklist: $TENANTS shared-tier tenants, max_connections $MAX_CONNECTIONS, PgBouncer pool $POOL_SIZE"
check "$provisioned" "created, pushed and seeded $TENANTS tenants ($OUT/provision.json)"
check "$(yes "[ $loaded = 1 ] && [ $errors = 0 ]")" "load without errors: $errors errors, $throughput mutations/s, p95 $p95 ms, p99 $p99 ms"
check "$(yes "[ $active_shared -ge $TENANTS ]")" "$active_shared shared-tier tenants active at the end of the load"
check "$(yes "[ $samples -gt 10 ] && [ $max_all -le $budget ]")" "client backends stayed within max_connections - $CONTROL_RESERVE = $budget: max $max_all (tenants' database $max_db, during the load $max_load) over $samples samples every 100 ms"
check "$(yes "[ '$capacity_ok' = true ]")" "GET /admin/capacity: ok ($OUT/capacity.json)"
check "$(yes "[ -n '$idle_after' ]")" "the tenants' database had no backend ${idle_after:+$idle_after s }after the load (bound: server_idle_timeout $SERVER_IDLE_TIMEOUT s + 5 s)"
check "$(yes "[ $checked -eq $TENANTS ] && [ $own_missing = 0 ] && [ $foreign = 0 ] && [ $stray_tables = 0 ]")" "search_path isolation: $checked schemas checked, $own_missing without their own rows, $foreign with another tenant's, $stray_tables tables outside tenant schemas"
check "$(yes "[ $server_conns -ge 1 ] && [ $odd_paths = 0 ]")" "$server_conns server connections of the pool held at once: $odd_paths with a non-default search_path"
check "$(yes "[ $advisory = 0 ]")" "advisory locks held after the run: $advisory"
if [ "$FAULTS" = 1 ]; then
  check "$fault_ok" "PgBouncer and Postgres restarted under inserts: only retryable errors ($fault_kinds), $fault_accepted inserts acknowledged"
  check "$(yes "[ '$fault_lost' != n/a ] && [ $fault_lost -le 0 ]")" "every acknowledged insert is in Postgres ($((fault_accepted + recovery_accepted)) acknowledged, $((fault_accepted + recovery_accepted - fault_lost)) new documents)"
  check "$recovered_ok" "after the outage, inserts succeed with no error and no restart of Nimbus ($recovery_accepted in 5 s, $OUT/recovered.json)"
fi
jq -n --argjson tenants "$TENANTS" --argjson max_connections "$MAX_CONNECTIONS" --argjson pool "$POOL_SIZE" \
  --argjson max_backends "$max_all" --argjson samples "$samples" --argjson errors "$errors" \
  --argjson throughput "$throughput" --argjson p95 "$p95" --argjson p99 "$p99" --argjson passed "$((1 - failed))" \
  '{kind: "capacity", tenants: $tenants, max_connections: $max_connections, pgbouncer_pool: $pool,
    max_client_backends: $max_backends, samples: $samples, errors: $errors,
    throughput_per_sec: $throughput, p95_ms: $p95, p99_ms: $p99, passed: ($passed == 1)}' >"$OUT/summary.json"
[ "$failed" -eq 0 ] || die "capacity test failed (details in $OUT)"
ok "capacity test passed"
