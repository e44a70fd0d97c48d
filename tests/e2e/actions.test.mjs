// Actions (issue 15) through the official clients: an action calls a query, a mutation
// and another action; waits on timers without holding a JavaScript worker; fetches from a
// local HTTP server under the egress policy (refused unless --egress-allow names it); and
// fails clearly at its limits (wall time, CPU time, nesting, response size).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import http from "node:http";
import { NimbusServer, api, callRaw, httpRequest, socketClient, withTimeout } from "./harness.mjs";

let open; // --egress-allow 127.0.0.1, short limits, two JS workers
let closed; // the default egress policy, two actions per tenant
let tenant;
let refusing;
let site;
let siteUrl;
const seenBySite = [];

before(
  async () => {
    site = http.createServer((req, res) => {
      let body = "";
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        seenBySite.push({ method: req.method, url: req.url, headers: req.headers, body });
        if (req.url === "/big") {
          res.writeHead(200, { "content-type": "application/octet-stream" });
          res.end(Buffer.alloc(200_000, 7));
        } else if (req.url === "/to-metadata") {
          res.writeHead(302, { location: "http://169.254.169.254/latest/meta-data/" });
          res.end();
        } else if (req.url === "/moved") {
          res.writeHead(301, { location: "/echo?moved=1" });
          res.end();
        } else {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ method: req.method, url: req.url, test: req.headers["x-nimbus-test"] ?? null, body }));
        }
      });
    });
    await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
    siteUrl = `http://127.0.0.1:${site.address().port}`;
    open = await NimbusServer.start({
      args: [
        "--egress-allow", "127.0.0.1",
        "--js-workers", "2",
        "--action-timeout-secs", "3",
        "--action-cpu-ms", "500",
        "--fetch-max-response-bytes", "100000",
      ],
    });
    closed = await NimbusServer.start({ args: ["--max-actions-per-tenant", "2"] });
    tenant = await open.tenantWithApp("acts");
    refusing = await closed.tenantWithApp("acts");
  },
  { timeout: 300_000 },
);

after(async () => {
  await open?.cleanup();
  await closed?.cleanup();
  site?.close();
});

/** Runs an action over HTTP and returns its value, failing the test on an error. */
async function run(name, args = {}, t = tenant) {
  const res = await callRaw(t.url, "action", name, args);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.status, "success", res.text);
  return res.body.value;
}

describe("actions call functions", () => {
  test("an action calls a mutation, a query and another action (HTTP client)", { timeout: 60_000 }, async () => {
    const result = await tenant.client.action(api.actions.pipeline, { owner: "http", text: "one" });
    assert.match(result.id, /^[0-9a-z]+$/);
    assert.deepEqual(result.texts, ["one"]);
    assert.equal(result.doubled, 42);
    assert.deepEqual(result.refusal, { code: "NOPE", detail: "refused on purpose" });
    assert.equal(result.identity, null);
    // The mutation committed on its own: the note is there after the action.
    assert.equal(await tenant.client.query(api.actions.countNotes, { owner: "http" }), 1);
  });

  test("the same over the WebSocket client, and a mutation is not held behind a slow action", { timeout: 60_000 }, async () => {
    const live = socketClient(tenant.url);
    try {
      const result = await withTimeout(live.action(api.actions.pipeline, { owner: "ws", text: "two" }), 20_000, "action");
      assert.deepEqual(result.texts, ["two"]);
      assert.equal(result.doubled, 42);
      // A 2 s action, then a mutation sent after it: the mutation answers first.
      const order = [];
      const slow = live.action(api.actions.sleeps, { ms: 1000 }).then(() => order.push("action"));
      const quick = live.mutation(api.counter.increment, { name: "behind-action" }).then(() => order.push("mutation"));
      await withTimeout(Promise.all([slow, quick]), 20_000, "action and mutation");
      assert.deepEqual(order, ["mutation", "action"]);
    } finally {
      await live.close();
    }
  });

  test("internal functions are reachable from actions only", { timeout: 60_000 }, async () => {
    const res = await callRaw(tenant.url, "action", "actions:double", { n: 1 });
    assert.equal(res.body.status, "error", res.text);
    assert.match(res.body.errorMessage, /Could not find public function for 'actions:double'/, res.text);
  });

  test("arguments are validated before the action runs", { timeout: 60_000 }, async () => {
    const res = await callRaw(tenant.url, "action", "actions:pipeline", { owner: 1 });
    assert.equal(res.body.status, "error", res.text);
    assert.match(res.body.errorMessage, /ArgumentValidationError/, res.text);
  });
});

describe("timers", () => {
  test("setTimeout waits, concurrently inside one action", { timeout: 60_000 }, async () => {
    const result = await run("actions:sleeps", { ms: 200 });
    assert.deepEqual(result.together, [200, 200, 200]);
    // Three sleeps at once, then one: about two sleeps, not four.
    assert.ok(result.elapsed >= 400, JSON.stringify(result));
    assert.equal(result.aborted, false);
  });

  test("waiting actions hold no worker: 16 actions of 2 s on 2 workers all end together", { timeout: 120_000 }, async () => {
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 16 }, () => run("actions:sleeps", { ms: 1000 })));
    const elapsed = Date.now() - started;
    for (const r of results) assert.ok(r.elapsed >= 2000, JSON.stringify(r));
    // Were each action to hold one of the two workers while it sleeps, 16 of them would
    // take 16 s at least; they overlap instead. The bound is generous for a loaded machine.
    assert.ok(elapsed < 12_000, `16 sleeping actions took ${elapsed} ms`);
  });
});

describe("fetch and the egress policy", () => {
  test("an action fetches from a local server that --egress-allow names", { timeout: 60_000 }, async () => {
    const body = JSON.stringify({ hello: "wörld" });
    const post = await run("actions:fetchEcho", { url: `${siteUrl}/echo`, body });
    assert.equal(post.status, 200);
    assert.equal(post.ok, true);
    assert.equal(post.type, "application/json");
    const echoed = JSON.parse(post.text);
    assert.deepEqual(echoed, { method: "POST", url: "/echo", test: "yes", body });
    assert.equal(post.sha256, createHash("sha256").update(post.text).digest("hex"));
    // By name as well: localhost resolves to the allowed address.
    const port = new URL(siteUrl).port;
    const get = await run("actions:fetchEcho", { url: `http://localhost:${port}/moved` });
    assert.equal(JSON.parse(get.text).url, "/echo?moved=1", "the redirect was followed");
    assert.equal(get.url, `http://localhost:${port}/echo?moved=1`);
  });

  test("without --egress-allow, loopback is refused after resolution, and so is metadata", { timeout: 60_000 }, async () => {
    const before = seenBySite.length;
    const port = new URL(siteUrl).port;
    for (const url of [`${siteUrl}/echo`, `http://localhost:${port}/echo`, "http://169.254.169.254/latest/meta-data/"]) {
      const message = await run("actions:fetchError", { url }, refusing);
      assert.match(message, /^TypeError: fetch failed: /, message);
      assert.match(message, /egress policy/, message);
    }
    assert.equal(seenBySite.length, before, "no request reached the local server");
    // Allowed hosts cannot redirect to a refused address either.
    const redirected = await run("actions:fetchError", { url: `${siteUrl}/to-metadata` });
    assert.match(redirected, /169\.254\.169\.254 is not a public address/, redirected);
  });

  test("a response over --fetch-max-response-bytes fails the fetch", { timeout: 60_000 }, async () => {
    const message = await run("actions:fetchError", { url: `${siteUrl}/big` });
    assert.match(message, /larger than the limit of 100000 bytes/, message);
  });

  test("only http(s) URLs can be fetched", { timeout: 60_000 }, async () => {
    const res = await callRaw(tenant.url, "action", "actions:fetchError", { url: "ftp://example.com/x" });
    assert.match(res.body.value, /only http: and https: URLs/, res.text);
  });
});

describe("limits", () => {
  test("an action past its wall time fails with FunctionTimeout", { timeout: 60_000 }, async () => {
    const res = await callRaw(tenant.url, "action", "actions:hang", {});
    assert.equal(res.body.status, "error", res.text);
    assert.match(res.body.errorMessage, /actions:hang timed out: actions may run for at most 3 s/, res.text);
  });

  test("an action past its CPU time fails, and the server carries on", { timeout: 60_000 }, async () => {
    const res = await callRaw(tenant.url, "action", "actions:spin", {});
    assert.equal(res.body.status, "error", res.text);
    assert.match(res.body.errorMessage, /CPU time limit of 500 ms/, res.text);
    assert.equal((await run("actions:envOf", { name: "NOT_SET" })), null);
  });

  test("actions calling actions are nested at most 8 deep", { timeout: 60_000 }, async () => {
    const res = await callRaw(tenant.url, "action", "actions:recurse", { depth: 0 });
    assert.equal(res.body.status, "error", res.text);
    assert.match(res.body.errorMessage, /nested more than 8 deep/, res.text);
  });
});

test("past --max-actions-per-tenant a new action gets 429 at once, and the stats count it", { timeout: 60_000 }, async () => {
  const stats = async () => {
    const res = await httpRequest(`${closed.url}/admin/tenants/acts/stats`, {
      headers: { authorization: `Bearer ${closed.adminKey}` },
    });
    assert.equal(res.status, 200, res.text);
    return res.body;
  };
  const running = [run("actions:sleeps", { ms: 1500 }, refusing), run("actions:sleeps", { ms: 1500 }, refusing)];
  // Both are admitted once the first of their sleeps is under way.
  let seen;
  for (let i = 0; i < 50 && (seen = await stats()).actionsRunning < 2; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(seen.actionsRunning, 2, JSON.stringify(seen));
  assert.equal(seen.actionsMax, 2);
  const refused = await callRaw(refusing.url, "action", "actions:envOf", { name: "X" });
  assert.equal(refused.status, 429, refused.text);
  assert.equal(refused.body.code, "Overloaded", refused.text);
  assert.match(refused.body.message, /more than 2 actions running/, refused.text);
  assert.ok(refused.headers.get("retry-after"), "Retry-After is set");
  await Promise.all(running);
  const after = await stats();
  assert.equal(after.actionsRunning, 0, JSON.stringify(after));
  assert.ok(after.rejectedActions >= 1, JSON.stringify(after));
  // Room again.
  assert.equal(await run("actions:envOf", { name: "X" }, refusing), null);
});
