// Serializability: 50 concurrent clients each increment one counter 20 times -> exactly 1000,
// and every increment saw a distinct value.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, api, client } from "./harness.mjs";

const CLIENTS = 50;
const INCREMENTS = 20;

let server;
let url;

before(
  async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp("counter"));
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

test(`${CLIENTS} clients x ${INCREMENTS} increments of one counter`, { timeout: 300_000 }, async () => {
  const seen = [];
  const failures = [];
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      const c = client(url);
      for (let i = 0; i < INCREMENTS; i++) {
        try {
          seen.push(await c.mutation(api.counter.increment, { name: "shared" }));
        } catch (error) {
          failures.push(String(error?.message ?? error));
        }
      }
    }),
  );
  assert.deepEqual(failures, [], `every increment must succeed (server log:\n${server.logTail()})`);
  const total = CLIENTS * INCREMENTS;
  assert.equal(await client(url).query(api.counter.get, { name: "shared" }), total);
  // Each increment returned the value it wrote: a serial order means 1..1000, each once.
  assert.deepEqual(
    [...seen].sort((a, b) => a - b),
    Array.from({ length: total }, (_, i) => i + 1),
  );
});

test("counters with different names do not interfere", { timeout: 120_000 }, async () => {
  await Promise.all(
    Array.from({ length: 10 }, async (_, k) => {
      const c = client(url);
      for (let i = 0; i < 5; i++) {
        await c.mutation(api.counter.increment, { name: `own-${k}` });
      }
    }),
  );
  const c = client(url);
  for (let k = 0; k < 10; k++) {
    assert.equal(await c.query(api.counter.get, { name: `own-${k}` }), 5);
  }
  assert.equal(await c.query(api.counter.get, { name: "shared" }), CLIENTS * INCREMENTS);
});
