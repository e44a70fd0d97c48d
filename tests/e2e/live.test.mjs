// Live queries over the Convex sync protocol: the official ConvexClient (WebSocket)
// subscribes, other clients mutate, and the subscription sees every change; dependency
// tracking is proven with the per-tenant counters; bad socket input is a fatal error for
// that socket only.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { NimbusServer, POS_DIR, api, sleep, withTimeout } from "./harness.mjs";

const WAIT_MS = 30_000;

function liveClient(url) {
  return new ConvexClient(url, {
    webSocketConstructor: WebSocket,
    skipConvexDeploymentUrlCheck: true,
    unsavedChangesWarning: false,
    logger: false,
  });
}

/** Subscribes and records every value; `next(pred)` waits for one matching `pred`. */
function watch(client, query, args) {
  const seen = [];
  const waiters = [];
  const errors = [];
  const unsubscribe = client.onUpdate(
    query,
    args,
    (value) => {
      seen.push(value);
      for (const w of [...waiters]) {
        if (w.pred(value)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(value);
        }
      }
    },
    (error) => errors.push(error),
  );
  return {
    seen,
    errors,
    unsubscribe,
    latest: () => seen[seen.length - 1],
    next(pred, what = "a matching update") {
      const found = seen.find(pred);
      if (found !== undefined && pred(seen[seen.length - 1])) {
        return Promise.resolve(seen[seen.length - 1]);
      }
      return withTimeout(
        new Promise((resolve) => waiters.push({ pred, resolve })),
        WAIT_MS,
        `waiting for ${what} (seen: ${JSON.stringify(seen.slice(-3))})`,
      );
    },
  };
}

async function stats(server, tenant) {
  const res = await server.admin("GET", `/admin/tenants/${tenant}/stats`);
  assert.equal(res.status, 200, res.text);
  return res.body.live;
}

async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(25);
  }
}

/** A raw protocol client: send JSON, read JSON messages, see the close. */
async function rawSocket(url) {
  const ws = new WebSocket(url.replace(/^http/, "ws") + "/api/1.48.0/sync");
  const messages = [];
  let closed = null;
  const waiters = [];
  const wake = () => {
    for (const w of [...waiters]) {
      if (w.check()) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  ws.on("message", (data) => {
    messages.push(JSON.parse(data.toString()));
    wake();
  });
  ws.on("close", (code, reason) => {
    closed = { code, reason: reason.toString() };
    wake();
  });
  ws.on("error", () => {});
  await withTimeout(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), WAIT_MS, "opening a raw socket");
  const waitFor = (check, what) =>
    check()
      ? Promise.resolve()
      : withTimeout(new Promise((resolve) => waiters.push({ check, resolve })), WAIT_MS, what);
  return {
    ws,
    messages,
    send: (m) => ws.send(typeof m === "string" ? m : JSON.stringify(m)),
    connect: () =>
      ws.send(JSON.stringify({
        type: "Connect", sessionId: "00000000-0000-4000-8000-000000000000",
        connectionCount: 0, lastCloseReason: null, clientTs: Date.now(),
      })),
    closed: async () => {
      await waitFor(() => closed !== null, "the server closing the socket");
      return closed;
    },
    message: async (pred, what) => {
      await waitFor(() => messages.some(pred), what);
      return messages.find(pred);
    },
  };
}

describe("live queries with the official ConvexClient", () => {
  let server;
  let url;
  let http;
  let shopId;
  let productId;
  const clients = [];

  before(async () => {
    if (!fs.existsSync(path.join(POS_DIR, "node_modules/convex"))) {
      throw new Error(`${POS_DIR}/node_modules is missing: run \`npm ci\` there first`);
    }
    server = await NimbusServer.start();
    ({ url, client: http } = await server.tenantWithApp("pos", POS_DIR));
    shopId = await http.mutation(api.shops.create, { name: "Live shop" });
    productId = await http.mutation(api.products.add, {
      shopId, name: "Tea", sku: "TEA", priceCents: 300, stock: 1000,
    });
  });

  after(async () => {
    for (const c of clients) {
      await c.close();
    }
    await server?.cleanup();
  });

  test("a subscription sees another client's mutation", async () => {
    const a = liveClient(url);
    clients.push(a);
    const summary = watch(a, api.dashboard.summary, { shopId });
    const first = await summary.next(() => true, "the first result");
    assert.equal(first.openOrders, 0);
    await http.mutation(api.orders.create, { shopId, items: [{ productId, qty: 2 }] });
    const updated = await summary.next((v) => v.openOrders === 1, "openOrders = 1");
    assert.equal(updated.openTotalCents, 600);
    assert.deepEqual(summary.errors, []);
  });

  test("the mutating client's own flow: optimistic value, then its write in the next result", async () => {
    const a = liveClient(url);
    clients.push(a);
    const summary = watch(a, api.dashboard.summary, { shopId });
    const before = await summary.next(() => true, "the first result");
    const optimisticMarker = before.openOrders + 1000;
    const result = await a.mutation(
      api.orders.create,
      { shopId, items: [{ productId, qty: 1 }] },
      {
        optimisticUpdate: (store, args) => {
          const current = store.getQuery(api.dashboard.summary, { shopId: args.shopId });
          if (current !== undefined) {
            store.setQuery(api.dashboard.summary, { shopId: args.shopId }, {
              ...current,
              openOrders: optimisticMarker,
            });
          }
        },
      },
    );
    assert.equal(result.totalCents, 300);
    // The optimistic value was shown while the mutation was in flight...
    assert.ok(summary.seen.some((v) => v.openOrders === optimisticMarker), JSON.stringify(summary.seen));
    // ...and when the promise resolved, the subscription already held the server's result
    // including this write (the Transition reaching the commit came first).
    assert.equal(summary.latest().openOrders, before.openOrders + 1);
    assert.equal(summary.latest().openTotalCents, before.openTotalCents + 300);
  });

  test("a socket closed by the server: the client reconnects and resumes", async () => {
    const a = liveClient(url);
    clients.push(a);
    const summary = watch(a, api.dashboard.summary, { shopId });
    const before = await summary.next(() => true, "the first result");
    const statsBefore = await stats(server, "pos");
    const res = await server.admin("POST", "/admin/tenants/pos/disconnect");
    assert.equal(res.status, 200, res.text);
    assert.ok(res.body.sessions >= 1);
    await until("the client to reconnect", () => a.connectionState().connectionCount >= 2
      && a.connectionState().isWebSocketConnected);
    const statsAfter = await stats(server, "pos");
    assert.ok(statsAfter.droppedSessions > statsBefore.droppedSessions);
    await http.mutation(api.orders.create, { shopId, items: [{ productId, qty: 1 }] });
    await summary.next((v) => v.openOrders === before.openOrders + 1, "the update after reconnecting");
    // Its own mutations work on the new socket too.
    await a.mutation(api.orders.create, { shopId, items: [{ productId, qty: 1 }] });
    assert.equal(summary.latest().openOrders, before.openOrders + 2);
  });

  test("identical subscriptions share one evaluation", async () => {
    const [a, b] = [liveClient(url), liveClient(url)];
    clients.push(a, b);
    const args = { productId };
    const wa = watch(a, api.products.get, args);
    const wb = watch(b, api.products.get, args);
    await wa.next(() => true, "a's first result");
    await wb.next(() => true, "b's first result");
    const s0 = await stats(server, "pos");
    await http.mutation(api.products.restock, { productId, qty: 5 });
    const stock = (await http.query(api.products.get, args)).stock;
    await wa.next((v) => v.stock === stock, "a sees the restock");
    await wb.next((v) => v.stock === stock, "b sees the restock");
    const s1 = await stats(server, "pos");
    assert.ok(s1.subscriptions >= 2);
    // products:get for this product is one live query however many subscribe to it.
    assert.ok(s1.liveQueries < s1.subscriptions, JSON.stringify(s1));
    assert.ok(s1.evaluations > s0.evaluations);
  });
});

describe("dependency tracking", () => {
  let server;
  const N = 1000;
  let a;
  let b;
  let httpA;
  let httpB;

  before(async () => {
    server = await NimbusServer.start();
    ({ client: httpA } = await server.tenantWithApp("deps-a"));
    ({ client: httpB } = await server.tenantWithApp("deps-b"));
    // Create the table first: a commit that creates a table re-runs every subscription.
    await httpA.mutation(api.counter.increment, { name: "setup" });
    await httpB.mutation(api.counter.increment, { name: "setup" });
    a = liveClient(server.tenantUrl("deps-a"));
    b = liveClient(server.tenantUrl("deps-b"));
  });

  after(async () => {
    await a?.close();
    await b?.close();
    await server?.cleanup();
  });

  test(`${N} subscriptions on ${N} index ranges: a commit re-runs only the one it writes into`, async () => {
    const watches = [];
    for (let i = 0; i < N; i++) {
      watches.push(watch(a, api.counter.get, { name: `c${i}` }));
    }
    const watchB = watch(b, api.counter.get, { name: "c500" });
    await Promise.all(watches.map((w, i) => w.next(() => true, `c${i}'s first result`)));
    await watchB.next(() => true, "tenant B's first result");
    const settled = await stats(server, "deps-a");
    assert.equal(settled.liveQueries, N);
    assert.equal(settled.subscriptions, N);
    const otherBefore = await stats(server, "deps-b");

    // An insert into one range (a new counter row).
    await httpA.mutation(api.counter.increment, { name: "c500" });
    await watches[500].next((v) => v === 1, "c500 = 1");
    await until("the round to finish", async () =>
      (await stats(server, "deps-a")).commitsMatched > settled.commitsMatched);
    await sleep(200); // any stray evaluation would show up by now
    const afterInsert = await stats(server, "deps-a");
    assert.equal(afterInsert.evaluations - settled.evaluations, 1, JSON.stringify({ settled, afterInsert }));

    // An update of that row, and an insert outside every range.
    await httpA.mutation(api.counter.increment, { name: "c500" });
    await httpA.mutation(api.counter.increment, { name: "not-watched" });
    await watches[500].next((v) => v === 2, "c500 = 2");
    await until("both commits to be matched", async () =>
      (await stats(server, "deps-a")).commitsMatched >= afterInsert.commitsMatched + 2);
    await sleep(200);
    const afterBoth = await stats(server, "deps-a");
    assert.equal(afterBoth.evaluations - afterInsert.evaluations, 1, JSON.stringify({ afterInsert, afterBoth }));
    for (const [i, w] of watches.entries()) {
      if (i !== 500) {
        assert.equal(w.seen.length, 1, `c${i} was updated`);
      }
    }

    // Tenant B (same table, same query, same name) re-evaluated nothing.
    const otherAfter = await stats(server, "deps-b");
    assert.equal(otherAfter.evaluations, otherBefore.evaluations);
    assert.equal(otherAfter.commitsMatched, otherBefore.commitsMatched);
    assert.deepEqual(watchB.seen, [null]);
  });
});

describe("bad input on the socket", () => {
  let server;
  let url;
  let good;
  let goodWatch;
  let http;
  const LIMIT = 1 << 20;

  before(async () => {
    server = await NimbusServer.start({
      args: ["--max-request-bytes", String(LIMIT), "--max-subscriptions-per-connection", "2"],
    });
    ({ url, client: http } = await server.tenantWithApp("bad"));
    await http.mutation(api.counter.increment, { name: "x" });
    good = liveClient(url);
    goodWatch = watch(good, api.counter.get, { name: "x" });
    await goodWatch.next((v) => v === 1, "the good client's first result");
  });

  after(async () => {
    await good?.close();
    await server?.cleanup();
  });

  const cases = [
    ["garbage text", (s) => s.send("this is not json"), /not valid JSON/],
    ["a binary frame", (s) => s.ws.send(Buffer.from([1, 2, 3])), /binary/],
    ["a message before Connect", (s) => s.send({ type: "Event", eventType: "x", event: null }), /first message must be Connect/],
    ["an unknown message type", (s) => { s.connect(); s.send({ type: "Bogus" }); }, /unknown message type/],
    ["a query set version out of order", (s) => {
      s.connect();
      s.send({ type: "ModifyQuerySet", baseVersion: 5, newVersion: 6, modifications: [] });
    }, /out of order/],
    ["a sessionId that is not 1 to 64 of [A-Za-z0-9_-]", (s) => {
      s.send({ type: "Connect", sessionId: "not a session id!", connectionCount: 0, lastCloseReason: null, clientTs: 0 });
    }, /^InvalidSessionId/],
  ];
  for (const [name, act, pattern] of cases) {
    test(`${name} → FatalError and close for that socket only`, async () => {
      const s = await rawSocket(url);
      act(s);
      const fatal = await s.message((m) => m.type === "FatalError", "a FatalError");
      assert.match(fatal.error, pattern);
      const closed = await s.closed();
      assert.equal(closed.code, 1008);
    });
  }

  test("a message over the size limit is refused", async () => {
    const s = await rawSocket(url);
    s.connect();
    s.send({ type: "Event", eventType: "big", event: "x".repeat(LIMIT + 10) });
    const closed = await s.closed();
    assert.notEqual(closed.code, 1000);
    const fatal = s.messages.find((m) => m.type === "FatalError");
    if (fatal) {
      assert.match(fatal.error, /larger than the limit/);
    }
  });

  test("subscriptions beyond the per-connection limit fail with a clear error", async () => {
    const s = await rawSocket(url);
    s.connect();
    const add = (queryId) => ({ type: "Add", queryId, udfPath: "counter:get", args: [{ name: `n${queryId}` }] });
    s.send({ type: "ModifyQuerySet", baseVersion: 0, newVersion: 1, modifications: [add(0), add(1), add(2)] });
    const t = await s.message((m) => m.type === "Transition" && m.endVersion.querySet === 1, "the transition");
    const byId = Object.fromEntries(t.modifications.map((m) => [m.queryId, m]));
    assert.equal(byId[0].type, "QueryUpdated");
    assert.equal(byId[1].type, "QueryUpdated");
    assert.equal(byId[2].type, "QueryFailed");
    assert.match(byId[2].errorMessage, /TooManySubscriptions/);
    s.ws.close();
  });

  test("the raw protocol: versions, results, a mutation and the Transition that reflects it", async () => {
    const s = await rawSocket(url);
    s.connect();
    s.send({ type: "ModifyQuerySet", baseVersion: 0, newVersion: 1, modifications: [
      { type: "Add", queryId: 7, udfPath: "counter:get", args: [{ name: "raw" }] },
    ] });
    const t1 = await s.message((m) => m.type === "Transition", "the first transition");
    assert.deepEqual(t1.startVersion, { querySet: 0, identity: 0, ts: "AAAAAAAAAAA=" });
    assert.equal(t1.endVersion.querySet, 1);
    assert.deepEqual(t1.modifications, [{ type: "QueryUpdated", queryId: 7, value: null, logLines: [], journal: null }]);
    s.send({ type: "Mutation", requestId: 0, udfPath: "counter:increment", args: [{ name: "raw" }] });
    const response = await s.message((m) => m.type === "MutationResponse", "the mutation response");
    assert.equal(response.success, true);
    assert.equal(response.result, 1);
    const ts = Buffer.from(response.ts, "base64").readBigUInt64LE();
    const reflecting = await s.message(
      (m) => m.type === "Transition" && Buffer.from(m.endVersion.ts, "base64").readBigUInt64LE() >= ts,
      "a transition reaching the commit",
    );
    assert.deepEqual(reflecting.startVersion, t1.endVersion);
    assert.ok(s.messages.indexOf(response) < s.messages.indexOf(reflecting), "response before transition");
    assert.deepEqual(reflecting.modifications, [{ type: "QueryUpdated", queryId: 7, value: 1, logLines: [], journal: null }]);
    // The same order for many mutations, three in flight at a time: a Transition whose
    // timestamp reaches a commit never goes out before that commit's MutationResponse (the
    // client would layer the optimistic update on top of results that already have it).
    const tsOf = (m) => Buffer.from(m.type === "Transition" ? m.endVersion.ts : m.ts, "base64").readBigUInt64LE();
    for (let i = 1; i <= 30; i++) {
      s.send({ type: "Mutation", requestId: i, udfPath: "counter:increment", args: [{ name: "raw" }] });
      if (i % 3 === 0) await s.message((m) => m.type === "MutationResponse" && m.requestId === i, `response ${i}`);
    }
    const last = await s.message((m) => m.type === "MutationResponse" && m.requestId === 30, "the last response");
    assert.equal(last.result, 31);
    await s.message((m) => m.type === "Transition" && tsOf(m) >= tsOf(last), "a transition reaching the last commit");
    for (let i = 1; i <= 30; i++) {
      const r = s.messages.find((m) => m.type === "MutationResponse" && m.requestId === i);
      assert.equal(r.success, true);
      const early = s.messages.findIndex((m) => m.type === "Transition" && tsOf(m) >= tsOf(r));
      assert.ok(early > s.messages.indexOf(r), `mutation ${i}: a Transition reached its commit before its response`);
    }
    // A user JWT is refused with AuthError (Nimbus has no auth providers yet).
    s.send({ type: "Authenticate", baseVersion: 0, tokenType: "User", value: "a.b.c" });
    const authError = await s.message((m) => m.type === "AuthError", "an AuthError");
    assert.equal(authError.baseVersion, 0);
    await s.closed();
  });

  test("the other connection kept working throughout", async () => {
    await http.mutation(api.counter.increment, { name: "x" });
    await goodWatch.next((v) => v === 2, "the good client's update");
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200);
  });

  test("deleting the tenant closes its sockets with 4040", async () => {
    const s = await rawSocket(url);
    s.connect();
    await sleep(100);
    await server.deleteTenant("bad");
    const closed = await s.closed();
    assert.equal(closed.code, 4040);
  });
});
