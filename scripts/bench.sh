#!/usr/bin/env bash
# Benchmarks for one tenant over HTTP, beside raw rusqlite doing the same durable work in
# the same run, and rewrites the results section of BENCHMARKS.md.
#
#   bash scripts/bench.sh            # 10 s per run, 64 connections
#   DURATION=30 CONNECTIONS=64 bash scripts/bench.sh
#   SMOKE=1 bash scripts/bench.sh    # CI: a few seconds, checks every request succeeded,
#                                    # never speed; does not touch BENCHMARKS.md
#
# It builds release binaries, starts `nimbus serve` on 127.0.0.1 with a temporary data
# dir, creates tenant `bench`, pushes examples/pos with the official CLI, seeds a shop and
# a product (with stock for every order), runs `nimbus-bench http` for durable mutations
# (`orders:create`) and indexed queries (`orders:listOpen`, 10 rows through the composite
# index), then `nimbus-bench sqlite`. Everything targets 127.0.0.1 and stops by itself.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

if [ -n "${SMOKE:-}" ]; then
  DURATION=2; CONNECTIONS=4; PRODUCTS=20
fi
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
OUT="${OUT:-$REPO_ROOT/target-bench}"
mkdir -p "$OUT"

log "building release binaries"
cargo build --release -p nimbus -p nimbus-bench
NIMBUS="$CARGO_TARGET_DIR/release/nimbus"
BENCH="$CARGO_TARGET_DIR/release/nimbus-bench"
npm_ci "$REPO_ROOT/examples/pos"

DATA="$(mktemp -d)"
PORT="${PORT:-3299}"
export NIMBUS_ADMIN_KEY="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER=""
start_server() { # start_server EXTRA_ARGS...
  RUST_LOG=warn "$NIMBUS" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" "$@" >>"$OUT/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return; sleep 0.1; done
  die "nimbus did not become healthy (see $OUT/server.log)"
}
stop_server() { [ -n "$SERVER" ] && { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; }; }
cleanup() { stop_server; rm -rf "$DATA"; }
trap cleanup EXIT INT TERM
: >"$OUT/server.log"
start_server

BASE="http://127.0.0.1:$PORT"
created="$(curl -fsS -X POST "$BASE/admin/tenants" -H "authorization: Bearer $NIMBUS_ADMIN_KEY" \
  -H 'content-type: application/json' -d '{"name":"bench"}')"
URL="$(node -p 'JSON.parse(process.argv[1]).url' "$created")"
KEY="$(node -p 'JSON.parse(process.argv[1]).adminKey' "$created")"
log "pushing examples/pos to $URL"
(cd examples/pos && env -u CONVEX_DEPLOYMENT CONVEX_SELF_HOSTED_URL="$URL" CONVEX_SELF_HOSTED_ADMIN_KEY="$KEY" \
  node node_modules/convex/bin/main.js deploy --yes --typecheck disable >"$OUT/push.log" 2>&1) || { cat "$OUT/push.log"; die "push failed"; }

call() { # call KIND PATH ARGS_JSON -> value (convex-JSON)
  curl -fsS -X POST "$URL/api/$1" -H 'content-type: application/json' \
    -d "{\"path\":\"$2\",\"format\":\"convex_encoded_json\",\"args\":[$3]}" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);if(r.status!=="success"){console.error(r);process.exit(1)}console.log(typeof r.value==="string"?r.value:JSON.stringify(r.value))})'
}
SHOP="$(call mutation shops:create '{"name":"Bench shop"}')"
PRODUCTS="${PRODUCTS:-1000}"
log "seeding $PRODUCTS products"
PRODUCT_IDS="$(node - "$URL" "$SHOP" "$PRODUCTS" <<'JS'
const [url, shop, n] = process.argv.slice(2);
(async () => {
  const ids = [];
  for (let i = 0; i < Number(n); i++) {
    const r = await fetch(`${url}/api/mutation`, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ path: "products:add", format: "convex_encoded_json",
        args: [{ shopId: shop, name: `Product ${i}`, sku: `SKU-${i}`, priceCents: 100 + i, stock: 1e9 }] }) });
    const v = await r.json();
    if (v.status !== "success") throw new Error(JSON.stringify(v));
    ids.push(v.value);
  }
  console.log(ids.join(","));
})().catch((e) => { console.error(e); process.exit(1); });
JS
)"
PRODUCT="${PRODUCT_IDS%%,*}"
# A backlog of open orders so the query reads a full page of 10.
for _ in $(seq 1 20); do call mutation orders:create "{\"shopId\":\"$SHOP\",\"items\":[{\"productId\":\"$PRODUCT\",\"qty\":1}]}" >/dev/null; done

STATS_BEFORE="$(curl -fsS "$BASE/admin/tenants/bench/stats" -H "authorization: Bearer $NIMBUS_ADMIN_KEY")"
log "durable mutations: $CONNECTIONS connections, ${DURATION}s, orders spread over $PRODUCTS products"
"$BENCH" http --url "$URL" --workload mutation --shop "$SHOP" --product "$PRODUCT_IDS" \
  --connections "$CONNECTIONS" --duration-secs "$DURATION" >"$OUT/mutation.json"
curl -fsS "$BASE/admin/tenants/bench/stats" -H "authorization: Bearer $NIMBUS_ADMIN_KEY" >"$OUT/stats-after-mutations.json"
echo "$STATS_BEFORE" >"$OUT/stats-before-mutations.json"
log "indexed queries (query cache on): $CONNECTIONS connections, ${DURATION}s"
"$BENCH" http --url "$URL" --workload query --shop "$SHOP" --product "$PRODUCT" \
  --connections "$CONNECTIONS" --duration-secs "$DURATION" >"$OUT/query.json"
log "indexed queries (query cache off: every call runs the function): $CONNECTIONS connections, ${DURATION}s"
stop_server
start_server --query-cache-entries 0
"$BENCH" http --url "$URL" --workload query --shop "$SHOP" --product "$PRODUCT" \
  --connections "$CONNECTIONS" --duration-secs "$DURATION" >"$OUT/query-uncached.json"
cleanup
trap - EXIT INT TERM
log "rusqlite baseline"
"$BENCH" sqlite --duration-secs "$(( DURATION / 2 > 1 ? DURATION / 2 : 1 ))" --group "$CONNECTIONS" >"$OUT/sqlite.json" 2>>"$OUT/sqlite.log"

if [ -n "${SMOKE:-}" ]; then
  node - "$OUT" <<'JS'
const fs = require("fs"); const path = require("path");
let failed = false;
for (const f of ["mutation.json", "query.json", "query-uncached.json"]) {
  const r = JSON.parse(fs.readFileSync(path.join(process.argv[2], f), "utf8"));
  const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
  console.log(`${f}: ${r.requests} requests, ${errors} errors`);
  if (r.requests === 0 || errors > 0) failed = true;
}
const s = JSON.parse(fs.readFileSync(path.join(process.argv[2], "sqlite.json"), "utf8"));
if (s.indexed_reads.requests === 0) failed = true;
if (failed) { console.error("bench smoke: a run had errors or no requests"); process.exit(1); }
JS
  ok "bench smoke passed (every request succeeded)"
  exit 0
fi

node - "$OUT" "$CONNECTIONS" "$DURATION" <<'JS'
const fs = require("fs"); const os = require("os"); const path = require("path");
const [out, connections, duration] = process.argv.slice(2);
const read = (f) => JSON.parse(fs.readFileSync(path.join(out, f), "utf8"));
const m = read("mutation.json"), q = read("query.json"), u = read("query-uncached.json"), s = read("sqlite.json");
const before = read("stats-before-mutations.json"), after = read("stats-after-mutations.json");
const commits = after.commits - before.commits, batches = after.commitBatches - before.commitBatches;
const conflicts = after.conflicts - before.conflicts;
const cpu = (fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/) || [])[1] || "unknown CPU";
const lat = (r) => `${r.latency_ms.p50} / ${r.latency_ms.p95} / ${r.latency_ms.p99} / ${r.latency_ms.max}`;
const errs = (r) => Object.entries(r.errors || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
const ratio = (a, b) => (a / b).toFixed(2);
const table = `<!-- results:start -->
Measured ${new Date().toISOString().slice(0, 10)} on ${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}; load generator on the same machine.
Command: \`DURATION=${duration} CONNECTIONS=${connections} bash scripts/bench.sh\`.

| run | throughput | p50 / p95 / p99 / max (ms) | errors |
|---|---|---|---|
| Nimbus: durable mutations (\`orders:create\`), HTTP, ${connections} connections | ${m.throughput_per_sec}/s | ${lat(m)} | ${errs(m)} |
| Nimbus: indexed queries (\`orders:listOpen\`, 10 rows), HTTP, ${connections} connections, query cache on (the default; repeated query, so hits) | ${q.throughput_per_sec}/s | ${lat(q)} | ${errs(q)} |
| Nimbus: the same queries with \`--query-cache-entries 0\` (every call runs the function in QuickJS) | ${u.throughput_per_sec}/s | ${lat(u)} | ${errs(u)} |
| rusqlite: 1-row durable transactions (fsync each), 1 thread | ${s.single_row_txns.throughput_per_sec}/s | ${lat(s.single_row_txns)} | — |
| rusqlite: ${s.grouped_txns.rows_per_txn}-row durable transactions, 1 thread | ${s.grouped_txns.rows_per_sec} rows/s (${s.grouped_txns.throughput_per_sec} txns/s) | ${lat(s.grouped_txns)} | — |
| rusqlite: indexed reads of 10 rows, 2 threads | ${s.indexed_reads.throughput_per_sec}/s | ${lat(s.indexed_reads)} | — |

During the mutation run the tenant committed ${commits} mutations in ${batches} storage batches (fsyncs), ${(commits / Math.max(batches, 1)).toFixed(1)} per batch on average, with ${conflicts} write conflicts retried.

Ratios: Nimbus mutations / rusqlite 1-row transactions = ${ratio(m.throughput_per_sec, s.single_row_txns.throughput_per_sec)}; Nimbus mutations / rusqlite grouped rows = ${ratio(m.throughput_per_sec, s.grouped_txns.rows_per_sec)}; Nimbus queries / rusqlite indexed reads = ${ratio(q.throughput_per_sec, s.indexed_reads.throughput_per_sec)} cached, ${ratio(u.throughput_per_sec, s.indexed_reads.throughput_per_sec)} uncached.
<!-- results:end -->`;
const file = path.join(process.cwd(), "BENCHMARKS.md");
const current = fs.readFileSync(file, "utf8");
fs.writeFileSync(file, current.replace(/<!-- results:start -->[\s\S]*<!-- results:end -->/, table));
console.log(table);
JS
ok "BENCHMARKS.md updated (raw JSON in $OUT)"
