// The two JavaScript engines side by side: one server on V8 (`--js-engine v8`), one on QuickJS
// (`--js-engine quickjs`), the same apps pushed with the official CLI, the same calls in the
// same order. Every answer must be the same: values, error codes, error messages, ConvexError
// data and validator errors. IDs, creation times and pagination cursors (which encode both)
// differ between two servers whatever the engine, so they are replaced by placeholders (IDs
// in order of first appearance) before the comparison; errors are compared without their stack
// frames (the "    at ..." lines), which each engine formats in its own way.
//
// Beyond plain calls, the same comparison covers the scheduler (`runAfter`, `runAt` and
// `cancel` from a mutation and from an action, the `_scheduled_functions` rows and what the
// jobs did), HTTP actions (`convex/http.ts` on `--site-listen`), `fetch` from an action to a
// local server (`--egress-allow 127.0.0.1`), and environment variables read by a query, a
// mutation, an action and an HTTP action. Each of those also asserts what the answers must
// be, so that two engines broken the same way do not pass.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { NimbusServer, POS_DIR, callRaw, eventually, freePort, httpRequest } from "./harness.mjs";

const ENGINES = ["v8", "quickjs"];
const servers = {};
const tenants = {};
const sitePorts = {};
let skipped = null;

// The server the actions fetch from (one for both engines, so its address is the same in
// both transcripts), what it was asked, and a port nothing listens on.
let target;
let targetUrl;
let closedPort;
const seenByTarget = [];

before(
  async () => {
    target = http.createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        const { host, ...headers } = req.headers; // the host carries the port: same for both
        seenByTarget.push({ method: req.method, url: req.url, headers, body });
        const url = new URL(req.url, "http://target");
        if (url.pathname === "/json") {
          let parsed = null;
          try {
            parsed = body === "" ? null : JSON.parse(body);
          } catch {
            parsed = `not JSON: ${body}`;
          }
          // Two values of one header: the action's Headers joins them.
          res.writeHead(200, { "content-type": "application/json", "x-target": "yes", "x-multi": ["a", "b"] });
          res.end(JSON.stringify({ method: req.method, url: req.url, type: req.headers["content-type"] ?? null, got: parsed }));
        } else if (url.pathname === "/text") {
          res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
          res.end(`h\u00e9llo \u2603 ${req.method} ${body}`);
        } else if (url.pathname === "/teapot") {
          res.writeHead(418, "I'm a teapot", { "content-type": "text/plain" });
          res.end("short and stout");
        } else if (url.pathname === "/redirect") {
          res.writeHead(302, { location: "/json?from=redirect" });
          res.end();
        } else if (url.pathname === "/slow") {
          // Answers long after the action's own time limit; dropped when the action gives up.
          const timer = setTimeout(() => res.end("too late"), 5_000);
          res.on("close", () => clearTimeout(timer));
        } else {
          res.writeHead(404);
          res.end("no such path");
        }
      });
    });
    await new Promise((resolve) => target.listen(0, "127.0.0.1", resolve));
    targetUrl = `http://127.0.0.1:${target.address().port}`;
    closedPort = await freePort();

    for (const engine of ENGINES) {
      sitePorts[engine] = await freePort();
      try {
        servers[engine] = await NimbusServer.start({
          args: ["--js-engine", engine, "--site-listen", `127.0.0.1:${sitePorts[engine]}`, "--egress-allow", "127.0.0.1"],
        });
      } catch (error) {
        if (engine === "v8" && process.env.CI !== "true" && /no V8/.test(String(error))) {
          skipped = "this build has no V8";
          return;
        }
        throw error;
      }
      const server = servers[engine];
      tenants[engine] = {
        app: await server.tenantWithApp("diff"),
        pos: await server.tenantWithApp("diffpos", POS_DIR),
      };
    }
  },
  { timeout: 600_000 },
);

after(async () => {
  for (const server of Object.values(servers)) {
    await server?.cleanup();
  }
  target?.closeAllConnections();
  target?.close();
});

/**
 * Replaces what differs between any two servers (IDs, times, and the `replace` pairs: each
 * server's own host and port) with placeholders.
 */
function normalizer(replace = []) {
  const ids = new Map();
  const walk = (value, key) => {
    if (typeof value === "string" && (key === "continueCursor" || key === "splitCursor")) {
      return "<cursor>"; // it encodes IDs and times
    }
    if (typeof value === "string") {
      for (const [from, to] of replace) value = value.replaceAll(from, to);
      // IDs alone, or inside a message.
      return value.replace(/\b[0-9a-z]{31,37}\b/g, (token) => {
        if (!/\d/.test(token) || !/[a-z]/.test(token)) return token;
        if (!ids.has(token)) ids.set(token, `<id ${ids.size}>`);
        return ids.get(token);
      });
    }
    if (typeof value === "number" && TIME_KEYS.has(key)) {
      return "<time>";
    }
    if (Array.isArray(value)) return value.map((v) => walk(v));
    if (value !== null && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walk(v, k)]));
    }
    return value;
  };
  return walk;
}

/**
 * Fields that hold a time: they differ between two servers whatever the engine (`at` is the
 * argument of the scheduler scenario's runAt calls, taken from the test's clock).
 */
const TIME_KEYS = new Set(["_creationTime", "createdAt", "ts", "scheduledTime", "completedTime", "at"]);

/**
 * An error's text without its stack frames (the lines "    at ..."), which each engine
 * formats in its own way (docs/js-engines.md). Everything else is compared, a message of
 * several lines included: V8's `stack` repeats the message, and a copy of it left in the
 * answer would show here as extra lines.
 */
function withoutFrames(text) {
  return text
    .split("\n")
    .filter((line) => !/^\s+at /.test(line))
    .join("\n");
}

/** One call's answer, as compared: status, value or error (without its frames), code and data. */
function answer(res, normalize) {
  const body = res.body ?? {};
  if (body.status === "success") return { http: res.status, value: normalize(body.value) };
  const message = typeof body.errorMessage === "string" ? withoutFrames(body.errorMessage) : body.message;
  return {
    http: res.status,
    error: normalize(message),
    code: body.errorCode ?? body.code,
    data: body.errorData === undefined ? undefined : normalize(body.errorData),
  };
}

/**
 * The calls, in order: `[tenant, kind, path, args]`, where args may be a function of the values
 * returned so far (`got[i]`, the raw value of call i) so that later calls use earlier IDs.
 */
const CALLS = [
  // examples/pos: every function, successes and failures.
  ["pos", "mutation", "shops:create", { name: "Diff shop" }],
  ["pos", "query", "shops:get", (got) => ({ shopId: got[0] })],
  ["pos", "mutation", "products:add", (got) => ({ shopId: got[0], name: "Tea", sku: "TEA-1", priceCents: 350, stock: 5 })],
  ["pos", "mutation", "products:add", (got) => ({ shopId: got[0], name: "Cake", sku: "CAKE-1", priceCents: 425, stock: 1 })],
  ["pos", "mutation", "products:add", (got) => ({ shopId: got[0], name: "Dup", sku: "TEA-1", priceCents: 1, stock: 1 })],
  ["pos", "mutation", "products:add", (got) => ({ shopId: got[0], name: "Bad", sku: "BAD", priceCents: -5, stock: 1 })],
  ["pos", "query", "products:get", (got) => ({ productId: got[2] })],
  ["pos", "query", "products:bySku", (got) => ({ shopId: got[0], sku: "CAKE-1" })],
  ["pos", "query", "products:list", (got) => ({ shopId: got[0] })],
  ["pos", "mutation", "products:restock", (got) => ({ productId: got[3], qty: 2 })],
  ["pos", "mutation", "products:restock", (got) => ({ productId: got[3], qty: 0.5 })],
  ["pos", "mutation", "orders:create", (got) => ({ shopId: got[0], items: [{ productId: got[2], qty: 2 }, { productId: got[3], qty: 1 }] })],
  ["pos", "mutation", "orders:create", (got) => ({ shopId: got[0], items: [{ productId: got[3], qty: 99 }] })],
  ["pos", "mutation", "orders:create", (got) => ({ shopId: got[0], items: [] })],
  ["pos", "mutation", "orders:open", (got) => ({ shopId: got[0] })],
  ["pos", "query", "orders:listOpen", (got) => ({ shopId: got[0], limit: 10 })],
  ["pos", "query", "orders:get", (got) => ({ orderId: got[11].orderId })],
  ["pos", "query", "orders:page", (got) => ({ shopId: got[0], status: "open", paginationOpts: { numItems: 1, cursor: null } })],
  ["pos", "mutation", "orders:pay", (got) => ({ orderId: got[11].orderId })],
  ["pos", "mutation", "orders:pay", (got) => ({ orderId: got[11].orderId })],
  ["pos", "mutation", "orders:cancel", (got) => ({ orderId: got[14] })],
  ["pos", "query", "dashboard:summary", (got) => ({ shopId: got[0] })],
  ["pos", "query", "load:burn", { iterations: 10000, salt: "diff" }],
  // Argument validation, before any code runs.
  ["pos", "query", "shops:get", { shopId: "not-an-id" }],
  ["pos", "mutation", "orders:create", (got) => ({ shopId: got[0], items: [{ productId: got[2] }] })],
  ["pos", "query", "orders:nope", {}],
  // The e2e app: errors, validators both ways, documents, queries.
  ["app", "query", "errors:convexError", { kind: "object" }],
  ["app", "query", "errors:convexError", { kind: "string" }],
  ["app", "query", "errors:plainError", {}],
  ["app", "mutation", "errors:insertThenThrow", { owner: "diff" }],
  ["app", "mutation", "notes:add", { owner: "diff", text: "one" }],
  ["app", "mutation", "notes:add", { owner: "diff", text: "two" }],
  ["app", "query", "notes:byOwner", { owner: "diff" }],
  ["app", "mutation", "errors:writeThenConvexError", (got) => ({ owner: "diff", existing: got[30] })],
  ["app", "mutation", "errors:deleteThenThrow", (got) => ({ id: got[30] })],
  ["app", "query", "notes:list", {}],
  [
    "app",
    "query",
    "validators:echo",
    {
      s: "é ☃ \u{1F600}",
      n: 1.5,
      b: true,
      i: { $integer: "KgAAAAAAAAA=" },
      bytes: { $bytes: "AAEC/w==" },
      nul: null,
      arr: [1, -0, 1e300],
      obj: { x: "x", y: 2 },
      lit: "b",
      rec: { k: 1 },
    },
  ],
  ["app", "query", "validators:echo", { s: 1 }],
  ["app", "query", "validators:badReturn", {}],
  ["app", "query", "validators:extraReturnField", {}],
  ["app", "mutation", "validators:badReturnMutation", { owner: "diff" }],
  ["app", "query", "validators:untyped", { anything: [1, "two", { three: 3 }] }],
  ["app", "mutation", "validators:sumLength", { payload: "x".repeat(1000) }],
  ["app", "mutation", "items:insert", { group: "g", n: 1, name: "a", tags: ["t"], big: { $integer: "AQAAAAAAAAA=" } }],
  ["app", "mutation", "items:insert", { group: "g", n: 2, name: "b" }],
  ["app", "mutation", "items:insertAny", { doc: { group: 5 } }],
  ["app", "query", "items:get", (got) => ({ id: got[44] })],
  ["app", "query", "items:getLoose", { id: "nonsense" }],
  ["app", "query", "items:normalize", (got) => ({ table: "notes", id: got[44] })],
  ["app", "mutation", "items:patch", (got) => ({ id: got[44], name: "a2", n: 3 })],
  ["app", "mutation", "items:replace", (got) => ({ id: got[45], doc: { group: "g", n: 4, name: "b2" } })],
  ["app", "query", "items:all", {}],
  ["app", "query", "items:count", {}],
  ["app", "mutation", "items:remove", (got) => ({ id: got[45] })],
  ["app", "query", "items:all", {}],
  // Index ranges, filters, pagination and counts over a few more rows.
  ["app", "mutation", "items:insertMany", { items: [3, 5, 7, 9, 11].map((n) => ({ group: "r", n, name: `r${n}`, tags: [String(n)] })) }],
  ["app", "query", "items:range", { group: "r", gte: 5, lt: 11, order: "desc" }],
  ["app", "query", "items:range", { group: "r", gt: 3, take: 2 }],
  ["app", "query", "items:byN", { gte: 4, lt: 10 }],
  ["app", "query", "items:first", { group: "r", order: "desc" }],
  ["app", "query", "items:uniqueByN", { n: 7 }],
  ["app", "query", "items:page", { group: "r", paginationOpts: { numItems: 2, cursor: null } }],
  ["app", "query", "items:createdAfter", { after: 0 }],
  ...["eqAndRange", "orNot", "nestedField", "arithmetic", "missingField", "int64"].map((kind) => ["app", "query", "items:filtered", { kind, group: "r" }]),
  ["app", "query", "items:rangeFilterTake", { group: "r", take: 2 }],
  ["app", "query", "items:firstNames", { group: "r", max: 3 }],
  ["app", "query", "items:count", {}],
  // Actions: nested calls through ctx.run*, and an action's own errors.
  ["app", "action", "actions:pipeline", { owner: "act", text: "from an action" }],
  ["app", "query", "actions:countNotes", { owner: "act" }],
  ["app", "action", "actions:envOf", { name: "NOT_SET_ANYWHERE" }],
  ["app", "action", "actions:recurse", { depth: 3 }],
];

test("every function answers the same on V8 and on QuickJS", { timeout: 600_000 }, async (t) => {
  if (skipped !== null) {
    t.skip(skipped);
    return;
  }
  const transcripts = {};
  for (const engine of ENGINES) {
    const normalize = normalizer();
    const got = [];
    const transcript = [];
    for (const [tenant, kind, path, args] of CALLS) {
      const resolved = typeof args === "function" ? args(got) : args;
      const res = await callRaw(tenants[engine][tenant].url, kind, path, resolved);
      got.push(res.body?.value);
      transcript.push({ call: `${tenant} ${path}`, ...answer(res, normalize) });
    }
    transcripts[engine] = transcript;
  }
  const [v8, quickjs] = [transcripts.v8, transcripts.quickjs];
  // The calls did what they were meant to: both kinds of answer are in the transcript.
  assert.ok(v8.filter((a) => a.value !== undefined).length >= 30, JSON.stringify(v8, null, 1));
  assert.ok(v8.filter((a) => a.code === "ConvexError").length >= 3, JSON.stringify(v8, null, 1));
  assert.ok(v8.filter((a) => a.code === "ArgumentValidationError").length >= 2, JSON.stringify(v8, null, 1));
  for (let i = 0; i < CALLS.length; i++) {
    assert.deepEqual(quickjs[i], v8[i], `call ${i} (${v8[i].call}) differs between the engines`);
  }
});

// ---------------------------------------------------------------------------------------------
// Scenarios: the scheduler, HTTP actions, fetch and environment variables. Each runs the same
// steps on each engine in turn; `record` adds a step's answer to that engine's transcript,
// and the two transcripts must be equal once normalized. A scenario also asserts what each
// answer must be (on the raw values), so both engines being wrong in the same way fails too.

/**
 * Runs `scenario({engine, tenant, site, record})` on V8, then on QuickJS, and compares their
 * transcripts step by step. A scenario's assertion failing on one engine does not stop the
 * other: the transcripts are compared first (so a difference is reported as one, with both
 * answers), then the first failure is thrown.
 */
async function differential(t, scenario) {
  if (skipped !== null) {
    t.skip(skipped);
    return;
  }
  const transcripts = {};
  const failures = [];
  for (const engine of ENGINES) {
    const hostOf = (port) => new RegExp(`127\\.0\\.0\\.1:${port}(?!\\d)`, "g");
    const normalize = normalizer([
      [hostOf(servers[engine].port), "<api-host>"],
      [hostOf(sitePorts[engine]), "<site-host>"],
    ]);
    const transcript = [];
    // `extra` (a call's arguments) is compared too: it holds IDs of earlier answers.
    const record = (step, value, extra = {}) => {
      transcript.push(normalize(withoutStackFrames({ step, ...extra, value })));
      return value;
    };
    try {
      await scenario({
        engine,
        tenant: tenants[engine].app,
        site: `http://127.0.0.1:${sitePorts[engine]}/t/diff`,
        record,
      });
    } catch (error) {
      error.message = `on ${engine}: ${error.message}`;
      failures.push(error);
    }
    transcripts[engine] = transcript;
  }
  const [v8, quickjs] = [transcripts.v8, transcripts.quickjs];
  for (let i = 0; i < Math.min(v8.length, quickjs.length); i++) {
    assert.deepEqual(quickjs[i], v8[i], `step ${i} (${v8[i].step}) differs between the engines`);
  }
  if (failures.length > 0) throw failures[0];
  assert.equal(quickjs.length, v8.length, "both engines went through every step");
}

/**
 * Error texts that carry a stack trace (a failed job's `state.error`, an HTTP action's 500
 * body) without their frames, as the calls above compare errors.
 */
function withoutStackFrames(value) {
  if (typeof value === "string") return withoutFrames(value);
  if (Array.isArray(value)) return value.map(withoutStackFrames);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withoutStackFrames(v)]));
  }
  return value;
}

/** A function call's answer as compared: `{http, value}` or `{http, error (without frames), code, data}`. */
async function call(tenant, record, kind, path, args) {
  const res = await callRaw(tenant.url, kind, path, args);
  return record(`${kind} ${path}`, answer(res, (v) => v), { args });
}

/** The value of a successful call (fails the test, with the answer, otherwise). */
function valueOf(result) {
  assert.ok("value" in result && result.error === undefined, `expected a value: ${JSON.stringify(result)}`);
  return result.value;
}

test("the scheduler behaves the same on V8 and on QuickJS", { timeout: 120_000 }, async (t) => {
  await differential(t, async ({ tenant, record }) => {
    const fn = (kind, path, args) => call(tenant, record, kind, path, args);
    const job = async (id) => valueOf(await fn("query", "scheduler:job", { id }));

    // From a mutation: runAfter twice (1 s out; the second is canceled by a mutation),
    // runAt in the past (due at once), a scheduled action, a failing job, a job with
    // arguments of every type, and a mutation that schedules and throws (schedules nothing).
    const before = Date.now();
    const [first, second] = valueOf(
      await fn("mutation", "scheduler:scheduleBump", { key: "d-after", delayMs: 1000, times: 2 }),
    );
    const afterCall = Date.now();
    const pending = await job(first);
    assert.equal(pending.state.kind, "pending", JSON.stringify(pending));
    assert.equal(pending.name, "scheduler.js:bump");
    assert.deepEqual(pending.args, [{ key: "d-after" }]);
    // runAfter is relative to the mutation's own clock (its start): within the call's span.
    assert.ok(
      pending.scheduledTime >= before + 1000 - 5 && pending.scheduledTime <= afterCall + 1000 + 5,
      `scheduledTime ${pending.scheduledTime} outside [${before + 1000}, ${afterCall + 1000}]`,
    );
    assert.equal(pending.completedTime, undefined);
    valueOf(await fn("mutation", "scheduler:cancel", { id: second }));
    const canceled = await job(second);
    assert.equal(canceled.state.kind, "canceled");
    assert.equal(typeof canceled.completedTime, "number");

    const past = valueOf(await fn("mutation", "scheduler:scheduleAt", { key: "d-at", at: Date.now() - 60_000 }));
    const scheduledAction = valueOf(await fn("mutation", "scheduler:scheduleAction", { key: "d-action", delayMs: 0 }));
    const failing = valueOf(await fn("mutation", "scheduler:scheduleFailure", {}));
    const typedValue = {
      s: "é ☃ \u{1F600}",
      f: 1.5,
      neg0: { $float: "AAAAAAAAAIA=" }, // -0
      inf: { $float: "AAAAAAAA8H8=" }, // Infinity
      nan: { $float: "AAAAAAAA+H8=" }, // NaN
      big: { $integer: "KgAAAAAAAAA=" }, // 42n
      bytes: { $bytes: "AAEC/w==" },
      list: [true, null, [1]],
    };
    const typed = valueOf(await fn("mutation", "scheduler:scheduleDescribe", { key: "d-typed", value: typedValue, delayMs: 0 }));
    const thrown = await fn("mutation", "scheduler:scheduleThenThrow", { key: "d-thrown" });
    assert.match(thrown.error ?? "", /changed my mind/, JSON.stringify(thrown));

    // From an action (each commits at once): runAfter; runAfter then cancel in the same
    // action; runAt with a Date; cancel of a job a mutation scheduled.
    const fromAction = valueOf(await fn("action", "scheduler:fromAction", { key: "d-from-action", delayMs: 0 }));
    const canceledInAction = valueOf(
      await fn("action", "scheduler:fromAction", { key: "d-action-canceled", delayMs: 60_000, cancel: true }),
    );
    const at = Date.now() + 300;
    const atFromAction = valueOf(await fn("action", "scheduler:atFromAction", { key: "d-at-from-action", at }));
    const [victim] = valueOf(await fn("mutation", "scheduler:scheduleBump", { key: "d-canceled-by-action", delayMs: 60_000 }));
    assert.equal(valueOf(await fn("action", "scheduler:cancelFromAction", { id: victim })), null);

    // Wait (bounded) until every job has finished one way or another; the polls are not
    // recorded, since how many it takes depends on timing.
    const ids = { first, second, past, scheduledAction, failing, typed, fromAction, canceledInAction, atFromAction, victim };
    await eventually("every job to finish", async () => {
      for (const id of Object.values(ids)) {
        const res = await callRaw(tenant.url, "query", "scheduler:job", { id });
        if (!["success", "failed", "canceled"].includes(res.body?.value?.state?.kind)) return false;
      }
      return true;
    });

    // The rows, in a fixed order, and what the jobs did.
    const rows = {};
    for (const [name, id] of Object.entries(ids)) rows[name] = await job(id);
    const expected = {
      first: ["success", "scheduler.js:bump", { key: "d-after" }],
      second: ["canceled", "scheduler.js:bump", { key: "d-after" }],
      past: ["success", "scheduler.js:bump", { key: "d-at" }],
      scheduledAction: ["success", "scheduler.js:bumpLater", { key: "d-action" }],
      failing: ["failed", "scheduler.js:fail", {}],
      typed: ["success", "scheduler.js:describeArgs", { key: "d-typed", value: typedValue }],
      fromAction: ["success", "scheduler.js:bump", { key: "d-from-action" }],
      canceledInAction: ["canceled", "scheduler.js:bump", { key: "d-action-canceled" }],
      atFromAction: ["success", "scheduler.js:bump", { key: "d-at-from-action" }],
      victim: ["canceled", "scheduler.js:bump", { key: "d-canceled-by-action" }],
    };
    for (const [name, [state, fnName, args]] of Object.entries(expected)) {
      const row = rows[name];
      assert.equal(row.state.kind, state, `${name}: ${JSON.stringify(row)}`);
      assert.equal(row.name, fnName, `${name}: ${JSON.stringify(row)}`);
      assert.deepEqual(row.args, [args], `${name}: ${JSON.stringify(row)}`);
      assert.equal(typeof row.completedTime, "number", `${name}: ${JSON.stringify(row)}`);
    }
    assert.match(rows.failing.state.error, /this scheduled mutation fails on purpose/, JSON.stringify(rows.failing));
    assert.ok(Math.abs(rows.atFromAction.scheduledTime - at) < 1, `runAt(new Date(${at})): ${JSON.stringify(rows.atFromAction)}`);
    assert.ok(rows.past.scheduledTime < Date.now() - 50_000, JSON.stringify(rows.past));

    const runs = async (key) => valueOf(await fn("query", "scheduler:runs", { key }));
    for (const key of ["d-after", "d-at", "d-action", "d-from-action", "d-at-from-action"]) {
      assert.equal((await runs(key))?.n, 1, `${key} ran once`);
    }
    for (const key of ["d-thrown", "d-action-canceled", "d-canceled-by-action"]) {
      assert.equal(await runs(key), null, `${key} never ran`);
    }
    // A scheduled mutation sees its own job in progress, under its own ID.
    const ran = await runs("d-after");
    assert.equal(ran.sawState, "inProgress");
    assert.equal(ran.sawJobId, first);
    // The job's arguments reached it as the types they were sent as (an object's fields in
    // sorted order, as Convex stores objects).
    const notes = valueOf(await fn("query", "notes:byOwner", { owner: "d-typed" }));
    assert.deepEqual(
      notes.map((n) => n.text),
      ['{big: 42n, bytes: bytes(0 1 2 255), f: 1.5, inf: Infinity, list: [true, null, [1]], nan: NaN, neg0: -0, s: "é ☃ \u{1F600}"}'],
    );
    // Nothing of the mutation that threw.
    const bumps = valueOf(await fn("query", "scheduler:jobsNamed", { name: "scheduler.js:bump" }));
    assert.ok(!bumps.some((j) => j.args[0].key === "d-thrown"), JSON.stringify(bumps));
  });
});

test("HTTP actions answer the same on V8 and on QuickJS", { timeout: 60_000 }, async (t) => {
  await differential(t, async ({ site, record }) => {
    /** One request to the tenant's site; the answer without its Date header. */
    const request = (path, { method = "GET", body, headers = {} } = {}) =>
      new Promise((resolve, reject) => {
        const req = http.request(`${site}${path}`, { method, headers, timeout: 30_000 }, (res) => {
          const chunks = [];
          res.on("data", (chunk) => chunks.push(chunk));
          res.on("end", () => {
            const bytes = Buffer.concat(chunks);
            const { date, ...rest } = res.headers;
            const text = bytes.toString("utf8");
            let json;
            try {
              json = JSON.parse(text);
            } catch {
              json = undefined;
            }
            const type = res.headers["content-type"] ?? "";
            const got = {
              status: res.statusCode,
              headers: rest,
              ...(type.startsWith("application/octet-stream") ? { hex: bytes.toString("hex") } : { text }),
              ...(json === undefined ? {} : { json }),
            };
            // A JSON error body with a stack trace is compared by its parsed fields (whose
            // message loses its frames); its raw text and length hold the frames.
            const stack = json !== undefined && /\\n\s+at /.test(text);
            const { "content-length": _, ...withoutLength } = rest;
            record(`${method} ${path}`, stack ? { ...got, headers: withoutLength, text: undefined } : got);
            resolve(got);
          });
        });
        req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
        req.on("error", reject);
        req.end(body);
      });

    // The request as the handler sees it: method, path, query (repeated and encoded), headers, body.
    const get = await request("/echo/a/b?x=1&x=2&y=%C3%A9+%E2%98%83", { headers: { "x-diff": "one" } });
    assert.equal(get.status, 200, get.text);
    assert.equal(get.headers["x-echo"], "yes");
    assert.match(get.headers["content-type"], /^application\/json/);
    assert.equal(get.json.method, "GET");
    assert.equal(get.json.path, "/t/diff/echo/a/b");
    assert.deepEqual(get.json.query, [["x", "1"], ["x", "2"], ["y", "é ☃"]]);
    assert.ok(get.json.headers.some(([k, v]) => k === "x-diff" && v === "one"), get.text);
    assert.equal(get.json.text, "");
    assert.equal(get.json.echoEnv, null);
    const payload = { hello: "wörld", list: [1, 2.5, null, true], nested: { deep: "☃" } };
    const post = await request("/echo/post", {
      method: "POST",
      body: JSON.stringify(payload),
      headers: { "content-type": "application/json" },
    });
    assert.equal(post.json.method, "POST");
    assert.deepEqual(post.json.json, payload);
    const put = await request("/echo/put", { method: "PUT", body: "plain text ☃", headers: { "content-type": "text/plain" } });
    assert.equal(put.json.text, "plain text ☃");
    assert.equal(put.json.json, null);
    assert.equal((await request("/echo/patch", { method: "PATCH", body: "[1]" })).json.method, "PATCH");
    assert.equal((await request("/echo/delete", { method: "DELETE" })).json.method, "DELETE");
    const head = await request("/echo/head", { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.text, "");

    // Responses the handler builds: status, status text, repeated headers, bodies of each kind.
    const text = await request("/respond?kind=text");
    assert.equal(text.status, 418);
    assert.equal(text.headers["x-multi"], "one, two");
    assert.equal(text.text, "short and stout \u2615");
    const json = await request("/respond?kind=json");
    assert.equal(json.status, 201);
    assert.match(json.headers["content-type"], /^application\/json/);
    assert.deepEqual(json.json, { created: true, n: 1.5, list: [1, "two", null] });
    const bytes = await request("/respond?kind=bytes");
    assert.equal(bytes.hex, "000102feff");
    const empty = await request("/respond?kind=empty");
    assert.equal(empty.status, 204);
    assert.equal(empty.text, "");
    const redirect = await request("/respond?kind=redirect");
    assert.equal(redirect.status, 307);
    assert.equal(redirect.headers.location, "https://example.com/elsewhere");

    // A handler that calls a query and reads CONVEX_SITE_URL; one that throws; no route.
    const notes = await request("/notes?owner=nobody");
    assert.deepEqual(notes.json, { owner: "nobody", count: 0, site: site });
    const failing = await request("/fail");
    assert.equal(failing.status, 500, failing.text);
    assert.equal(failing.json.code, "UncaughtError");
    assert.match(failing.json.message, /the handler failed on purpose/);
    const none = await request("/nope");
    assert.equal(none.status, 404);
    assert.equal(none.text, "No HttpAction routed for /nope");
  });
});

test("fetch from an action answers the same on V8 and on QuickJS", { timeout: 60_000 }, async (t) => {
  await differential(t, async ({ tenant, record }) => {
    const detail = async (args) => valueOf(await call(tenant, record, "action", "actions:fetchDetail", args));
    seenByTarget.length = 0;

    const got = await detail({ url: `${targetUrl}/json?q=1`, headers: { "x-diff": "get" } });
    assert.equal(got.status, 200, JSON.stringify(got));
    assert.equal(got.ok, true);
    assert.equal(got.redirected, false);
    assert.equal(got.url, `${targetUrl}/json?q=1`);
    assert.ok(got.headers.some(([k, v]) => k === "x-multi" && v === "a, b"), JSON.stringify(got.headers));
    assert.deepEqual(got.body, { method: "GET", url: "/json?q=1", type: null, got: null });
    // A JSON round trip: sent as the body, parsed by the server, sent back, parsed by response.json().
    const payload = { a: 1, s: "ü ☃ \u{1F600}", nested: { list: [true, null, 2.5] } };
    const posted = await detail({
      url: `${targetUrl}/json`,
      method: "POST",
      headers: { "content-type": "application/json" },
      json: payload,
    });
    assert.deepEqual(posted.body, { method: "POST", url: "/json", type: "application/json", got: payload });
    const put = await detail({ url: `${targetUrl}/text`, method: "PUT", json: "raw" });
    assert.equal(put.body, 'h\u00e9llo \u2603 PUT "raw"');
    const teapot = await detail({ url: `${targetUrl}/teapot` });
    assert.equal(teapot.status, 418);
    assert.equal(teapot.ok, false);
    assert.equal(teapot.body, "short and stout");
    const redirected = await detail({ url: `${targetUrl}/redirect` });
    assert.equal(redirected.redirected, true);
    assert.equal(redirected.url, `${targetUrl}/json?from=redirect`);
    assert.deepEqual(redirected.body, { method: "GET", url: "/json?from=redirect", type: null, got: null });
    // The existing echo action: body bytes and their SHA-256 inside the engine.
    const echo = valueOf(await call(tenant, record, "action", "actions:fetchEcho", { url: `${targetUrl}/json`, body: '{"x":1}' }));
    assert.equal(echo.sha256.length, 64);

    // Failures: a time limit, a port nothing listens on, an address the egress policy refuses.
    const slow = await detail({ url: `${targetUrl}/slow`, timeoutMs: 200 });
    assert.match(slow.error ?? "", /^(TimeoutError|AbortError)/, JSON.stringify(slow));
    const refused = await detail({ url: `http://127.0.0.1:${closedPort}/` });
    assert.match(refused.error ?? "", /^TypeError: fetch failed/, JSON.stringify(refused));
    const metadata = await detail({ url: "http://169.254.169.254/latest/meta-data/" });
    assert.match(metadata.error ?? "", /^TypeError: fetch failed: .*egress policy/, JSON.stringify(metadata));

    // What the engine sent, as the server saw it.
    record("requests the target saw", seenByTarget.slice());
    assert.ok(
      seenByTarget.some((r) => r.method === "GET" && r.url === "/json?q=1" && r.headers["x-diff"] === "get"),
      JSON.stringify(seenByTarget),
    );
  });
});

test("environment variables read the same on V8 and on QuickJS", { timeout: 60_000 }, async (t) => {
  await differential(t, async ({ tenant, site, record }) => {
    // As `npx convex env set|remove` sends them (cli.test.mjs runs the CLI itself).
    const update = async (changes) => {
      const res = await httpRequest(`${tenant.url}/api/update_environment_variables`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Convex ${tenant.adminKey}` },
        body: JSON.stringify({ changes }),
      });
      record(`update ${JSON.stringify(changes)}`, { status: res.status, body: res.body });
      assert.equal(res.status, 200, res.text);
    };
    /** The variable as a query, a mutation, an action and an HTTP action see it. */
    const read = async (name) => {
      const seen = {
        query: valueOf(await call(tenant, record, "query", "env:get", { name })),
        mutation: valueOf(await call(tenant, record, "mutation", "env:read", { name })),
        action: valueOf(await call(tenant, record, "action", "actions:envOf", { name })),
      };
      if (name === "ECHO_ENV") {
        const res = await httpRequest(`${site}/echo/env`);
        seen.http = record("GET /echo/env", res.body?.echoEnv);
      }
      return seen;
    };
    const everywhere = (value) => ({ query: value, mutation: value, action: value });

    assert.deepEqual(await read("DIFF_UNSET"), everywhere(null));
    assert.deepEqual(await read("ECHO_ENV"), { ...everywhere(null), http: null });
    const first = "first value = é ☃ \u{1F600}";
    await update([
      { name: "ECHO_ENV", value: first },
      { name: "DIFF_OTHER", value: "other" },
    ]);
    assert.deepEqual(await read("ECHO_ENV"), { ...everywhere(first), http: first });
    assert.deepEqual(await read("DIFF_OTHER"), everywhere("other"));
    assert.deepEqual(await read("DIFF_UNSET"), everywhere(null));
    // A change of value and a removal in one update: every call after it sees both.
    await update([
      { name: "ECHO_ENV", value: "second" },
      { name: "DIFF_OTHER", value: null },
    ]);
    assert.deepEqual(await read("ECHO_ENV"), { ...everywhere("second"), http: "second" });
    assert.deepEqual(await read("DIFF_OTHER"), everywhere(null));
    // Unset again, so the tenant is as it was (the HTTP scenario expects no ECHO_ENV).
    await update([{ name: "ECHO_ENV", value: null }]);
    assert.deepEqual(await read("ECHO_ENV"), { ...everywhere(null), http: null });
  });
});
