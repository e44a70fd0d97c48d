// V8 code caches made after a push's first call are saved with the tenant and come back
// after a restart (docs/js-engines.md, "Code caches"). Push-time analysis caches only the
// modules' top level; the push's first runtime makes them again after its first call, with
// the functions that call compiled, and the server writes them to the tenant's namespace
// once. After a restart the tenant's activation gives them back, and no runtime makes them
// again. Seen through /metrics (`nimbus_js_code_caches_saved_total`, `..._restored_total`),
// with the answers checked all along; a record saved for an earlier push is not given to a
// later one. V8 only: QuickJS keeps no compiled code.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { APP_DIR, NimbusServer, callRaw, deploy, eventually, httpRequest } from "./harness.mjs";

let server;
let skipped = null;

before(
  async () => {
    try {
      server = await NimbusServer.start({ args: ["--js-engine", "v8"] });
    } catch (error) {
      if (process.env.CI !== "true" && /no V8/.test(String(error))) {
        skipped = "this build has no V8";
        return;
      }
      throw error;
    }
  },
  { timeout: 120_000 },
);

after(async () => {
  await server?.cleanup();
});

/** The two counters, from /metrics. */
async function counters() {
  const res = await httpRequest(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${server.adminKey}` },
  });
  assert.equal(res.status, 200, res.text);
  const value = (name) => {
    const line = res.text.split("\n").find((l) => l.startsWith(`${name} `));
    assert.ok(line, `${name} is missing from /metrics`);
    return Number(line.split(" ")[1]);
  };
  return {
    saved: value("nimbus_js_code_caches_saved_total"),
    restored: value("nimbus_js_code_caches_restored_total"),
  };
}

/** The counters once `check` holds for them (polled for up to 10 s). */
async function waitFor(what, check) {
  let seen;
  return await eventually(
    () => `${what} (counters: ${JSON.stringify(seen)})`,
    async () => {
      seen = await counters();
      return check(seen) ? seen : undefined;
    },
    10_000,
    50,
  );
}

async function increment(url, expected) {
  const res = await callRaw(url, "mutation", "counter:increment", { name: "cc" });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.value, expected, res.text);
}

test("a push's code caches are made after its first call once, saved, and restored after a restart", { timeout: 180_000 }, async (t) => {
  if (skipped !== null) return t.skip(skipped);
  const tenant = await server.tenantWithApp("cc");
  const url = server.tenantUrl("cc");
  assert.deepEqual(await counters(), { saved: 0, restored: 0 });

  await increment(url, 1);
  await waitFor("the first call's caches are saved", (c) => c.saved === 1);
  // Later calls, and the query a subscription would run, use them; nothing is made again.
  for (let n = 2; n <= 6; n++) await increment(url, n);
  const read = await callRaw(url, "query", "counter:get", { name: "cc" });
  assert.equal(read.status, 200, read.text);
  // A save is written after a reply: give one that should not happen the time to show.
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(await counters(), { saved: 1, restored: 0 });

  await server.restart();
  assert.deepEqual(await counters(), { saved: 0, restored: 0 });
  await increment(url, 7);
  const afterRestart = await waitFor("the activation restores them", (c) => c.restored === 1);
  assert.equal(afterRestart.saved, 0, "restored caches are not made again");
  for (let n = 8; n <= 10; n++) await increment(url, n);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(await counters(), { saved: 0, restored: 1 });

  // A new push (the same sources under a new code identity), then a restart before any
  // call: the saved record is the old push's, so it is not given to the new one, whose
  // first call makes and saves its own.
  await deploy({ appDir: APP_DIR, url, adminKey: tenant.adminKey, server });
  await server.restart();
  await increment(url, 11);
  const afterPush = await waitFor("the new push's caches are saved", (c) => c.saved === 1);
  assert.equal(afterPush.restored, 0, "the old push's caches are not restored into the new one");
  await server.restart();
  await increment(url, 12);
  await waitFor("the new push's caches are restored", (c) => c.restored === 1);
  assert.equal((await counters()).saved, 0);
});
