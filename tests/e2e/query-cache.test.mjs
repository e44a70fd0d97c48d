// The query cache: a repeated query is answered from cache only while no commit has written
// into the index ranges it read; a write inside them invalidates it, a write elsewhere does not.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, api, client } from "./harness.mjs";

let server;
let url;

before(
  async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp("cache"));
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

async function get(name) {
  const res = await fetch(`${url}/api/query`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ path: "counter:get", args: [{ name }], format: "convex_encoded_json" }),
  });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.status, "success", JSON.stringify(body));
  return { value: body.value, cache: res.headers.get("nimbus-query-cache") };
}

test("repeated queries hit the cache until a commit writes into their read set", async () => {
  const c = client(url);
  await c.mutation(api.counter.increment, { name: "a" });
  await c.mutation(api.counter.increment, { name: "b" });

  assert.deepEqual(await get("a"), { value: 1, cache: "miss" });
  assert.deepEqual(await get("a"), { value: 1, cache: "hit" });

  // A write outside the range `a`'s query read leaves its cached result valid.
  await c.mutation(api.counter.increment, { name: "b" });
  assert.deepEqual(await get("a"), { value: 1, cache: "hit" });
  assert.deepEqual(await get("b"), { value: 2, cache: "miss" });

  // A write inside it invalidates it: the next read runs the query again.
  await c.mutation(api.counter.increment, { name: "a" });
  assert.deepEqual(await get("a"), { value: 2, cache: "miss" });
  assert.deepEqual(await get("a"), { value: 2, cache: "hit" });

  // A query for a name that does not exist yet reads an empty range; creating it invalidates.
  assert.deepEqual(await get("c"), { value: null, cache: "miss" });
  assert.deepEqual(await get("c"), { value: null, cache: "hit" });
  await c.mutation(api.counter.increment, { name: "c" });
  assert.deepEqual(await get("c"), { value: 1, cache: "miss" });
});
