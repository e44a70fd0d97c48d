// Per-tenant limits (issue 13): `PATCH /admin/tenants/<t>` with a `limits` object overrides the
// instance defaults for one tenant, `GET /admin/tenants/<t>` shows the limits in force, a
// change takes effect without a restart and survives one, a refusal names the limit that was
// hit (HTTP `limit` and `Retry-After`; on the WebSocket, on that request only), and bad input
// gets 400 with nothing changed.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { NimbusServer, api, callRaw, expectFunctionError, httpRequest, rejection, socketClient, withTimeout } from "./harness.mjs";

let server;
let capped;
let other;

const LIMIT_NAMES = [
  "actions",
  "admissionQueue",
  "cpuMsPerCall",
  "executing",
  "inflight",
  "memoryMibPerCall",
  "sockets",
  "subscriptions",
];

before(
  async () => {
    server = await NimbusServer.start({ args: ["--max-inflight-per-tenant", "500", "--admission-queue-per-tenant", "300"] });
    capped = await server.tenantWithApp("capped");
    other = await server.tenantWithApp("other");
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
});

const admin = () => ({ authorization: `Bearer ${server.adminKey}`, "content-type": "application/json" });

async function getTenant(name) {
  const res = await httpRequest(`${server.url}/admin/tenants/${name}`, { headers: admin() });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

async function patch(name, body) {
  return await httpRequest(`${server.url}/admin/tenants/${name}`, {
    method: "PATCH",
    headers: admin(),
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

async function diag(name) {
  const res = await httpRequest(`${server.url}/admin/tenants/${name}/diagnostics`, { headers: admin() });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

/** Waits until the tenant's diagnostics satisfy `ready`, or fails after `ms`. */
async function until(name, ready, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const d = await diag(name);
    if (ready(d)) return d;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}: ${JSON.stringify(d)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("reading and changing a tenant's limits", () => {
  test("GET shows every limit in force, from the instance flags, and no overrides", async () => {
    const t = await getTenant("capped");
    assert.deepEqual(Object.keys(t.limits).sort(), LIMIT_NAMES);
    assert.equal(t.limits.inflight, 500, "from --max-inflight-per-tenant");
    assert.equal(t.limits.admissionQueue, 300, "from --admission-queue-per-tenant");
    assert.equal(t.limits.cpuMsPerCall, 1000, "from --function-cpu-ms");
    assert.equal(t.limits.memoryMibPerCall, 64, "from --function-memory-mib");
    assert.deepEqual(t.limitOverrides, {});
  });

  test("bad input gets 400 with a clear message, and nothing changes", async () => {
    const set = await patch("capped", { limits: { inflight: 400 } });
    assert.equal(set.status, 200, set.text);
    const before = await getTenant("capped");
    const cases = [
      [{ limits: { nope: 1 } }, /unknown limit "nope"; the limits are executing, inflight/],
      [{ limits: { inflight: -5 } }, /limit "inflight" must be an integer from 1 to 100000, got -5/],
      [{ limits: { inflight: 0 } }, /got 0/],
      [{ limits: { sockets: 1e9 } }, /limit "sockets" must be an integer from 1 to 100000, got 1000000000/],
      [{ limits: { admissionQueue: 70000 } }, /from 1 to 65536/],
      [{ limits: { executing: 2.5 } }, /got 2\.5/],
      [{ limits: { memoryMibPerCall: 1 } }, /from 8 to 4096/],
      [{ limits: { inflight: "100" } }, /got a string/],
      [{ limits: { inflight: true } }, /got a boolean/],
      [{ limits: { inflight: { value: 1 } } }, /got an object/],
      [{ limits: [1, 2] }, /"limits" must be an object/],
      [{ limits: 5 }, /"limits" must be an object/],
      // One bad entry refuses the whole change: the good one is not applied either.
      [{ limits: { actions: 3, inflight: -1 } }, /inflight/],
      [{ limit: { inflight: 3 } }, /unknown field "limit"/],
      [{}, /nothing to change/],
      [[1], /expected a JSON object/],
      ["{not json", /not valid JSON/],
    ];
    for (const [body, message] of cases) {
      const res = await patch("capped", body);
      assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
      assert.equal(res.body.code, "BadJsonInput", res.text);
      assert.match(res.body.message, message, JSON.stringify(body));
    }
    assert.deepEqual(await getTenant("capped"), before, "no bad request changed anything");
    assert.equal((await patch("no-such-tenant", { limits: { inflight: 3 } })).status, 404);
    const anonymous = await httpRequest(`${server.url}/admin/tenants/capped`, {
      method: "PATCH",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ limits: { inflight: 1 } }),
    });
    assert.equal(anonymous.status, 401, anonymous.text);
    const ownKey = await httpRequest(`${server.url}/admin/tenants/capped`, {
      method: "PATCH",
      headers: { authorization: `Convex ${capped.adminKey}`, "content-type": "application/json" },
      body: JSON.stringify({ limits: { inflight: 100000 } }),
    });
    assert.equal(ownKey.status, 401, `a tenant cannot raise its own limits: ${ownKey.text}`);
    assert.deepEqual(await getTenant("capped"), before);
    // null returns a limit to the instance default.
    const reset = await patch("capped", { limits: { inflight: null } });
    assert.equal(reset.status, 200, reset.text);
    assert.deepEqual(reset.body.limitOverrides, {});
    assert.equal(reset.body.limits.inflight, 500);
  });
});

describe("a change takes effect without a restart", () => {
  test("an actions limit of 1 refuses a second action with 429, limit \"actions\" and Retry-After; lifting it admits one", { timeout: 60_000 }, async () => {
    const set = await patch("capped", { limits: { actions: 1 } });
    assert.equal(set.status, 200, set.text);
    assert.equal(set.body.limits.actions, 1);
    assert.deepEqual(set.body.limitOverrides, { actions: 1 });
    assert.equal((await diag("capped")).calls.actionsLimit, 1, "the active tenant follows at once");
    const slow = callRaw(capped.url, "action", "actions:sleeps", { ms: 300 });
    await until("capped", (d) => d.calls.actions === 1, "the slow action to run");
    const refused = await callRaw(capped.url, "action", "actions:envOf", { name: "X" });
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.body.code, "Overloaded");
    assert.equal(refused.body.limit, "actions", refused.text);
    assert.match(refused.body.message, /more than 1 actions running/);
    assert.equal(refused.headers.get("retry-after"), "1");
    // The other tenant has the instance's limit.
    const elsewhere = await callRaw(other.url, "action", "actions:envOf", { name: "X" });
    assert.equal(elsewhere.status, 200, elsewhere.text);
    // Lifted while the slow one still runs: a second action is admitted at once.
    assert.equal((await patch("capped", { limits: { actions: 2 } })).status, 200);
    const admitted = await callRaw(capped.url, "action", "actions:envOf", { name: "X" });
    assert.equal(admitted.status, 200, admitted.text);
    assert.equal((await slow).status, 200);
    assert.equal((await patch("capped", { limits: { actions: null } })).status, 200);
  });

  test("CPU time and heap per call follow the tenant's own limits", { timeout: 60_000 }, async () => {
    assert.equal((await patch("capped", { limits: { cpuMsPerCall: 150, memoryMibPerCall: 24 } })).status, 200);
    const loop = await callRaw(capped.url, "query", "limits:infiniteLoop", {});
    expectFunctionError(assert, loop, "FunctionTimeout");
    assert.match(loop.body.errorMessage, /CPU time limit of 150 ms/, loop.text);
    const bomb = await callRaw(capped.url, "query", "limits:memoryBomb", {});
    expectFunctionError(assert, bomb, "FunctionOutOfMemory");
    assert.match(bomb.body.errorMessage, /limit of 24 MiB/, bomb.text);
    // The neighbour keeps the instance's heap (its bomb reaches 64 MiB).
    const theirs = await callRaw(other.url, "query", "limits:memoryBomb", {});
    expectFunctionError(assert, theirs, "FunctionOutOfMemory");
    assert.match(theirs.body.errorMessage, /limit of 64 MiB/, theirs.text);
    // And the tenant's runtime is usable again.
    const ping = await callRaw(capped.url, "query", "limits:ping", {});
    assert.equal(ping.body.value, "pong", ping.text);
    assert.equal((await patch("capped", { limits: { cpuMsPerCall: null, memoryMibPerCall: null } })).status, 200);
  });

  test("over the WebSocket an overloaded mutation fails on its own, naming the limit, and the socket stays", { timeout: 60_000 }, async () => {
    assert.equal((await patch("capped", { limits: { inflight: 1, cpuMsPerCall: 3000 } })).status, 200);
    const live = socketClient(capped.url);
    try {
      assert.equal(await withTimeout(live.query(api.limits.ping, {}), 20_000, "first query"), "pong");
      // A spinning query holds the tenant's one call in flight for up to 3 s.
      let spinning = true;
      const loop = callRaw(capped.url, "query", "limits:infiniteLoop", {}).finally(() => {
        spinning = false;
      });
      await until("capped", (d) => d.calls.inflight === 1 || !spinning, "the loop to be in flight");
      assert.ok(spinning, "the loop was still running when the mutation was sent");
      const error = await rejection(withTimeout(live.mutation(api.notes.add, { owner: "ws", text: "x" }), 20_000, "mutation"));
      assert.match(String(error.message), /Overloaded/, String(error));
      assert.match(String(error.message), /limit: inflight; retry after 1 s/, String(error));
      expectFunctionError(assert, await loop, "FunctionTimeout");
      // The same connection goes on: the next mutation succeeds without a reconnect.
      await withTimeout(live.mutation(api.notes.add, { owner: "ws", text: "y" }), 20_000, "second mutation");
      assert.equal(live.connectionState().connectionCount, 1, JSON.stringify(live.connectionState()));
    } finally {
      await live.close();
    }
    assert.equal((await patch("capped", { limits: { inflight: null, cpuMsPerCall: null } })).status, 200);
  });

  test("a sockets limit refuses the next WebSocket upgrade with 429", { timeout: 60_000 }, async () => {
    assert.equal((await patch("capped", { limits: { sockets: 1 } })).status, 200);
    const first = socketClient(capped.url);
    try {
      assert.equal(await withTimeout(first.query(api.limits.ping, {}), 20_000, "first socket"), "pong");
      const status = await new Promise((resolve, reject) => {
        const ws = new WebSocket(`${capped.url.replace("http", "ws")}/api/1.48.0/sync`);
        ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
        ws.on("open", () => {
          ws.close();
          resolve("opened");
        });
        ws.on("error", reject);
      });
      assert.equal(status, 429, "the second socket is refused");
    } finally {
      await first.close();
    }
    assert.equal((await patch("capped", { limits: { sockets: null } })).status, 200);
  });

  test("diagnostics show the queue and worker limits in force", async () => {
    assert.equal((await patch("capped", { limits: { admissionQueue: 17, executing: 3, subscriptions: 9 } })).status, 200);
    const d = await diag("capped");
    assert.equal(d.admission.queueCapacity, 17);
    assert.equal(d.calls.runningLimit, 3);
    assert.equal(d.live.subscriptionsLimit, 9);
    assert.equal(d.limits.executing, 3);
  });
});

describe("limits survive a restart", () => {
  test("overrides are kept, and are in force again when the tenant opens", { timeout: 120_000 }, async () => {
    assert.equal((await patch("capped", { limits: { actions: 1 } })).status, 200);
    const before = await getTenant("capped");
    await server.restart("SIGKILL");
    const after = await getTenant("capped");
    assert.deepEqual(after, before);
    assert.deepEqual(after.limitOverrides, { actions: 1, admissionQueue: 17, executing: 3, subscriptions: 9 });
    // The tenant opens with them.
    const slow = callRaw(capped.url, "action", "actions:sleeps", { ms: 300 });
    await until("capped", (d) => d.state === "active" && d.calls.actions === 1, "the slow action to run");
    const d = await diag("capped");
    assert.equal(d.admission.queueCapacity, 17);
    assert.equal(d.calls.actionsLimit, 1);
    const refused = await callRaw(capped.url, "action", "actions:envOf", { name: "X" });
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.body.limit, "actions");
    assert.equal((await slow).status, 200);
    // The neighbour is untouched.
    assert.deepEqual((await getTenant("other")).limitOverrides, {});
  });
});
