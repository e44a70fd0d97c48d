// Durability: SIGKILL `nimbus serve` in the middle of concurrent mutations, restart it, and
// find every acknowledged mutation and no partial one. Each mutation writes PARTS rows.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, api, callRaw, client, sleep } from "./harness.mjs";

const PARTS = 3; // durability.ts writes this many rows per mutation
const WRITERS = 8;

let server;
let url;

before(
  async () => {
    server = await NimbusServer.start();
    ({ url } = await server.tenantWithApp("durable"));
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

/**
 * Runs WRITERS loops of `durability:write` until the server dies. Kills the server with
 * SIGKILL once `minAcked` writes were acknowledged (or after `maxMs`), while requests are in
 * flight. Returns per-writer `{acked: Set, attempted: max seq sent}`.
 */
async function writeUntilKilled(round, { minAcked, maxMs }) {
  const writers = Array.from({ length: WRITERS }, (_, w) => ({ id: round * 100 + w, acked: new Set(), attempted: -1 }));
  let inFlight = 0;
  let stop = false;
  let totalAcked = 0;
  const loops = writers.map(async (writer) => {
    for (let seq = 0; !stop; seq++) {
      writer.attempted = seq;
      inFlight += 1;
      try {
        const res = await callRaw(url, "mutation", "durability:write", { writer: writer.id, seq }, { timeoutMs: 30_000 });
        if (res.status === 200 && res.body?.status === "success") {
          writer.acked.add(seq);
          totalAcked += 1;
        } else if (res.status === 429) {
          await sleep(20); // Overloaded: back off, the seq is retried as a new one
        } else {
          throw new Error(`unexpected answer ${res.status}: ${res.text}`);
        }
      } catch (error) {
        if (error?.message?.startsWith("unexpected answer")) {
          throw error;
        }
        return; // The connection died with the server.
      } finally {
        inFlight -= 1;
      }
    }
  });
  const started = Date.now();
  while (totalAcked < minAcked && Date.now() - started < maxMs) {
    await sleep(10);
  }
  // Kill at a moment when requests are in flight.
  const waitInFlight = Date.now();
  while (inFlight === 0 && Date.now() - waitInFlight < 2_000) {
    await sleep(1);
  }
  const inFlightAtKill = inFlight;
  await server.kill();
  stop = true;
  await Promise.all(loops);
  return { writers, inFlightAtKill, totalAcked };
}

async function verify(writers) {
  const c = client(url);
  let present = 0;
  for (const writer of writers) {
    const rows = await c.query(api.durability.rows, { writer: writer.id });
    const parts = new Map();
    for (const { seq, part } of rows) {
      if (!parts.has(seq)) {
        parts.set(seq, []);
      }
      parts.get(seq).push(part);
    }
    for (const [seq, list] of parts) {
      assert.deepEqual(
        [...list].sort(),
        Array.from({ length: PARTS }, (_, i) => i),
        `writer ${writer.id} seq ${seq}: partial or duplicated mutation (parts ${list})`,
      );
      assert.ok(seq <= writer.attempted, `writer ${writer.id} seq ${seq} was never sent`);
    }
    for (const seq of writer.acked) {
      assert.ok(parts.has(seq), `writer ${writer.id}: acknowledged seq ${seq} is missing after the crash`);
    }
    present += parts.size;
  }
  return present;
}

test("acknowledged mutations survive SIGKILL, partial ones never appear", { timeout: 300_000 }, async () => {
  for (let round = 1; round <= 2; round++) {
    const { writers, inFlightAtKill, totalAcked } = await writeUntilKilled(round, { minAcked: 150, maxMs: 20_000 });
    assert.ok(totalAcked > 0, "some mutations must be acknowledged before the kill");
    assert.ok(inFlightAtKill > 0, "the kill must happen while mutations are in flight");
    await server.launch();
    const present = await verify(writers);
    assert.ok(present >= totalAcked, `round ${round}: ${present} mutations present, ${totalAcked} acknowledged`);
    // A clean restart changes nothing.
    await server.restart("SIGTERM");
    assert.equal(await verify(writers), present);
  }
});

test("the tenant keeps working after the crashes", { timeout: 60_000 }, async () => {
  const c = client(url);
  await c.mutation(api.durability.write, { writer: 9999, seq: 0 });
  assert.deepEqual(
    (await c.query(api.durability.rows, { writer: 9999 })).map((r) => r.part).sort(),
    Array.from({ length: PARTS }, (_, i) => i),
  );
});
