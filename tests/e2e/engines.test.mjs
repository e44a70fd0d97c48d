// The two JavaScript engines side by side: one server on V8 (`--js-engine v8`), one on QuickJS
// (`--js-engine quickjs`), the same apps pushed with the official CLI, the same calls in the
// same order. Every answer must be the same: values, error codes, error messages, ConvexError
// data and validator errors. IDs, creation times and pagination cursors (which encode both)
// differ between two servers whatever the engine, so they are replaced by placeholders (IDs
// in order of first appearance) before the comparison; errors are compared by their first line, since a stack trace's frames are
// formatted by the engine.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, POS_DIR, callRaw } from "./harness.mjs";

const ENGINES = ["v8", "quickjs"];
const servers = {};
const tenants = {};
let skipped = null;

before(
  async () => {
    for (const engine of ENGINES) {
      try {
        servers[engine] = await NimbusServer.start({ args: ["--js-engine", engine] });
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
});

/** Replaces what differs between any two servers (IDs, creation times) with placeholders. */
function normalizer() {
  const ids = new Map();
  const walk = (value, key) => {
    if (typeof value === "string" && (key === "continueCursor" || key === "splitCursor")) {
      return "<cursor>"; // it encodes IDs and times
    }
    if (typeof value === "string") {
      // IDs alone, or inside a message.
      return value.replace(/\b[0-9a-z]{31,37}\b/g, (token) => {
        if (!/\d/.test(token) || !/[a-z]/.test(token)) return token;
        if (!ids.has(token)) ids.set(token, `<id ${ids.size}>`);
        return ids.get(token);
      });
    }
    if (typeof value === "number" && (key === "_creationTime" || key === "createdAt" || key === "ts")) {
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

/** One call's answer, as compared: status, value or error (first line), code and data. */
function answer(res, normalize) {
  const body = res.body ?? {};
  if (body.status === "success") return { http: res.status, value: normalize(body.value) };
  const firstLine = typeof body.errorMessage === "string" ? body.errorMessage.split("\n")[0] : body.message;
  return {
    http: res.status,
    error: normalize(firstLine),
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
