// Graduation under load, measured: a shared-tier tenant holding DOCS documents is moved
// into a database of its own while WRITERS official HTTP clients send mutations without
// pause. Prints the graduation's own report and the clients' latency before, during and
// after it, as one JSON line (BENCHMARKS.md, "Graduation").
//
//   node scripts/bench-graduation.mjs            # 50,000 documents, 4 writers
//   DOCS=200000 WRITERS=8 node scripts/bench-graduation.mjs
//
// Needs a built nimbus (NIMBUS_BIN, else target/release), `npm ci` in tests/e2e, and the
// local Postgres (NIMBUS_TEST_POSTGRES_URL); through PgBouncer when
// NIMBUS_TEST_PGBOUNCER_URL is set (scripts/pgbouncer.sh prints it). Bounded: the load
// stops itself, and the run's database is dropped at the end.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { NimbusServer, api, client, sleep } from "../tests/e2e/harness.mjs";

const DOCS = Number(process.env.DOCS ?? 50_000);
const WRITERS = Number(process.env.WRITERS ?? 4);
const PG = process.env.NIMBUS_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const RUN = randomBytes(4).toString("hex");
const DATABASE = `nimbus_gradbench_${RUN}`;
const PREFIX = `g${RUN}_`;

function withDatabase(base, database) {
  const url = new URL(base);
  url.pathname = `/${database}`;
  return url.toString();
}

function percentile(sorted, p) {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    calls: sorted.length,
    p50_ms: +percentile(sorted, 50).toFixed(2),
    p99_ms: +percentile(sorted, 99).toFixed(2),
    max_ms: +(sorted.at(-1) ?? 0).toFixed(2),
  };
}

const args = ["--storage", "postgres", "--postgres-url", withDatabase(PG, DATABASE), "--postgres-prefix", PREFIX];
if (process.env.NIMBUS_TEST_PGBOUNCER_URL) {
  args.push("--postgres-pooler-url", withDatabase(process.env.NIMBUS_TEST_PGBOUNCER_URL, DATABASE));
}
const server = await NimbusServer.start({ args });
try {
  const tenant = await server.tenantWithApp("hot");
  const http = client(tenant.url);
  const started = Date.now();
  for (let k = 0; k < DOCS; k += 500) {
    await http.mutation(api.bulk.insertRange, { start: k, count: Math.min(500, DOCS - k) });
  }
  console.error(`loaded ${DOCS} documents in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // phase: "before", "during", "after" the graduation.
  let phase = "before";
  const latencies = { before: [], during: [], after: [] };
  let errors = 0;
  let running = true;
  const acknowledged = new Set();
  const loops = Array.from({ length: WRITERS }, (_, w) =>
    (async () => {
      const writer = client(tenant.url);
      for (let i = 0; running; i++) {
        const at = performance.now();
        const seenPhase = phase;
        try {
          await writer.mutation(api.notes.add, { owner: "bench", text: `${w}-${i}` });
          acknowledged.add(`${w}-${i}`);
          latencies[seenPhase].push(performance.now() - at);
        } catch {
          errors += 1;
        }
      }
    })(),
  );
  await sleep(3_000);
  phase = "during";
  const res = await server.admin("POST", "/admin/tenants/hot/graduate");
  phase = "after";
  await sleep(3_000);
  running = false;
  await Promise.all(loops);
  if (res.status !== 200) {
    throw new Error(`graduation failed: ${res.status} ${res.text}`);
  }
  const notes = await http.query(api.notes.byOwner, { owner: "bench" });
  const stored = new Set(notes.map((n) => n.text));
  const lost = [...acknowledged].filter((t) => !stored.has(t)).length;
  console.log(
    JSON.stringify({
      kind: "graduation",
      documents: DOCS,
      writers: WRITERS,
      pooled: Boolean(process.env.NIMBUS_TEST_PGBOUNCER_URL),
      graduation: res.body,
      rows_per_s: Math.round(res.body.copiedRows / (res.body.durationMs / 1000)),
      client_errors: errors,
      acknowledged_lost: lost,
      latency: { before: summary(latencies.before), during: summary(latencies.during), after: summary(latencies.after) },
    }),
  );
} finally {
  await server.cleanup();
  const admin = withDatabase(PG, "postgres");
  for (const name of [`${PREFIX}hot`, DATABASE]) {
    execFileSync("psql", [admin, "-XAtq", "-c", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`], { stdio: "ignore" });
  }
}
