// Pushing code with the official CLI: push, re-push, atomic replacement under load, a schema
// change that existing documents violate, and code + schema surviving restarts.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  APP_DIR,
  NimbusServer,
  api,
  callRaw,
  client,
  deploy,
  expectFunctionError,
  expectSuccess,
  makeAppVariant,
  removeAppVariant,
} from "./harness.mjs";

let server;
let tenant;
let url;
let c;
const variants = [];

/** The app with repush.ts/repushHelper.ts at `version`, onlyInV1 replaced by onlyIn<version>. */
function versionVariant(version, extraEdits = {}) {
  const dir = makeAppVariant(APP_DIR, `push-${version}`, {
    "convex/repushHelper.ts": `export const HELPER_VERSION = "${version}";\n`,
    "convex/repush.ts": (src) =>
      src
        .replace('const VERSION = "v1";', `const VERSION = "${version}";`)
        .replace("export const onlyInV1", `export const onlyIn${version.toUpperCase()}`)
        .replace('"v1 only"', `"${version} only"`),
    ...extraEdits,
  });
  variants.push(dir);
  return dir;
}

before(
  async () => {
    server = await NimbusServer.start();
    tenant = await server.createTenant("pusher");
    url = server.tenantUrl("pusher");
    c = client(url);
  },
  { timeout: 120_000 },
);

after(async () => {
  await server?.cleanup();
  for (const dir of variants) {
    removeAppVariant(dir);
  }
});

test("a first push makes the functions callable", { timeout: 240_000 }, async () => {
  // Before any push, functions do not exist.
  expectFunctionError(assert, await callRaw(url, "query", "repush:version", {}), "FunctionNotFound");
  const out = await deploy({ appDir: APP_DIR, url, adminKey: tenant.adminKey, server });
  assert.equal(out.code, 0);
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v1", helper: "v1" });
  assert.equal(await c.query(api.repush.onlyInV1, {}), "v1 only");
  await c.mutation(api.things.add, { label: "a" });
  await c.mutation(api.things.add, { label: "b" });
});

test("re-pushing the same code succeeds and keeps the data", { timeout: 240_000 }, async () => {
  await deploy({ appDir: APP_DIR, url, adminKey: tenant.adminKey, server });
  assert.deepEqual(await c.query(api.things.labels, {}), ["a", "b"]);
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v1", helper: "v1" });
});

test("a re-push replaces the code atomically while clients keep calling", { timeout: 240_000 }, async () => {
  const dir = versionVariant("v2");
  const seen = [];
  let pushing = true;
  const poller = (async () => {
    while (pushing) {
      const res = await callRaw(url, "query", "repush:version", {});
      seen.push(res.status === 200 && res.body?.status === "success" ? res.body.value : { failed: res.text });
    }
  })();
  try {
    await deploy({ appDir: dir, url, adminKey: tenant.adminKey, server });
  } finally {
    pushing = false;
    await poller;
  }
  assert.ok(seen.length > 0, "the poller must have run during the push");
  let switched = false;
  for (const value of seen) {
    assert.ok(
      (value.version === "v1" || value.version === "v2") && value.helper === value.version,
      `every call sees one whole version, got ${JSON.stringify(value)}`,
    );
    if (value.version === "v2") {
      switched = true;
    } else {
      assert.equal(switched, false, "once v2 answered, v1 must never answer again");
    }
  }
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v2", helper: "v2" });
  expectFunctionError(assert, await callRaw(url, "query", "repush:onlyInV1", {}), "FunctionNotFound");
  assert.equal(await c.query(api.repush.onlyInV2, {}), "v2 only");
  assert.deepEqual(await c.query(api.things.labels, {}), ["a", "b"]);
});

test("a schema that existing documents violate fails the push and changes nothing", { timeout: 240_000 }, async () => {
  const dir = versionVariant("v3", {
    "convex/schema.ts": (src) =>
      src.replace("things: defineTable({ label: v.string() })", "things: defineTable({ label: v.number() })"),
  });
  const out = await deploy({ appDir: dir, url, adminKey: tenant.adminKey, server, expectSuccess: false });
  assert.notEqual(out.code, 0, `the push must fail:\n${out.output}`);
  assert.match(out.output, /things/, `the CLI must show the failing table:\n${out.output}`);
  // Still v2: code, schema and data untouched.
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v2", helper: "v2" });
  expectFunctionError(assert, await callRaw(url, "query", "repush:onlyInV3", {}), "FunctionNotFound");
  assert.deepEqual(await c.query(api.things.labels, {}), ["a", "b"]);
  // The old schema is still enforced: string labels are accepted.
  await c.mutation(api.things.add, { label: "c" });
});

test("a compatible schema change (new optional field, new index) succeeds", { timeout: 240_000 }, async () => {
  const dir = versionVariant("v4", {
    "convex/schema.ts": (src) =>
      src.replace(
        "things: defineTable({ label: v.string() })",
        'things: defineTable({ label: v.string(), note: v.optional(v.string()) }).index("by_label", ["label"])',
      ),
    "convex/thingsByLabel.ts": `import { v } from "convex/values";
import { query } from "./_generated/server";

export const first = query({
  args: { label: v.string() },
  returns: v.union(v.string(), v.null()),
  handler: async (ctx, { label }) => {
    const row = await ctx.db
      .query("things")
      .withIndex("by_label", (q) => q.eq("label", label))
      .first();
    return row === null ? null : row.label;
  },
});
`,
  });
  await deploy({ appDir: dir, url, adminKey: tenant.adminKey, server });
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v4", helper: "v4" });
  assert.equal(await c.query(api.thingsByLabel.first, { label: "b" }), "b");
  assert.equal(await c.query(api.thingsByLabel.first, { label: "zzz" }), null);
});

test("pushed code and schema survive restarts (SIGTERM and SIGKILL)", { timeout: 240_000 }, async () => {
  const schemaRejects = async () => {
    const res = await callRaw(url, "mutation", "items:insertAny", { doc: { group: 1, n: "x", name: 2 } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.status, "error", `the schema must reject the row: ${res.text}`);
  };
  await schemaRejects();
  for (const signal of ["SIGTERM", "SIGKILL"]) {
    await server.restart(signal);
    assert.deepEqual(await c.query(api.repush.version, {}), { version: "v4", helper: "v4" });
    assert.equal(await c.query(api.thingsByLabel.first, { label: "a" }), "a");
    assert.deepEqual(await c.query(api.things.labels, {}), ["a", "b", "c"]);
    await schemaRejects();
    assert.deepEqual(await c.query(api.items.all, {}), [], "rejected rows were not stored");
  }
});

test("the tenant admin key still pushes after a restart; a wrong key does not", { timeout: 240_000 }, async () => {
  await deploy({ appDir: APP_DIR, url, adminKey: tenant.adminKey, server });
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v1", helper: "v1" });
  const bad = await deploy({
    appDir: APP_DIR,
    url,
    adminKey: `pusher|${"0".repeat(32)}`,
    server,
    expectSuccess: false,
  });
  assert.notEqual(bad.code, 0, `a wrong admin key must fail the push:\n${bad.output}`);
  assert.match(bad.output, /401|Unauthenticated/, bad.output);
  assert.equal(expectSuccess(assert, await callRaw(url, "query", "limits:ping", {})), "pong");
});

test('a "use node" module fails the push with a message naming it, and changes nothing', { timeout: 240_000 }, async () => {
  const dir = versionVariant("v6", {
    "convex/nodeOnly.ts": `"use node";\nimport { action } from "./_generated/server";\nexport const hostname = action({ args: {}, handler: async () => "node" });\n`,
  });
  const out = await deploy({ appDir: dir, url, adminKey: tenant.adminKey, server, expectSuccess: false });
  assert.notEqual(out.code, 0, `the push must fail:\n${out.output}`);
  assert.match(out.output, /nodeOnly\.js: modules with "use node"/, out.output);
  assert.deepEqual(await c.query(api.repush.version, {}), { version: "v1", helper: "v1" });
});
