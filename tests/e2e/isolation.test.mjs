// Isolation and resource bounds: a tenant cannot be served another (deleted) tenant's code,
// and no client can make the server hold memory it sends faster than the server lets go of
// it — huge session ids, subscription floods, query-cache keys, unbounded page sizes — nor
// guess admin keys at leisure; the data files are private to the server's user.
//
// Memory is the server's VmRSS (/proc/<pid>/status), measured from a baseline taken once the
// tenant exists and a first request warmed it up. Other loopback addresses (127.0.0.2 …) are
// used as *source* addresses so the server sees several client IPs.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { ConvexClient } from "convex/browser";
import {
  APP_DIR,
  NimbusServer,
  api,
  callRaw,
  client,
  deploy,
  expectSuccess,
  freePort,
  httpRequest,
  makeAppVariant,
  nimbusBin,
  randomName,
  removeAppVariant,
  sleep,
  withTimeout,
} from "./harness.mjs";
import { openSync, webSocketFrom } from "./rawsync.mjs";

const MiB = 1 << 20;
const KiB = 1 << 10;
/** The most a test may make the server grow. */
const RSS_BUDGET = 50 * MiB;
const WAIT_MS = 30_000;
const SETUP = { timeout: 180_000 };
const TEST = { timeout: 120_000 };

// ---------------------------------------------------------------------------------------------
// Helpers.

/** The server's resident memory in bytes. */
function rssBytes(server) {
  const status = fs.readFileSync(`/proc/${server.proc.pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  assert.ok(match, `no VmRSS in /proc/${server.proc.pid}/status`);
  return Number(match[1]) * 1024;
}

function mib(bytes) {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** Remembers the server's RSS now; `grown()` is the growth since, `report()` says so in words. */
function memoryProbe(server) {
  const base = rssBytes(server);
  return {
    base,
    grown: () => rssBytes(server) - base,
    report(grown = rssBytes(server) - base) {
      return `RSS ${mib(base)} -> ${mib(base + grown)} (grew ${mib(grown)}, budget ${mib(RSS_BUDGET)})`;
    },
  };
}

/** Polls `check` every 25 ms until it returns a truthy value (bounded). */
async function until(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    }
    await sleep(25);
  }
}

/** Asserts a function error over HTTP (200, `status: "error"`) whose message contains `text`. */
function expectErrorMentioning(res, text) {
  assert.equal(res.status, 200, `expected HTTP 200 with a function error, got ${res.status}: ${res.text.slice(0, 500)}`);
  assert.equal(res.body?.status, "error", `expected a function error mentioning "${text}", got: ${res.text.slice(0, 500)}`);
  assert.ok(res.body.errorMessage.includes(text), `expected "${text}" in: ${res.body.errorMessage}`);
}

/**
 * Sends one `ModifyQuerySet` (version n -> n+1) on a raw socket and waits for the Transition
 * that reaches n+1. Returns that Transition's modifications by queryId. `s.querySet` keeps the
 * socket's query-set version.
 */
async function modify(s, modifications) {
  const base = s.querySet ?? 0;
  s.querySet = base + 1;
  const from = s.messages.length;
  s.send({ type: "ModifyQuerySet", baseVersion: base, newVersion: base + 1, modifications });
  const reached = (m) => m.type === "Transition" && m.endVersion.querySet >= base + 1;
  await s.waitFor(
    () => s.closeInfo !== null || s.messages.slice(from).some(reached),
    `the Transition to query set ${base + 1}`,
  );
  const transitions = s.messages.slice(from).filter((m) => m.type === "Transition");
  if (!transitions.some(reached)) {
    const fatal = s.messages.slice(from).find((m) => m.type === "FatalError");
    throw new Error(
      `socket closed (${JSON.stringify(s.closeInfo)}) before the Transition to query set ${base + 1}` +
        (fatal ? `; FatalError: ${fatal.error}` : ""),
    );
  }
  const byId = new Map();
  for (const t of transitions) {
    for (const m of t.modifications) {
      byId.set(m.queryId, m);
    }
  }
  return byId;
}

/** A raw socket that has sent Connect (with a fresh UUID session id). */
async function connected(url, localAddress) {
  const s = await openSync(url, { localAddress });
  s.connect();
  return s;
}

// ---------------------------------------------------------------------------------------------

describe("1. a re-created tenant runs its own code", () => {
  let server;
  const variants = [];

  /** The test app with convex/books.ts whose `counter` query answers `version`. */
  function booksApp(version) {
    const dir = makeAppVariant(APP_DIR, `books-${version}`, {
      "convex/books.ts": `import { v } from "convex/values";
import { query } from "./_generated/server";

export const counter = query({
  args: { n: v.optional(v.number()) },
  returns: v.string(),
  handler: async () => "${version}",
});
`,
    });
    variants.push(dir);
    return dir;
  }

  before(async () => {
    server = await NimbusServer.start();
  }, SETUP);

  after(async () => {
    await server?.cleanup();
    for (const dir of variants) {
      removeAppVariant(dir);
    }
  });

  test("delete, create again with the same name, push other code: the new code answers", SETUP, async () => {
    const name = randomName("re");
    const url = server.tenantUrl(name);
    const first = await server.createTenant(name);
    await deploy({ appDir: booksApp("v1"), url, adminKey: first.adminKey, server });
    assert.equal(expectSuccess(assert, await callRaw(url, "query", "books:counter", {})), "v1");

    await server.deleteTenant(name);
    const second = await server.createTenant(name);
    await deploy({ appDir: booksApp("v2"), url, adminKey: second.adminKey, server });
    // The same arguments as before (a cached result of the old tenant must not answer) and
    // new ones (the old tenant's loaded code must not run).
    const same = expectSuccess(assert, await callRaw(url, "query", "books:counter", {}));
    const fresh = expectSuccess(assert, await callRaw(url, "query", "books:counter", { n: 1 }));
    assert.deepEqual(
      { same, fresh },
      { same: "v2", fresh: "v2" },
      "the re-created tenant must run its own (v2) code, not the deleted tenant's",
    );
  });
});

describe("2. the sync socket's Connect", () => {
  let server;
  let url;

  before(async () => {
    server = await NimbusServer.start();
    // A tenant with no code: the mutations below all fail with FunctionNotFound.
    const name = randomName("sess");
    await server.createTenant(name);
    url = server.tenantUrl(name);
    await callRaw(url, "query", "nope:nope", {}); // warm up
    const warm = await connected(url);
    await modify(warm, []);
    warm.close();
  }, SETUP);

  after(async () => {
    await server?.cleanup();
  });

  /** Sends 300 mutations of an unknown function right after Connect. */
  function sendUnknownMutations(s) {
    for (let i = 0; i < 300; i++) {
      s.send({ type: "Mutation", requestId: i, udfPath: "nope:nope", args: [{}] });
    }
  }
  const responses = (s) => s.messages.filter((m) => m.type === "MutationResponse");

  test("a UUID session id is served; a 2 MiB one is refused with InvalidSessionId", TEST, async () => {
    // A valid session id: 300 failing mutations, 300 answers, nothing much kept.
    let memory = memoryProbe(server);
    const good = await openSync(url);
    good.connect();
    sendUnknownMutations(good);
    await good.waitFor(() => good.closeInfo !== null || responses(good).length === 300, "300 MutationResponses");
    const answered = responses(good);
    assert.equal(answered.length, 300, `closed early: ${JSON.stringify(good.closeInfo)} ${JSON.stringify(good.messages.at(-1))}`);
    assert.ok(answered.every((m) => m.success === false), JSON.stringify(answered.find((m) => m.success !== false)));
    assert.ok(good.isOpen, "the socket with a valid session id must stay open");
    let grown = memory.grown();
    assert.ok(grown < RSS_BUDGET, `valid session id: ${memory.report(grown)}`);
    good.close();

    // A 2 MiB session id followed by the same 300 mutations: refused at Connect.
    memory = memoryProbe(server);
    const huge = await openSync(url);
    huge.connect({ sessionId: "s".repeat(2 * MiB) });
    sendUnknownMutations(huge);
    await huge.waitFor(
      () => huge.closeInfo !== null || responses(huge).length === 300,
      "the close (or 300 MutationResponses)",
      60_000,
    );
    grown = memory.grown();
    const seen = `${memory.report(grown)}; ${responses(huge).length} MutationResponses; first message: ${JSON.stringify(huge.messages[0])?.slice(0, 200)}; close: ${JSON.stringify(huge.closeInfo)}`;
    const fatal = huge.messages.find((m) => m.type === "FatalError");
    assert.ok(fatal, `expected a FatalError for the 2 MiB session id; ${seen}`);
    assert.match(fatal.error, /^InvalidSessionId/, seen);
    assert.equal(responses(huge).length, 0, `no mutation may run on a refused Connect; ${seen}`);
    const closed = await huge.closed();
    assert.equal(closed.code, 1008, seen);
    assert.ok(grown < RSS_BUDGET, `2 MiB session id: ${seen}`);
    huge.close();
  });
});

describe("3. subscription floods are bounded", () => {
  let server;
  let url;
  const sockets = [];
  const clients = [];
  const PATH = "flood:echo";
  /**
   * What the server charges for a subscription (`subscription_cost` in nimbus-app's live.rs):
   * the path, three times the args object's JSON (held once as the key, and usually twice
   * more in the read set's range bounds) and 256 bytes of map entries.
   */
  const cost = (args) => PATH.length + 3 * JSON.stringify(args).length + 256;
  const CONNECTION_BYTES = 2 * MiB;
  const ADDRESS_BYTES = 16 * MiB;
  const CONNECTION_COUNT = 4096;
  const ADDRESS_COUNT = 10_000;
  const BIG = "x".repeat(32 * KiB);
  let nextQueryId = 0;

  /** `n` Adds of flood:echo with distinct ~32 KiB arguments. */
  function bigAdds(n) {
    return Array.from({ length: n }, () => {
      const queryId = nextQueryId++;
      const args = { s: `${queryId}:${BIG}` };
      return { type: "Add", queryId, udfPath: PATH, args: [args], cost: cost(args) };
    });
  }

  /** Sends `adds` (in batches) and splits the answers into accepted and refused. */
  async function flood(s, adds, batch = 16, { stopAtRefusal = false } = {}) {
    const result = { accepted: [], refused: [], acceptedBytes: 0 };
    for (let i = 0; i < adds.length; i += batch) {
      const chunk = adds.slice(i, i + batch);
      const answers = await modify(s, chunk.map(({ cost: _cost, ...add }) => add));
      for (const add of chunk) {
        const answer = answers.get(add.queryId);
        if (answer?.type === "QueryUpdated") {
          result.accepted.push(add);
          result.acceptedBytes += add.cost ?? 0;
        } else {
          result.refused.push({ add, answer });
        }
      }
      if (stopAtRefusal && result.refused.length > 0) {
        break;
      }
    }
    return result;
  }

  before(async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp(randomName("flood")));
    // Warm up: an HTTP call, a socket with one subscription.
    expectSuccess(assert, await callRaw(url, "query", PATH, { s: "warm" }));
    const warm = await connected(url);
    await modify(warm, [{ type: "Add", queryId: 0, udfPath: PATH, args: [{ s: "warm" }] }]);
    warm.close();
    await sleep(200); // let the server drop the warm-up socket before any baseline
  }, SETUP);

  after(async () => {
    for (const s of sockets) {
      s.close();
    }
    for (const c of clients) {
      await c.close();
    }
    await server?.cleanup();
  });

  test("(a) a byte flood over a few sockets is refused with SubscriptionsTooLarge, memory stays bounded", TEST, async () => {
    const memory = memoryProbe(server);
    // 3 sockets from 127.0.0.1, each offered 256 subscriptions of ~32 KiB (8 MiB of
    // arguments): the per-connection bound (2 MiB of estimated cost) refuses most of them.
    const results = [];
    for (let k = 0; k < 3; k++) {
      const s = await connected(url, "127.0.0.1");
      sockets.push(s);
      results.push({ s, ...(await flood(s, bigAdds(256))) });
    }
    const grown = memory.grown();
    const summary = `${memory.report(grown)}; per socket accepted/refused: ${results
      .map((r) => `${r.accepted.length}/${r.refused.length} (${mib(r.acceptedBytes)})`)
      .join(", ")}; first refusal: ${JSON.stringify(results.find((r) => r.refused.length)?.refused[0]?.answer)?.slice(0, 300)}`;

    for (const r of results) {
      assert.ok(r.refused.length > 0, `every socket must be refused past 2 MiB of subscriptions; ${summary}`);
      for (const { answer } of r.refused) {
        assert.equal(answer?.type, "QueryFailed", summary);
        assert.match(answer.errorMessage, /^SubscriptionsTooLarge:/, summary);
      }
      assert.ok(r.acceptedBytes <= CONNECTION_BYTES, `accepted more than 2 MiB on one socket; ${summary}`);
      const oneAdd = r.accepted[0]?.cost ?? 0;
      assert.ok(r.acceptedBytes > CONNECTION_BYTES - 2 * oneAdd, `refused well before 2 MiB; ${summary}`);
    }
    assert.ok(grown < RSS_BUDGET, summary);

    // A refused query is not kept: removing it is acknowledged, and the socket stays open.
    const s = results[0].s;
    const refusedId = results[0].refused[0].add.queryId;
    const answers = await modify(s, [{ type: "Remove", queryId: refusedId }]);
    assert.equal(answers.get(refusedId)?.type, "QueryRemoved", JSON.stringify(answers.get(refusedId)));
    assert.ok(s.isOpen);
  });

  test("(a) at most 10,000 subscriptions per client address (TooManySubscriptions)", TEST, async () => {
    // Three sockets from 127.0.0.4 each offered 4,200 small subscriptions: the first two are
    // bounded by the connection (4,096), the third by the address (10,000 in all).
    const counts = [];
    for (let k = 0; k < 3; k++) {
      const s = await connected(url, "127.0.0.4");
      sockets.push(s);
      const adds = Array.from({ length: 4200 }, (_, i) => ({
        type: "Add",
        queryId: i,
        udfPath: PATH,
        args: [{ s: `${i}` }],
      }));
      counts.push(await flood(s, adds, 4200));
    }
    const total = counts.reduce((sum, r) => sum + r.accepted.length, 0);
    const countSummary = `accepted per socket: ${counts.map((r) => r.accepted.length).join(", ")} (total ${total}); refusals: ${counts
      .map((r) => JSON.stringify(r.refused[0]?.answer)?.slice(0, 160))
      .join(" | ")}`;
    assert.equal(counts[0].accepted.length, CONNECTION_COUNT, countSummary);
    for (const r of counts) {
      assert.ok(r.accepted.length <= CONNECTION_COUNT, countSummary);
      for (const { answer } of r.refused) {
        assert.equal(answer?.type, "QueryFailed", countSummary);
        assert.match(answer.errorMessage, /^TooManySubscriptions:/, countSummary);
      }
    }
    assert.ok(total <= ADDRESS_COUNT, `more than ${ADDRESS_COUNT} subscriptions from one address; ${countSummary}`);
    assert.ok(total >= ADDRESS_COUNT - 100, `refused well before ${ADDRESS_COUNT}; ${countSummary}`);
    // A fourth socket from that address gets nothing more.
    const fourth = await connected(url, "127.0.0.4");
    sockets.push(fourth);
    const more = await flood(fourth, [{ type: "Add", queryId: 0, udfPath: PATH, args: [{ s: "one more" }] }]);
    assert.equal(more.accepted.length, 0, countSummary);
    assert.match(more.refused[0].answer.errorMessage, /^TooManySubscriptions:/);
  });

  test("(a) at most 16 MiB of subscriptions per client address (SubscriptionsTooLarge)", TEST, async () => {
    // Sockets from 127.0.0.5 each offered up to 80 subscriptions of ~32 KiB (7.5 MiB of
    // estimated cost) until the address's 16 MiB are used up: one socket is refused before
    // its own 2 MiB.
    const bytes = [];
    let boundedByAddress = null;
    for (let k = 0; k < 10 && boundedByAddress === null; k++) {
      const s = await connected(url, "127.0.0.5");
      sockets.push(s);
      const r = await flood(s, bigAdds(80), 16, { stopAtRefusal: true });
      bytes.push(r);
      const oneAdd = cost({ s: `${nextQueryId}:${BIG}` });
      if (r.refused.length > 0 && r.acceptedBytes < CONNECTION_BYTES - oneAdd) {
        boundedByAddress = r;
      }
    }
    const totalBytes = bytes.reduce((sum, r) => sum + r.acceptedBytes, 0);
    const bytesSummary = `accepted per socket: ${bytes
      .map((r) => `${r.accepted.length} (${mib(r.acceptedBytes)})`)
      .join(", ")}, total ${mib(totalBytes)}; refusals: ${bytes
      .map((r) => JSON.stringify(r.refused[0]?.answer)?.slice(0, 160))
      .join(" | ")}`;
    assert.ok(totalBytes <= ADDRESS_BYTES, `more than 16 MiB of subscriptions from one address; ${bytesSummary}`);
    assert.ok(boundedByAddress, `no socket was refused by the per-address byte bound; ${bytesSummary}`);
    assert.match(boundedByAddress.refused[0].answer.errorMessage, /^SubscriptionsTooLarge:/, bytesSummary);
  });

  test("(b) meanwhile, a ConvexClient from another address subscribes and sees its mutation", TEST, async () => {
    // The flood's sockets (127.0.0.1, .4, .5) are still open and at their bounds.
    const open = sockets.filter((s) => s.isOpen).length;
    assert.ok(open > 0, "the flood's sockets must still be open");
    const c = new ConvexClient(url, {
      webSocketConstructor: webSocketFrom("127.0.0.2"),
      skipConvexDeploymentUrlCheck: true,
      unsavedChangesWarning: false,
      logger: false,
    });
    clients.push(c);
    const name = randomName("other");
    const seen = [];
    const errors = [];
    c.onUpdate(api.counter.get, { name }, (value) => seen.push(value), (error) => errors.push(error));
    await until("the first result of the subscription", () => seen.length > 0 || errors.length > 0);
    assert.deepEqual({ seen, errors: errors.map(String) }, { seen: [null], errors: [] });
    assert.equal(await withTimeout(c.mutation(api.counter.increment, { name }), WAIT_MS, "the mutation"), 1);
    await until("the subscription to reflect the mutation", () => seen.at(-1) === 1);
    assert.deepEqual(errors, []);
  });

  test("(c) removing an unknown queryId is acknowledged and the socket stays open", TEST, async () => {
    const s = await connected(url, "127.0.0.6");
    sockets.push(s);
    const removed = await modify(s, [{ type: "Remove", queryId: 12345 }]);
    assert.equal(removed.get(12345)?.type, "QueryRemoved", JSON.stringify(removed.get(12345)));
    // Still usable.
    const added = await modify(s, [{ type: "Add", queryId: 1, udfPath: PATH, args: [{ s: "after" }] }]);
    assert.equal(added.get(1)?.type, "QueryUpdated", JSON.stringify(added.get(1)));
    assert.equal(added.get(1).value, 5);
    assert.ok(s.isOpen, `closed: ${JSON.stringify(s.closeInfo)}`);
  });

  test("(d) at most 1,000 WebSocket connections per client address: the next upgrade gets 429", TEST, async () => {
    const open = await Promise.allSettled(Array.from({ length: 1000 }, () => openSync(url, { localAddress: "127.0.0.7" })));
    const held = open.filter((r) => r.status === "fulfilled").map((r) => r.value);
    try {
      const failures = open.filter((r) => r.status === "rejected").map((r) => r.reason.message);
      assert.equal(held.length, 1000, `the first 1,000 must open: ${failures.slice(0, 3).join(" | ")}`);
      let refusal;
      try {
        held.push(await openSync(url, { localAddress: "127.0.0.7" }));
      } catch (error) {
        refusal = error;
      }
      assert.ok(refusal?.status, `the 1,001st connection from one address must be refused (${refusal?.message ?? "it opened"})`);
      assert.equal(refusal.status, 429, refusal.message);
      assert.equal(refusal.body?.code, "TooManyConnections", refusal.message);
      assert.equal(typeof refusal.body.message, "string", refusal.message);
      // Another address is unaffected.
      const other = await openSync(url, { localAddress: "127.0.0.8" });
      other.close();
    } finally {
      for (const s of held) {
        s.close();
      }
    }
    // Closed connections free their slots.
    const again = await until("a new connection from 127.0.0.7 once the others closed", () =>
      openSync(url, { localAddress: "127.0.0.7" }).catch(() => null),
    );
    again.close();
  });
});

describe("4. query-cache keys are bounded", () => {
  let server;
  let url;

  before(async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp(randomName("qc")));
    expectSuccess(assert, await callRaw(url, "query", "flood:echo", { s: `warm:${"w".repeat(MiB)}` }));
  }, SETUP);

  after(async () => {
    await server?.cleanup();
  });

  test("64 queries with distinct 1 MiB arguments: the server does not keep the arguments", TEST, async () => {
    const memory = memoryProbe(server);
    const payload = "y".repeat(MiB);
    for (let i = 0; i < 64; i++) {
      const s = `${i}:${payload}`;
      assert.equal(expectSuccess(assert, await callRaw(url, "query", "flood:echo", { s })), s.length);
    }
    const grown = memory.grown();
    assert.ok(grown < RSS_BUDGET, `after 64 MiB of query arguments: ${memory.report(grown)}`);
  });
});

describe("5. paginated reads are bounded per function call", () => {
  let server;
  let url;
  const DOCS = 20_000;

  before(async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp(randomName("pages")));
    // 20,000 small rows in `bulk`, 200 rows of 64 KiB (12.5 MiB) in `items` group "big".
    for (let start = 0; start < DOCS; start += 1000) {
      expectSuccess(assert, await callRaw(url, "mutation", "bulk:insertRange", { start, count: 1000 }));
    }
    for (let start = 0; start < 200; start += 20) {
      expectSuccess(assert, await callRaw(url, "mutation", "readLimits:insertBig", { start, count: 20, bytes: 64 * KiB }));
    }
  }, SETUP);

  after(async () => {
    await server?.cleanup();
  });

  const page = (fn, numItems) => callRaw(url, "query", fn, { paginationOpts: { numItems, cursor: null } });

  test("a page over more than 16,384 documents fails with Too many documents read", TEST, async () => {
    const small = expectSuccess(assert, await page("readLimits:pageBulk", 1000));
    assert.deepEqual(small, { n: 1000, isDone: false });
    expectErrorMentioning(await page("readLimits:pageBulk", 1_000_000), "Too many documents read");
    // count() is not a read of every document.
    assert.equal(expectSuccess(assert, await callRaw(url, "query", "readLimits:countBulk", {})), DOCS);
  });

  test("a page over more than 8 MiB in 200 documents fails with Too many bytes read", TEST, async () => {
    const small = expectSuccess(assert, await page("readLimits:pageBig", 50));
    assert.deepEqual(small, { n: 50, isDone: false });
    expectErrorMentioning(await page("readLimits:pageBig", 1_000_000), "Too many bytes read");
  });
});

describe("6. admin keys and data files", () => {
  let server;

  before(async () => {
    server = await NimbusServer.start();
  }, SETUP);

  after(async () => {
    await server?.cleanup();
  });

  test("(a) an instance admin key shorter than 32 characters is refused at startup", TEST, async () => {
    const weak = new NimbusServer({ adminKey: "short" });
    try {
      let started = true;
      try {
        await weak.launch();
      } catch {
        started = false;
      }
      assert.equal(started, false, "nimbus serve must not start with NIMBUS_ADMIN_KEY=short");
      assert.ok(weak.exit !== null && weak.exit.code !== 0 && weak.exit.code !== null, JSON.stringify(weak.exit));
      assert.match(fs.readFileSync(weak.logPath, "utf8"), /NIMBUS_ADMIN_KEY/, weak.logTail());
    } finally {
      await weak.cleanup();
    }
  });

  test("(b) the data directory, the catalog, the admin key and tenant files are private", SETUP, async () => {
    // A server of our own, started without NIMBUS_ADMIN_KEY (it generates admin_key) on a data
    // directory it creates itself.
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-e2e-modes-"));
    const dataDir = path.join(parent, "data");
    const logPath = path.join(parent, "server.log");
    const own = await spawnServer({ dataDir, logPath });
    try {
      const key = fs.readFileSync(path.join(dataDir, "admin_key"), "utf8").trim();
      const name = randomName("modes");
      const created = await httpRequest(`${own.url}/admin/tenants`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ name }),
      });
      assert.equal(created.status, 201, created.text);
      const url = `${own.url}/t/${name}`;
      await deploy({ appDir: APP_DIR, url, adminKey: created.body.adminKey });
      assert.equal(await client(url).mutation(api.counter.increment, { name: "x" }), 1);

      const modeOf = (p) => fs.statSync(p).mode & 0o777;
      const expected = { [dataDir]: 0o700, [path.join(dataDir, "tenants")]: 0o700 };
      // The databases and the key always; SQLite's -wal/-shm sidecars when they exist.
      for (const file of ["nimbus.sqlite3", "admin_key", `tenants/${name}.sqlite3`]) {
        expected[path.join(dataDir, file)] = 0o600;
        for (const sidecar of file.endsWith(".sqlite3") ? ["-wal", "-shm"] : []) {
          if (fs.existsSync(path.join(dataDir, file + sidecar))) {
            expected[path.join(dataDir, file + sidecar)] = 0o600;
          }
        }
      }
      const actual = Object.fromEntries(Object.keys(expected).map((p) => [p, modeOf(p).toString(8)]));
      const wanted = Object.fromEntries(Object.entries(expected).map(([p, m]) => [p, m.toString(8)]));
      assert.deepEqual(actual, wanted, "file modes under the data directory");
    } finally {
      await own.stop();
      fs.rmSync(parent, { recursive: true, force: true });
    }
  });

  test("(c) 20 failed admin authentications from one address: that address gets 429, others do not", TEST, async () => {
    const wrong = `wrong-${"k".repeat(40)}`;
    const statuses = [];
    for (let i = 0; i < 20; i++) {
      statuses.push((await adminFrom(server, "127.0.0.3", wrong)).status);
    }
    assert.ok(statuses.every((status) => status === 401 || status === 429), statuses.join(","));
    assert.equal(statuses[0], 401, statuses.join(","));

    const blocked = await adminFrom(server, "127.0.0.3", server.adminKey);
    assert.equal(blocked.status, 429, `the right key from 127.0.0.3 after 20 failures: ${blocked.status} ${blocked.text}`);
    assert.equal(blocked.body?.code, "TooManyFailedAuthentications", blocked.text);
    assert.match(String(blocked.headers["retry-after"] ?? ""), /^\d+$/, `Retry-After: ${blocked.headers["retry-after"]}`);

    const other = await adminFrom(server, "127.0.0.1", server.adminKey);
    assert.equal(other.status, 200, `127.0.0.1 must be unaffected: ${other.status} ${other.text}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Helpers of section 6.

/** `GET /admin/tenants` with `key`, sent from `localAddress`. Returns `{status, headers, body, text}`. */
function adminFrom(server, localAddress, key) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: "127.0.0.1",
          port: server.port,
          path: "/admin/tenants",
          localAddress,
          headers: { authorization: `Bearer ${key}` },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (chunk) => (text += chunk));
          res.on("end", () => {
            let body;
            try {
              body = JSON.parse(text);
            } catch {
              body = undefined;
            }
            resolve({ status: res.statusCode, headers: res.headers, body, text });
          });
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      req.end();
    }),
    WAIT_MS,
    `GET /admin/tenants from ${localAddress}`,
  );
}

/**
 * Starts `nimbus serve` on a data directory it has to create, without NIMBUS_ADMIN_KEY (the
 * harness always sets one), and waits for /health. Returns `{url, stop()}`; the process is
 * killed when this test process exits, whatever happens.
 */
async function spawnServer({ dataDir, logPath }) {
  const port = await freePort();
  const env = { ...process.env, RUST_BACKTRACE: "1" };
  delete env.NIMBUS_ADMIN_KEY;
  const log = fs.openSync(logPath, "a");
  const child = spawn(nimbusBin(), ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
    env,
    stdio: ["ignore", log, log],
  });
  fs.closeSync(log);
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  let exited = null;
  const exit = new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve((exited = { code, signal })));
    child.once("error", (error) => resolve((exited = { error })));
  });
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    child.kill("SIGTERM");
    try {
      await withTimeout(exit, 15_000, "nimbus exit after SIGTERM");
    } catch {
      child.kill("SIGKILL");
      await withTimeout(exit, 15_000, "nimbus exit after SIGKILL");
    }
    process.off("exit", killOnExit);
  };
  try {
    await until("GET /health", async () => {
      if (exited !== null) {
        throw new Error(`nimbus exited during startup (${JSON.stringify(exited)}):\n${fs.readFileSync(logPath, "utf8")}`);
      }
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) }).catch(() => null);
      return res?.status === 200;
    }, 60_000);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, stop };
}
