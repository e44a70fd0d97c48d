// Per-tenant diagnostics (issue 13): GET /admin/tenants/<t>/diagnostics (instance key, or
// the tenant's own admin key) and GET /admin/diagnostics (every active tenant, the busiest
// first). The figures move as they should: calls in flight rise under a burst and return
// to 0; worker time is counted; a refusal is counted under its reason and matches
// /metrics; a tenant not in memory shows as idle without being activated.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, callRaw, httpRequest } from "./harness.mjs";

let server;
let busy;
let quiet;

before(
  async () => {
    server = await NimbusServer.start({ args: ["--max-actions-per-tenant", "1"] });
    busy = await server.tenantWithApp("diag-busy");
    quiet = await server.tenantWithApp("diag-quiet");
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
});

async function diagnostics(name, authorization = `Bearer ${server.adminKey}`) {
  return await httpRequest(`${server.url}/admin/tenants/${name}/diagnostics`, { headers: { authorization } });
}

async function diag(name) {
  const res = await diagnostics(name);
  assert.equal(res.status, 200, res.text);
  return res.body;
}

test("the instance key or the tenant's own admin key may read a tenant's diagnostics", { timeout: 60_000 }, async () => {
  assert.equal((await diagnostics("diag-busy", "")).status, 401);
  const other = await diagnostics("diag-busy", `Convex ${quiet.adminKey}`);
  assert.equal(other.status, 403, other.text);
  const own = await diagnostics("diag-busy", `Convex ${busy.adminKey}`);
  assert.equal(own.status, 200, own.text);
  assert.equal(own.body.name, "diag-busy");
  assert.equal(own.body.state, "active");
  assert.equal((await diagnostics("no-such-tenant")).status, 404);
});

test("calls in flight rise under load and return to 0; worker time is counted", { timeout: 120_000 }, async () => {
  const before = await diag("diag-busy");
  // A sleeping action is in flight for its whole second, deterministically.
  const sleeping = callRaw(busy.url, "action", "actions:sleeps", { ms: 500 });
  let during;
  for (let i = 0; i < 100; i++) {
    during = await diag("diag-busy");
    if (during.calls.actions === 1) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(during.calls.actions, 1, JSON.stringify(during));
  assert.ok(during.calls.inflight >= 1, JSON.stringify(during));
  assert.equal((await sleeping).status, 200);
  // A burst of writes, watched as it goes: the figures stay within their limits.
  let done = false;
  const watcher = (async () => {
    while (!done) {
      const d = await diag("diag-busy");
      assert.ok(d.calls.inflight <= d.calls.inflightLimit);
      assert.ok(d.admission.queueDepth <= d.admission.queueCapacity);
    }
  })();
  const burst = Array.from({ length: 400 }, (_, i) =>
    callRaw(busy.url, "mutation", "notes:add", { owner: `burst-${i % 8}`, text: "x".repeat(200) }),
  );
  for (const res of await Promise.all(burst)) assert.equal(res.status, 200, res.text);
  done = true;
  await watcher;
  const after = await diag("diag-busy");
  assert.equal(after.calls.inflight, 0, JSON.stringify(after));
  assert.equal(after.calls.running, 0, JSON.stringify(after));
  assert.equal(after.calls.actions, 0, JSON.stringify(after));
  assert.equal(after.admission.queueDepth, 0, JSON.stringify(after));
  assert.ok(after.journal.commits >= before.journal.commits + 400, JSON.stringify(after.journal));
  assert.equal(after.journal.durableTs, after.journal.acknowledgedTs);
  assert.ok(after.cpuLastMinuteMs > before.cpuLastMinuteMs, JSON.stringify(after));
  assert.equal(after.storage.state, "ok");

  // The busiest tenant comes first in the instance view.
  await callRaw(quiet.url, "query", "limits:ping", {});
  const all = await httpRequest(`${server.url}/admin/diagnostics`, { headers: { authorization: `Bearer ${server.adminKey}` } });
  assert.equal(all.status, 200, all.text);
  assert.deepEqual(all.body.tenants.map((t) => t.name), ["diag-busy", "diag-quiet"]);
});

test("a refusal is counted under its reason, and /metrics agrees", { timeout: 60_000 }, async () => {
  // The probe is sent only once the slow action holds the tenant's one action slot: sent
  // together, the probe could take the slot first and the slow action be the one refused.
  let slowSettled = false;
  const slow = callRaw(busy.url, "action", "actions:sleeps", { ms: 500 }).finally(() => {
    slowSettled = true;
  });
  while ((await diag("diag-busy")).calls.actions < 1) {
    if (slowSettled) assert.fail(`the slow action ended before it was seen running: ${(await slow).text}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  const refused = await callRaw(busy.url, "action", "actions:envOf", { name: "X" });
  assert.equal(refused.status, 429, refused.text);
  assert.equal(refused.body.limit, "actions", refused.text);
  assert.equal((await slow).status, 200);
  const d = await diag("diag-busy");
  assert.ok(d.rejections.actions >= 1, JSON.stringify(d.rejections));
  assert.equal(d.rejections.inflight, 0);
  assert.equal(d.rejections.commitQueue, 0);
  const metrics = await httpRequest(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.adminKey}` } });
  assert.equal(metrics.status, 200);
  const value = (name, labels) => {
    const line = metrics.text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
    assert.ok(line, `${name}{${labels}} in /metrics`);
    return Number(line.split(" ").at(-1));
  };
  assert.equal(value("nimbus_tenant_rejected_total", 'tenant="diag-busy",reason="actions"'), d.rejections.actions);
  assert.equal(value("nimbus_tenant_commits_total", 'tenant="diag-busy"'), d.journal.commits);
});

test("a tenant not in memory shows as idle, and is not activated by asking", { timeout: 120_000 }, async () => {
  await server.restart();
  assert.deepEqual(await diag("diag-quiet"), { name: "diag-quiet", state: "idle" });
  assert.deepEqual(await diag("diag-quiet"), { name: "diag-quiet", state: "idle" });
  const all = await httpRequest(`${server.url}/admin/diagnostics`, { headers: { authorization: `Bearer ${server.adminKey}` } });
  assert.equal(all.body.activeTenants, 0, all.text);
  await callRaw(quiet.url, "query", "limits:ping", {});
  assert.equal((await diag("diag-quiet")).state, "active");
});
