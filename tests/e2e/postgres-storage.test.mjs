// Tenants stored in PostgreSQL, beside SQLite ones, driven by the official clients.
//
// One server runs with `--storage postgres` against the local Postgres (a database of its
// own per run) with the shared tier's runtime traffic through PgBouncer in transaction
// mode (`NIMBUS_TEST_PGBOUNCER_URL`, started by scripts/pgbouncer.sh; without it the shared
// tier connects directly and the PgBouncer check is skipped, except under CI where it is
// required). Checked:
// - the CLI pushes to a shared-tier tenant; mutations and queries over HTTP and a live
//   query over the WebSocket work; the tenant's rows are in its own schema and nowhere else;
// - a dedicated-tier tenant gets a database of its own; deleting it drops that database;
// - a SQLite tenant on the same server still gets its file;
// - SIGKILL during writes, restart: every acknowledged write of the Postgres tenant is there;
// - the placement is shown by the admin API and refused with a clear 400 when unknown or
//   not configured;
// - GET /admin/capacity shows the connection budget with live numbers from Postgres and
//   PgBouncer.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { randomBytes } from "node:crypto";
import { APP_DIR, NimbusServer, api, callRaw, client, deploy, sleep, socketClient } from "./harness.mjs";

const PG = process.env.NIMBUS_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const RUN = randomBytes(4).toString("hex");
const DATABASE = `nimbus_e2e_${RUN}`;
const PREFIX = `e${RUN}_`;

function urlWithDatabase(base, database) {
  const url = new URL(base);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Runs SQL with psql against `database`; returns the rows as arrays of strings. */
function sql(statement, database = DATABASE) {
  const out = execFileSync("psql", [urlWithDatabase(PG, database), "-XAtq", "-F", "\t", "-c", statement], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  return out
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => line.split("\t"));
}

function pgbouncerUrl() {
  const url = process.env.NIMBUS_TEST_PGBOUNCER_URL;
  if (url) {
    return urlWithDatabase(url, DATABASE);
  }
  if (process.env.CI) {
    throw new Error("CI must run this test through PgBouncer: set NIMBUS_TEST_PGBOUNCER_URL (scripts/pgbouncer.sh)");
  }
  return null;
}

/** PgBouncer's transaction count for our database (its admin console), or null. */
function pgbouncerTransactions() {
  const url = process.env.NIMBUS_TEST_PGBOUNCER_URL;
  if (!url) {
    return null;
  }
  const out = execFileSync("psql", [urlWithDatabase(url, "pgbouncer"), "-XAtq", "-F", "\t", "-c", "SHOW STATS"], {
    encoding: "utf8",
  });
  const row = out.split("\n").map((line) => line.split("\t")).find((cols) => cols[0] === DATABASE);
  return row ? Number(row[1]) : 0;
}

let server;
const pooler = pgbouncerUrl();

before(
  async () => {
    const args = [
      "--storage",
      "postgres",
      "--postgres-url",
      urlWithDatabase(PG, DATABASE),
      "--postgres-prefix",
      PREFIX,
    ];
    if (pooler) {
      args.push("--postgres-pooler-url", pooler);
    }
    server = await NimbusServer.start({ args });
  },
  { timeout: 120_000 },
);

after(async () => {
  await server?.cleanup();
  // Dedicated-tier databases live outside the run's database; drop what is left, then it.
  try {
    for (const [name] of sql(`SELECT datname FROM pg_database WHERE starts_with(datname, '${PREFIX}')`, "postgres")) {
      sql(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`, "postgres");
    }
    sql(`DROP DATABASE IF EXISTS "${DATABASE}" WITH (FORCE)`, "postgres");
  } catch (error) {
    console.error(`cleanup of ${DATABASE}: ${error.message}`);
  }
});

test("a shared-tier tenant: CLI push, HTTP and WebSocket clients, rows only in its schema", { timeout: 240_000 }, async () => {
  const before = pgbouncerTransactions();
  const { url, client: http } = await server.tenantWithApp("pg-shared");
  const info = await server.admin("GET", "/admin/tenants/pg-shared");
  assert.equal(info.status, 200);
  assert.equal(info.body.storage, "postgres-shared");

  const live = socketClient(url);
  const updates = [];
  const unsubscribe = live.onUpdate(api.notes.byOwner, { owner: "ada" }, (notes) => updates.push(notes.length));
  try {
    for (let i = 0; i < 5; i++) {
      await http.mutation(api.notes.add, { owner: "ada", text: `note ${i}` });
    }
    await http.mutation(api.notes.add, { owner: "bob", text: "other" });
    const ada = await http.query(api.notes.byOwner, { owner: "ada" });
    assert.deepEqual(ada.map((n) => n.text), ["note 0", "note 1", "note 2", "note 3", "note 4"]);
    const deadline = Date.now() + 20_000;
    while (updates.at(-1) !== 5 && Date.now() < deadline) {
      await sleep(50);
    }
    assert.equal(updates.at(-1), 5, `the live query saw ${JSON.stringify(updates)}`);
  } finally {
    unsubscribe();
    await live.close();
  }

  const schema = `${PREFIX}pg-shared`;
  const [[documents]] = sql(`SELECT count(*) FROM "${schema}".documents`);
  assert.ok(Number(documents) >= 6, `the schema holds the notes (${documents} documents)`);
  // The only schemas of the run are its tenants'; nothing went to public.
  const publicTables = sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'");
  assert.deepEqual(publicTables, []);
  if (before !== null) {
    assert.ok(pgbouncerTransactions() > before, "the tenant's traffic went through PgBouncer");
  }
});

test("GET /admin/capacity evaluates the connection budget with live numbers", { timeout: 60_000 }, async () => {
  const res = await server.admin("GET", "/admin/capacity");
  assert.equal(res.status, 200, res.text);
  const [report] = res.body.servers;
  const [[maxConnections]] = sql("SHOW max_connections");
  const [[reserved]] = sql("SHOW superuser_reserved_connections");
  assert.equal(report.maxConnections, Number(maxConnections));
  assert.equal(report.budget, Number(maxConnections) - Number(reserved) - report.controlReserve);
  assert.equal(report.database, DATABASE);
  // The shared tenant of the first test is active and has been served.
  assert.ok(report.tenants.shared.registered >= 1 && report.tenants.shared.active >= 1, JSON.stringify(report.tenants));
  assert.ok(report.clientBackends >= 1 && report.clientBackends <= report.maxConnections);
  assert.equal(report.demand, report.formulas.unpooled.demand + report.formulas.pooled.demand);
  assert.equal(report.headroom, report.budget - report.demand);
  if (pooler) {
    assert.equal(report.formulas.pooled.databases, 1);
    assert.equal(report.formulas.pooled.demand, report.pgbouncer.defaultPoolSize);
    const pool = report.pgbouncer.pools.find((p) => p.database === DATABASE);
    assert.ok(pool, `SHOW POOLS has ${DATABASE}: ${JSON.stringify(report.pgbouncer.pools)}`);
    assert.equal(pool.poolMode, "transaction");
  } else {
    assert.equal(report.pgbouncer, null);
  }
  const plain = await NimbusServer.start();
  try {
    const none = await plain.admin("GET", "/admin/capacity");
    assert.equal(none.status, 200);
    assert.deepEqual(none.body, { placement: "least-loaded", servers: [] });
    assert.equal((await plain.admin("GET", "/admin/capacity", undefined, { key: null })).status, 401);
  } finally {
    await plain.cleanup();
  }
});

test("a dedicated-tier tenant has a database of its own, dropped with the tenant", { timeout: 240_000 }, async () => {
  const created = await server.admin("POST", "/admin/tenants", { name: "pg-own", storage: "postgres-dedicated" });
  assert.equal(created.status, 201, created.text);
  const url = server.tenantUrl("pg-own");
  await deploy({ appDir: APP_DIR, url, adminKey: created.body.adminKey, server });
  const http = client(url);
  await http.mutation(api.notes.add, { owner: "own", text: "mine" });
  assert.deepEqual((await http.query(api.notes.byOwner, { owner: "own" })).map((n) => n.text), ["mine"]);
  const database = `${PREFIX}pg-own`;
  assert.deepEqual(sql(`SELECT datname FROM pg_database WHERE datname = '${database}'`, "postgres"), [[database]]);
  const listed = await server.admin("GET", "/admin/tenants");
  assert.equal(listed.body.tenants.find((t) => t.name === "pg-own").storage, "postgres-dedicated");

  await server.deleteTenant("pg-own");
  assert.deepEqual(sql(`SELECT datname FROM pg_database WHERE datname = '${database}'`, "postgres"), []);
  const gone = await callRaw(url, "query", "notes:list");
  assert.equal(gone.status, 404, gone.text);
});

test("a SQLite tenant on the same server keeps its file", { timeout: 240_000 }, async () => {
  const created = await server.admin("POST", "/admin/tenants", { name: "lite", storage: "sqlite" });
  assert.equal(created.status, 201, created.text);
  const url = server.tenantUrl("lite");
  await deploy({ appDir: APP_DIR, url, adminKey: created.body.adminKey, server });
  await client(url).mutation(api.notes.add, { owner: "lite", text: "in a file" });
  assert.ok(fs.existsSync(server.tenantDbPath("lite")));
  assert.deepEqual(sql(`SELECT nspname FROM pg_namespace WHERE nspname = '${PREFIX}lite'`), []);
});

test("unknown or unconfigured storage is refused with a clear 400", { timeout: 60_000 }, async () => {
  const unknown = await server.admin("POST", "/admin/tenants", { name: "nope", storage: "oracle" });
  assert.equal(unknown.status, 400, unknown.text);
  assert.match(unknown.body.message, /unknown storage "oracle"/);
  // A valid tenant name (63 characters at most) longer than Postgres leaves after the prefix.
  const long = `l${"x".repeat(62 - PREFIX.length)}z`;
  const tooLong = await server.admin("POST", "/admin/tenants", { name: long });
  assert.equal(tooLong.status, 400, tooLong.text);
  assert.match(tooLong.body.message, /too long for postgres-shared: at most \d+ characters/);
  assert.equal((await server.admin("GET", `/admin/tenants/${long}`)).status, 404, "nothing was created");
  const plain = await NimbusServer.start();
  try {
    const refused = await plain.admin("POST", "/admin/tenants", { name: "nope", storage: "postgres-shared" });
    assert.equal(refused.status, 400, refused.text);
    assert.match(refused.body.message, /--postgres-url/);
    assert.equal((await plain.admin("GET", "/admin/tenants/nope")).status, 404, "nothing was created");
  } finally {
    await plain.cleanup();
  }
});

test("SIGKILL during writes: every acknowledged write of a Postgres tenant survives", { timeout: 240_000 }, async () => {
  const { url } = await server.tenantWithApp("pg-durable");
  const acked = new Set();
  let stop = false;
  const writers = Array.from({ length: 4 }, async (_, w) => {
    for (let seq = 0; !stop; seq++) {
      try {
        const res = await callRaw(url, "mutation", "durability:write", { writer: w, seq }, { timeoutMs: 30_000 });
        if (res.status === 200 && res.body?.status === "success") {
          acked.add(`${w}:${seq}`);
        }
      } catch {
        return; // the server died under the request
      }
    }
  });
  const deadline = Date.now() + 30_000;
  while (acked.size < 40 && Date.now() < deadline) {
    await sleep(20);
  }
  await server.kill();
  stop = true;
  await Promise.all(writers);
  assert.ok(acked.size >= 40, `only ${acked.size} writes were acknowledged before the kill`);
  await server.launch();
  for (let w = 0; w < 4; w++) {
    const res = await callRaw(url, "query", "durability:rows", { writer: w });
    assert.equal(res.status, 200, res.text);
    const rows = res.body.value;
    const seqs = new Map();
    for (const { seq } of rows) {
      seqs.set(seq, (seqs.get(seq) ?? 0) + 1);
    }
    for (const [seq, parts] of seqs) {
      assert.equal(parts, 3, `writer ${w} seq ${seq}: a partial mutation is visible`);
    }
    for (const key of acked) {
      const [writer, seq] = key.split(":").map(Number);
      if (writer === w) {
        assert.equal(seqs.get(seq), 3, `acknowledged write ${key} is missing after the restart`);
      }
    }
  }
});
