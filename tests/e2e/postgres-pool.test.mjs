// A pool of Postgres servers: placement of new tenants, servers added through the admin
// API, and graduation of live tenants into databases of their own (issue 16, acceptance
// points 3 and 4).
//
// Two servers: `default` is the machine's Postgres (a database of its own per run; the
// shared tier through PgBouncer when NIMBUS_TEST_PGBOUNCER_URL is set, as under CI), and
// `b` is a throwaway cluster this file makes with initdb (run as the `postgres` user) on a
// free loopback port with max_connections = 40, and removes at the end. Checked:
// - round-robin alternates new tenants over the servers; least-loaded weights tenants by
//   each server's max_connections; a tenant created on a named server stays there, and
//   every tenant stays where it is when the policy changes across a restart;
// - POST/GET/DELETE /admin/servers, with clear errors for bad input;
// - graduation while an official client sends mutations without pause: once to the
//   tenant's current server, once to server `b` with ?server=; no client error, every
//   acknowledged mutation present afterwards (and after a restart), the live query still
//   updating, the old schema gone; bad graduation requests get clear 4xx answers.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { APP_DIR, NimbusServer, api, client, deploy, freePort, sleep, socketClient } from "./harness.mjs";

const PG = process.env.NIMBUS_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const PG_BIN = process.env.NIMBUS_TEST_PG_BIN ?? "/usr/lib/postgresql/15/bin";
const RUN = randomBytes(4).toString("hex");
const DATABASE = `nimbus_pool_${RUN}`;
const PREFIX = `p${RUN}_`;
const B_MAX_CONNECTIONS = 40;

function urlWithDatabase(base, database) {
  const url = new URL(base);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Runs SQL with psql; returns the rows as arrays of strings. */
function sql(url, statement) {
  const out = execFileSync("psql", [url, "-XAtq", "-F", "\t", "-c", statement], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  return out
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => line.split("\t"));
}

/** As the `postgres` user when we are root (initdb refuses root). */
function asPostgres(command, args) {
  if (process.getuid?.() === 0) {
    return execFileSync("runuser", ["-u", "postgres", "--", command, ...args], { stdio: "pipe" });
  }
  return execFileSync(command, args, { stdio: "pipe" });
}

const cluster = { dir: null, port: null };
let serverB = null; // postgres://... of the throwaway cluster
let server;

function pooledUrl() {
  const url = process.env.NIMBUS_TEST_PGBOUNCER_URL;
  if (url) {
    return urlWithDatabase(url, DATABASE);
  }
  if (process.env.CI) {
    throw new Error("CI runs this test through PgBouncer: set NIMBUS_TEST_PGBOUNCER_URL (scripts/pgbouncer.sh)");
  }
  return null;
}

function serveArgs(policy) {
  const args = [
    "--storage",
    "postgres",
    "--postgres-url",
    urlWithDatabase(PG, DATABASE),
    "--postgres-prefix",
    PREFIX,
    "--postgres-server",
    `name=b url=${serverB} max-connections=${B_MAX_CONNECTIONS}`,
    "--placement",
    policy,
  ];
  const pooled = pooledUrl();
  if (pooled) {
    args.push("--postgres-pooler-url", pooled);
  }
  return args;
}

before(
  async () => {
    if (!fs.existsSync(path.join(PG_BIN, "initdb"))) {
      throw new Error(`PostgreSQL server binaries not found in ${PG_BIN} (Debian package postgresql)`);
    }
    cluster.dir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-pool-cluster-"));
    fs.chmodSync(cluster.dir, 0o755);
    const data = path.join(cluster.dir, "data");
    fs.mkdirSync(data);
    if (process.getuid?.() === 0) {
      execFileSync("chown", ["-R", "postgres", cluster.dir]);
    }
    asPostgres(path.join(PG_BIN, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
    cluster.port = await freePort();
    asPostgres(path.join(PG_BIN, "pg_ctl"), [
      "-D",
      data,
      "-w",
      "-l",
      path.join(cluster.dir, "server.log"),
      "-o",
      `-p ${cluster.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${cluster.dir} -c max_connections=${B_MAX_CONNECTIONS}`,
      "start",
    ]);
    serverB = `postgres://postgres@127.0.0.1:${cluster.port}/nimbus_b`;
    server = await NimbusServer.start({ args: serveArgs("round-robin") });
  },
  { timeout: 180_000 },
);

after(async () => {
  await server?.cleanup();
  if (cluster.dir) {
    try {
      asPostgres(path.join(PG_BIN, "pg_ctl"), ["-D", path.join(cluster.dir, "data"), "-m", "immediate", "stop"]);
    } catch (error) {
      console.error(`stopping the throwaway cluster: ${error.message}`);
    }
    fs.rmSync(cluster.dir, { recursive: true, force: true });
  }
  try {
    const admin = urlWithDatabase(PG, "postgres");
    for (const [name] of sql(admin, `SELECT datname FROM pg_database WHERE starts_with(datname, '${PREFIX}')`)) {
      sql(admin, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    }
    for (const name of [DATABASE, `${DATABASE}_c`]) {
      sql(admin, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    }
  } catch (error) {
    console.error(`cleanup of ${DATABASE}: ${error.message}`);
  }
});

/** Creates a tenant in the shared tier of a named server and pushes the test app to it. */
async function tenantWithAppOn(name, serverName) {
  const created = await create(name, { server: serverName });
  const url = server.tenantUrl(name);
  await deploy({ appDir: APP_DIR, url, adminKey: created.adminKey, server });
  return { ...created, url, client: client(url) };
}

async function serverOf(name) {
  const res = await server.admin("GET", `/admin/tenants/${name}`);
  assert.equal(res.status, 200, res.text);
  return { storage: res.body.storage, server: res.body.server };
}

async function create(name, extra = {}) {
  const res = await server.admin("POST", "/admin/tenants", { name, ...extra });
  assert.equal(res.status, 201, res.text);
  return res.body;
}

/** The URL of a schema's database on a server, and whether it holds the tenant's schema. */
function schemaOn(serverName, tenant) {
  const url = serverName === "b" ? serverB : urlWithDatabase(PG, DATABASE);
  return sql(url, `SELECT count(*) FROM pg_namespace WHERE nspname = '${PREFIX}${tenant}'`)[0][0] === "1";
}

function databaseOn(serverName, tenant) {
  const url = serverName === "b" ? urlWithDatabase(serverB, "postgres") : urlWithDatabase(PG, "postgres");
  return sql(url, `SELECT count(*) FROM pg_database WHERE datname = '${PREFIX}${tenant}'`)[0][0] === "1";
}

test("placement: round-robin, least-loaded by max_connections, named servers; tenants never move", { timeout: 300_000 }, async () => {
  const listed = await server.admin("GET", "/admin/servers");
  assert.equal(listed.status, 200, listed.text);
  assert.equal(listed.body.placement, "round-robin");
  assert.deepEqual(
    listed.body.servers.map((s) => [s.name, s.origin]),
    [
      ["b", "config"],
      ["default", "config"],
    ],
  );
  const [[maxDefault]] = sql(urlWithDatabase(PG, "postgres"), "SHOW max_connections");
  const maxOf = { b: B_MAX_CONNECTIONS, default: Number(maxDefault) };
  assert.equal(listed.body.servers[0].maxConnections, B_MAX_CONNECTIONS);
  assert.equal(listed.body.servers[1].maxConnections, maxOf.default, "read from the server when not configured");

  // A tenant with data on a named server.
  const keep = await tenantWithAppOn("keep", "default");
  assert.deepEqual(await serverOf("keep"), { storage: "postgres-shared", server: "default" });
  await keep.client.mutation(api.notes.add, { owner: "k", text: "kept" });

  // Round-robin, in name order: b, default, b, default.
  const rr = [];
  for (let i = 0; i < 4; i++) {
    await create(`rr-${i}`);
    rr.push((await serverOf(`rr-${i}`)).server);
  }
  assert.deepEqual(rr, ["b", "default", "b", "default"]);
  for (let i = 0; i < 4; i++) {
    assert.ok(schemaOn(rr[i], `rr-${i}`), `rr-${i}'s schema is on ${rr[i]}`);
    assert.ok(!schemaOn(rr[i] === "b" ? "default" : "b", `rr-${i}`), `rr-${i} is on one server only`);
  }
  await create("named", { server: "b" });
  assert.equal((await serverOf("named")).server, "b");
  await create("dedicated-b", { storage: "postgres-dedicated", server: "b" });
  assert.ok(databaseOn("b", "dedicated-b"));

  // Bad requests change nothing.
  for (const [body, status, says] of [
    [{ name: "x1", server: "nope" }, 400, "unknown Postgres server"],
    [{ name: "x2", storage: "sqlite", server: "b" }, 400, "local to this instance"],
    [{ name: "x3", server: 7 }, 400, "must be a string"],
    [{ name: "x4", colour: "red" }, 400, "unknown field"],
  ]) {
    const res = await server.admin("POST", "/admin/tenants", body);
    assert.equal(res.status, status, res.text);
    assert.match(res.body.message, new RegExp(says));
  }

  // Restart with least-loaded: every tenant stays where it was.
  const before = {};
  for (const t of (await server.admin("GET", "/admin/tenants")).body.tenants) {
    before[t.name] = t.server;
  }
  await server.stop();
  server.extraArgs = serveArgs("least-loaded");
  await server.launch();
  const afterRestart = {};
  for (const t of (await server.admin("GET", "/admin/tenants")).body.tenants) {
    afterRestart[t.name] = t.server;
  }
  assert.deepEqual(afterRestart, before);
  const kept = await client(keep.url).query(api.notes.byOwner, { owner: "k" });
  assert.deepEqual(kept.map((n) => n.text), ["kept"]);

  // Least-loaded: fewest tenants per connection of max_connections (ties: first by name).
  const servers = (await server.admin("GET", "/admin/servers")).body;
  assert.equal(servers.placement, "least-loaded");
  const count = Object.fromEntries(servers.servers.map((s) => [s.name, s.tenants]));
  assert.equal(count.b + count.default, Object.keys(before).length);
  const expected = [];
  for (let i = 0; i < 6; i++) {
    const pick = ["b", "default"].reduce((best, s) =>
      count[s] * maxOf[best] < count[best] * maxOf[s] ? s : best,
    );
    expected.push(pick);
    count[pick] += 1;
  }
  const placed = [];
  for (let i = 0; i < 6; i++) {
    await create(`ll-${i}`);
    placed.push((await serverOf(`ll-${i}`)).server);
  }
  assert.deepEqual(placed, expected, `least-loaded with max_connections ${JSON.stringify(maxOf)}`);

  // A server added through the API takes part at once and survives a restart.
  const cUrl = urlWithDatabase(PG, `${DATABASE}_c`);
  for (const [body, status, says] of [
    [{ name: "C", url: cUrl }, 400, "invalid server name"],
    [{ name: "c" }, 400, "\"url\" must be"],
    [{ name: "c", url: cUrl, maxConnections: 0 }, 400, "1 to 1000000"],
    [{ name: "c", url: cUrl, maxConnections: "many" }, 400, "whole number"],
    [{ name: "c", url: cUrl, extra: 1 }, 400, "unknown field"],
    [{ name: "b", url: cUrl }, 409, "exists already"],
    [{ name: "dead", url: "postgres://postgres@127.0.0.1:1/x" }, 503, "opening Postgres server"],
  ]) {
    const res = await server.admin("POST", "/admin/servers", body);
    assert.equal(res.status, status, `${JSON.stringify(body)}: ${res.text}`);
    assert.match(res.body.message, new RegExp(says));
  }
  const added = await server.admin("POST", "/admin/servers", { name: "c", url: cUrl, maxConnections: 1000 });
  assert.equal(added.status, 201, added.text);
  assert.equal(added.body.origin, "api");
  await create("on-c");
  assert.equal((await serverOf("on-c")).server, "c", "the empty, large server is the least loaded");
  await server.restart();
  assert.equal((await serverOf("on-c")).server, "c");
  const afterAdd = (await server.admin("GET", "/admin/servers")).body.servers.map((s) => s.name);
  assert.deepEqual(afterAdd, ["b", "c", "default"]);
  let res = await server.admin("DELETE", "/admin/servers/c");
  assert.equal(res.status, 409, res.text);
  assert.match(res.body.message, /still holds tenants/);
  res = await server.admin("DELETE", "/admin/servers/default");
  assert.equal(res.status, 409, res.text);
  assert.match(res.body.message, /flags/);
  res = await server.admin("DELETE", "/admin/servers/nope");
  assert.equal(res.status, 404, res.text);
  // The pool is bounded: 64 servers, the flags' and the API's together.
  const serversBefore = (await server.admin("GET", "/admin/servers")).body.servers.length;
  const extra = [];
  for (let i = 0; ; i++) {
    res = await server.admin("POST", "/admin/servers", { name: `x${i}`, url: cUrl });
    if (res.status !== 201) break;
    extra.push(`x${i}`);
    assert.ok(extra.length < 100, "the pool never refused a server");
  }
  assert.equal(res.status, 409, res.text);
  assert.match(res.body.message, /maximum of 64 Postgres servers/);
  assert.equal(serversBefore + extra.length, 64);
  for (const name of extra) {
    assert.equal((await server.admin("DELETE", `/admin/servers/${name}`)).status, 204);
  }
  await server.deleteTenant("on-c");
  res = await server.admin("DELETE", "/admin/servers/c");
  assert.equal(res.status, 204, res.text);
  assert.equal((await server.admin("GET", "/admin/servers", undefined, { key: null })).status, 401);

  // The capacity report covers every server.
  const capacity = await server.admin("GET", "/admin/capacity");
  assert.equal(capacity.status, 200, capacity.text);
  assert.deepEqual(
    capacity.body.servers.map((s) => s.name),
    ["b", "default"],
  );
  const b = capacity.body.servers[0];
  assert.equal(b.maxConnections, B_MAX_CONNECTIONS);
  assert.ok(b.tenants.shared.registered >= 3 && b.tenants.dedicated.registered === 1, JSON.stringify(b.tenants));
});

/**
 * Sends mutations from `workers` official HTTP clients without pause until `stop()`;
 * records every acknowledged text, every error and the slowest call.
 */
function load(url, owner, workers = 4) {
  const state = { acknowledged: new Set(), errors: [], slowestMs: 0, running: true };
  const loops = [];
  for (let w = 0; w < workers; w++) {
    const http = client(url);
    loops.push(
      (async () => {
        for (let i = 0; state.running; i++) {
          const text = `${w}-${i}`;
          const started = performance.now();
          try {
            await http.mutation(api.notes.add, { owner, text });
            state.acknowledged.add(text);
          } catch (error) {
            state.errors.push(`${text}: ${error.message}`);
          }
          state.slowestMs = Math.max(state.slowestMs, performance.now() - started);
        }
      })(),
    );
  }
  return {
    state,
    async stop() {
      state.running = false;
      await Promise.all(loops);
      return state;
    },
  };
}

async function graduateUnderLoad(name, query) {
  const tenant = await tenantWithAppOn(name, "default");
  const live = socketClient(tenant.url);
  const seen = [];
  const unsubscribe = live.onUpdate(api.notes.byOwner, { owner: "g" }, (notes) => seen.push(notes.length));
  const running = load(tenant.url, "g");
  try {
    await sleep(1_500);
    let finished = false;
    const graduating = server.admin("POST", `/admin/tenants/${name}/graduate${query}`).finally(() => {
      finished = true;
    });
    // While it runs the tenant shows `graduating` and cannot be deleted: the move cleans
    // up by name and must never meet a new tenant of that name.
    let shown = false;
    while (!finished && !shown) {
      shown = (await server.admin("GET", `/admin/tenants/${name}`)).body.graduating === true;
      if (!shown) await sleep(5);
    }
    assert.ok(shown, "the graduation showed in GET /admin/tenants/<t> while it ran");
    const deleting = await server.admin("DELETE", `/admin/tenants/${name}`);
    assert.ok(!finished, "the graduation was still running when the delete was sent");
    assert.equal(deleting.status, 409, deleting.text);
    assert.match(deleting.body.message, /is graduating/);
    const res = await graduating;
    assert.equal(res.status, 200, res.text);
    assert.equal((await server.admin("GET", `/admin/tenants/${name}`)).body.graduating, false);
    const atSwitch = running.state.acknowledged.size;
    await sleep(1_500);
    const state = await running.stop();
    assert.deepEqual(state.errors, [], "no client saw an error");
    assert.ok(state.acknowledged.size > atSwitch, "mutations went on after the switch");
    const notes = await tenant.client.query(api.notes.byOwner, { owner: "g" });
    const stored = new Set(notes.map((n) => n.text));
    const missing = [...state.acknowledged].filter((t) => !stored.has(t));
    assert.deepEqual(missing, [], "every acknowledged mutation is there");
    const deadline = Date.now() + 20_000;
    while (seen.at(-1) !== notes.length && Date.now() < deadline) {
      await sleep(50);
    }
    assert.equal(seen.at(-1), notes.length, "the live query followed the tenant through the move");
    console.log(
      `graduated ${name}${query}: ${res.body.copiedRows} rows copied, ${res.body.caughtUpBatches}+${res.body.finalBatches} batches replayed, ` +
        `writes paused ${res.body.pauseMs.toFixed(1)} ms of ${res.body.durationMs.toFixed(0)} ms; ` +
        `${state.acknowledged.size} mutations acknowledged, slowest ${state.slowestMs.toFixed(0)} ms`,
    );
    return { body: res.body, acknowledged: state.acknowledged, tenant };
  } finally {
    running.state.running = false;
    unsubscribe();
    await live.close();
  }
}

test("graduation under load: to the tenant's server, then to another server with ?server=", { timeout: 300_000 }, async () => {
  const home = await graduateUnderLoad("grad-home", "");
  assert.deepEqual(home.body.from, { storage: "postgres-shared", server: "default" });
  assert.deepEqual(home.body.to, { storage: "postgres-dedicated", server: "default" });
  assert.deepEqual(await serverOf("grad-home"), { storage: "postgres-dedicated", server: "default" });
  assert.ok(databaseOn("default", "grad-home"), "its own database");
  assert.ok(!schemaOn("default", "grad-home"), "the shared-tier schema is gone");

  const away = await graduateUnderLoad("grad-away", "?server=b");
  assert.deepEqual(away.body.to, { storage: "postgres-dedicated", server: "b" });
  assert.ok(databaseOn("b", "grad-away"));
  assert.ok(!schemaOn("default", "grad-away") && !schemaOn("b", "grad-away"));

  // Clear refusals, nothing changed.
  for (const [target, status, says] of [
    ["/admin/tenants/grad-away/graduate", 409, "already has a database of its own"],
    ["/admin/tenants/grad-away/graduate?server=nope", 400, "unknown Postgres server"],
    ["/admin/tenants/grad-away/graduate?colour=red", 400, "unknown query parameter"],
    ["/admin/tenants/missing/graduate", 404, "does not exist"],
  ]) {
    const res = await server.admin("POST", target);
    assert.equal(res.status, status, `${target}: ${res.text}`);
    assert.match(res.body.message, new RegExp(says));
  }
  assert.deepEqual(await serverOf("grad-away"), { storage: "postgres-dedicated", server: "b" });
  const sqlite = await server.admin("POST", "/admin/tenants", { name: "grad-sqlite", storage: "sqlite" });
  assert.equal(sqlite.status, 201);
  const refused = await server.admin("POST", "/admin/tenants/grad-sqlite/graduate");
  assert.equal(refused.status, 409, refused.text);

  // A dedicated tenant moves between servers the same way.
  const back = await server.admin("POST", "/admin/tenants/grad-away/graduate?server=default");
  assert.equal(back.status, 200, back.text);
  assert.ok(databaseOn("default", "grad-away") && !databaseOn("b", "grad-away"));

  // After a hard stop, both open from their new homes with everything acknowledged.
  await server.restart("SIGKILL");
  for (const { tenant, acknowledged } of [home, away]) {
    const notes = await client(tenant.url).query(api.notes.byOwner, { owner: "g" });
    const stored = new Set(notes.map((n) => n.text));
    assert.deepEqual([...acknowledged].filter((t) => !stored.has(t)), [], `${tenant.name} after a restart`);
  }
});
