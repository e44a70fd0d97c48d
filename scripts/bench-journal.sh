#!/usr/bin/env bash
# The shared journal against a sync per tenant (issue 14), in one run: durable mutations
# (`orders:create` of examples/pos) for one hot tenant, for TENANTS tenants evenly loaded,
# and open-loop at 1 mutation/s per tenant for MANY tenants; each once with `--journal` and
# once without (the default: a sync of each tenant's own file). Reports throughput and latency, the journal's
# commits per sync, and the p99 of its lag (journal records of any one tenant not yet synced
# to its file, sampled from /metrics once a second while the load runs; tenants past
# /metrics' label bound are summed under `_other` and left out).
#
#   bash scripts/bench-journal.sh
#   DURATION=20 TENANTS=100 MANY=1000 MODES="own-file journal" bash scripts/bench-journal.sh
#
# Everything targets 127.0.0.1 and stops by itself. Results: OUT (default
# ./target-bench/journal), one JSON per run and a summary table on stdout.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
TENANTS="${TENANTS:-100}"
MANY="${MANY:-1000}"
PRODUCTS="${PRODUCTS:-20}"
PORT="${PORT:-3298}"
OUT="${OUT:-$REPO_ROOT/target-bench/journal}"

ensure_libnode
cargo build --release -p nimbus -p nimbus-bench
NIMBUS="$CARGO_TARGET_DIR/release/nimbus"
BENCH="$CARGO_TARGET_DIR/release/nimbus-bench"
npm_ci "$REPO_ROOT/examples/pos"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.txt
WORK="$(mktemp -d)"
export NIMBUS_ADMIN_KEY="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BASE="http://127.0.0.1:$PORT"
SERVER=""
SAMPLER=""
stop_server() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi; }
stop_sampler() { if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""; fi; }
cleanup() { stop_sampler; stop_server; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

metrics() { curl -fsS "$BASE/metrics" -H "authorization: Bearer $NIMBUS_ADMIN_KEY"; }
metric() { # metric NAME : one unlabelled value from /metrics (0 when absent)
  metrics | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
# Samples, once a second, the largest per-tenant count of unsynced journal records.
sample_lag() { # sample_lag FILE
  while true; do
    metrics 2>/dev/null | awk '/^nimbus_tenant_journal_unsynced_records\{/ && !/_other/ { if ($2 > m) m = $2 } END { print m + 0 }' >>"$1"
    sleep 1
  done
}

run() { # run MODE NAME TARGETS ARGS... : one load with /metrics before and after
  local mode="$1" name="$2" targets="$3"; shift 3
  local syncs0 records0 syncs1 records1
  syncs0="$(metric nimbus_journal_syncs_total)"; records0="$(metric nimbus_journal_records_total)"
  : >"$WORK/lag-$mode-$name.txt"
  sample_lag "$WORK/lag-$mode-$name.txt" &
  SAMPLER=$!
  "$BENCH" http --warmup-secs "$WARMUP" --duration-secs "$DURATION" --targets "$targets" \
    --workload mutation "$@" >"$OUT/$mode-$name.json"
  stop_sampler
  syncs1="$(metric nimbus_journal_syncs_total)"; records1="$(metric nimbus_journal_records_total)"
  node -e '
    const fs = require("fs");
    const [file, lagFile, syncs, records] = process.argv.slice(1);
    const r = JSON.parse(fs.readFileSync(file, "utf8"));
    const lags = fs.readFileSync(lagFile, "utf8").trim().split("\n").filter(Boolean).map(Number).sort((a, b) => a - b);
    const p99 = lags.length ? lags[Math.min(lags.length - 1, Math.floor(lags.length * 0.99))] : 0;
    r.journal = { syncs: Number(syncs), records: Number(records), commitsPerSync: Number(syncs) > 0 ? Number(records) / Number(syncs) : null, lagRecordsP99: p99, lagSamples: lags.length };
    fs.writeFileSync(file, JSON.stringify(r, null, 2));
  ' "$OUT/$mode-$name.json" "$WORK/lag-$mode-$name.txt" "$((syncs1 - syncs0))" "$((records1 - records0))"
}

for MODE in ${MODES:-journal own-file}; do
  DATA="$WORK/data-$MODE"
  EXTRA=()
  [ "$MODE" = journal ] && EXTRA=(--journal)
  RUST_LOG=warn "$NIMBUS" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
    --max-active-tenants "$((MANY + TENANTS + 10))" "${EXTRA[@]}" >>"$OUT/server-$MODE.log" 2>&1 &
  SERVER=$!
  wait_healthy "$BASE" "$SERVER" 30 "$OUT/server-$MODE.log"
  write_push_request "$BASE" "$WORK/push-request-$MODE" "$OUT/push-$MODE.log"
  log "$MODE: one hot tenant"
  "$BENCH" provision --base "$BASE" --prefix hot --count 1 --push-request "$WORK/push-request-$MODE.json" \
    --push-count 1 --products 1000 --out "$WORK/hot-$MODE.json" >/dev/null
  run "$MODE" hot "$WORK/hot-$MODE.json" --connections "$CONNECTIONS"
  log "$MODE: $TENANTS tenants evenly loaded"
  "$BENCH" provision --base "$BASE" --prefix t --count "$TENANTS" --push-request "$WORK/push-request-$MODE.json" \
    --push-count "$TENANTS" --products "$PRODUCTS" --out "$WORK/tenants-$MODE.json" >/dev/null
  run "$MODE" tenants "$WORK/tenants-$MODE.json" --connections "$CONNECTIONS"
  log "$MODE: $MANY tenants at 1 mutation/s each, open loop"
  "$BENCH" provision --base "$BASE" --prefix m --count "$MANY" --push-request "$WORK/push-request-$MODE.json" \
    --push-count "$MANY" --products 5 --out "$WORK/many-$MODE.json" >/dev/null
  run "$MODE" many "$WORK/many-$MODE.json" --connections "$CONNECTIONS" --rate "$MANY"
  stop_server
done

node -e '
  const fs = require("fs");
  const dir = process.argv[1];
  const rows = [];
  for (const name of ["hot", "tenants", "many"]) {
    for (const mode of ["journal", "own-file"]) {
      const r = JSON.parse(fs.readFileSync(`${dir}/${mode}-${name}.json`, "utf8"));
      const t = r.total ?? r;
      const l = t.latency_ms;
      const j = r.journal;
      const errors = Object.values(t.errors ?? {}).reduce((a, b) => a + b, 0);
      rows.push(`| ${name} | ${mode} | ${t.throughput_per_sec} | ${l.p50} / ${l.p99} / ${l.max} | ${errors} | ${mode === "journal" ? (j.commitsPerSync ?? 0).toFixed(1) : "-"} | ${mode === "journal" ? j.lagRecordsP99 : "-"} |`);
    }
  }
  console.log("| load | mode | mutations/s | p50 / p99 / max ms | errors | commits per journal sync | journal lag p99 (records, one tenant) |");
  console.log("|---|---|---|---|---|---|---|");
  console.log(rows.join("\n"));
' "$OUT" | tee "$OUT/summary.md"
