// Reads at a past timestamp (`/api/query_ts` + `/api/query_at_ts`, what
// ConvexHttpClient.consistentQuery uses): a query at an earlier ts sees the data as it was.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, api, client } from "./harness.mjs";

let server;
let url;

before(
  async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp("snap"));
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

async function post(path, body) {
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function getAt(ts) {
  return post("/api/query_at_ts", { path: "counter:get", args: [{ name: "x" }], format: "convex_encoded_json", ts });
}

test("query_at_ts reads the snapshot of the given timestamp", async () => {
  const c = client(url);
  await c.mutation(api.counter.increment, { name: "x" });
  const first = await post("/api/query_ts", {});
  assert.equal(first.status, 200);
  await c.mutation(api.counter.increment, { name: "x" });
  await c.mutation(api.counter.increment, { name: "x" });
  const second = await post("/api/query_ts", {});
  assert.notEqual(second.body.ts, first.body.ts);

  const old = await getAt(first.body.ts);
  assert.equal(old.status, 200);
  assert.deepEqual([old.body.status, old.body.value], ["success", 1]);
  const now = await getAt(second.body.ts);
  assert.deepEqual([now.body.status, now.body.value], ["success", 3]);

  // Timestamps before the retained window, or after the latest, are refused clearly.
  const ancient = await getAt("AQAAAAAAAAA=");
  assert.equal(ancient.status, 400);
  assert.equal(ancient.body.code, "SnapshotUnavailable");
  const future = await getAt("//////////8=");
  assert.equal(future.status, 400);
  assert.equal(future.body.code, "SnapshotUnavailable");
  const malformed = await getAt("not base64!");
  assert.equal(malformed.status, 400);
  assert.equal(malformed.body.code, "BadJsonInput");
});
