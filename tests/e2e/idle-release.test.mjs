// Idle release (issue 13): a tenant nobody uses for --tenant-idle-secs is closed (its
// diagnostics say "idle"), its next request reopens it with its data; an open socket keeps
// it in use; and a job scheduled before it was released still runs when due, the instance
// reopening the tenant by itself.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { NimbusServer, api, httpRequest, sleep } from "./harness.mjs";

let server;

before(
  async () => {
    server = await NimbusServer.start({ args: ["--tenant-idle-secs", "1"] });
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
});

async function state(name) {
  const res = await httpRequest(`${server.url}/admin/tenants/${name}/diagnostics`, {
    headers: { authorization: `Bearer ${server.adminKey}` },
  });
  assert.equal(res.status, 200, res.text);
  return res.body.state;
}

/** Waits until the tenant's diagnostics say `want`; returns how long that took. */
async function until(name, want, timeoutMs = 15_000) {
  const started = Date.now();
  while ((await state(name)) !== want) {
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${name} did not become ${want} within ${timeoutMs} ms\n${server.logTail()}`);
    }
    await sleep(100);
  }
  return Date.now() - started;
}

test("an unused tenant is released after the idle time and reopens on its next request", { timeout: 120_000 }, async () => {
  const t = await server.tenantWithApp("idle-one");
  await t.client.mutation(api.scheduler.scheduleBump, { key: "before", delayMs: 0 });
  await sleep(300);
  assert.equal((await t.client.query(api.scheduler.runs, { key: "before" }))?.n, 1);
  assert.equal(await state("idle-one"), "active");
  const waited = await until("idle-one", "idle");
  console.log(`released ${waited} ms after the last use was seen active (--tenant-idle-secs 1)`);
  // Reopened transparently, with its data.
  assert.equal((await t.client.query(api.scheduler.runs, { key: "before" }))?.n, 1);
  assert.equal(await state("idle-one"), "active");
});

test("an open socket keeps its tenant in use", { timeout: 120_000 }, async () => {
  const t = await server.tenantWithApp("idle-socket");
  const socket = new ConvexClient(t.url, {
    webSocketConstructor: WebSocket,
    skipConvexDeploymentUrlCheck: true,
    unsavedChangesWarning: false,
    logger: false,
  });
  try {
    const first = new Promise((resolve) => socket.onUpdate(api.scheduler.runs, { key: "live" }, resolve));
    assert.equal(await first, null);
    await sleep(3000);
    assert.equal(await state("idle-socket"), "active", "a tenant with an open socket must not be released");
  } finally {
    await socket.close();
  }
  await until("idle-socket", "idle");
});

test("a job scheduled before the release runs when due: the instance reopens the tenant", { timeout: 120_000 }, async () => {
  const t = await server.tenantWithApp("idle-job");
  const [id] = await t.client.mutation(api.scheduler.scheduleBump, { key: "later", delayMs: 4000 });
  await until("idle-job", "idle");
  // Nothing touches the tenant now; its job is due in a few seconds.
  await until("idle-job", "active", 20_000);
  const deadline = Date.now() + 20_000;
  let job;
  do {
    await sleep(200);
    job = await t.client.query(api.scheduler.job, { id });
  } while (job.state.kind !== "success" && Date.now() < deadline);
  assert.equal(job.state.kind, "success", JSON.stringify(job));
  assert.equal((await t.client.query(api.scheduler.runs, { key: "later" }))?.n, 1);
});
