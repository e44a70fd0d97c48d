// Exactly-once mutations across dropped sockets (spec §6.5 item 5): a client that loses its
// socket re-sends every mutation it has not seen completed, with the same `sessionId` and
// `requestId`. The server must run each (sessionId, requestId) once and answer a re-send with
// the first run's result (same `result` and `ts`) — also when the first socket died while the
// mutation was at the committer, and across a restart of the server.
//
// Every trial increments a fresh counter (`counter:increment`, read-modify-write), so a
// double run shows up as a counter of 2.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomInt, randomUUID } from "node:crypto";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { NimbusServer, api, callRaw, expectSuccess, sleep, withTimeout } from "./harness.mjs";

const WAIT_MS = 30_000;
const RAW_TRIALS = 200;
const RAW_PARALLEL = 10;
const CLIENT_MUTATIONS = 200;
const CLIENTS = 20; // each runs CLIENT_MUTATIONS / CLIENTS mutations one after the other
const RESTART_TRIALS = 10;
const OTHER_MUTATIONS = 5_000; // more than the 4,096 pairs the old in-memory table holds

// ---------------------------------------------------------------------------------------------
// Helpers.

/** A raw sync-protocol socket: `send` JSON, `message(pred)` waits for a matching message. */
async function rawSocket(url) {
  const ws = new WebSocket(url.replace(/^http/, "ws") + "/api/1.48.0/sync");
  const messages = [];
  const waiters = [];
  let closed = null;
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
  ws.on("close", (code) => {
    closed = { code };
    wake();
  });
  ws.on("error", () => {});
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    }),
    WAIT_MS,
    "opening a raw socket",
  );
  return {
    ws,
    messages,
    send: (m) => ws.send(JSON.stringify(m)),
    /** `Connect` as the npm client sends it on its `connectionCount`-th socket. */
    connect: (sessionId, connectionCount) =>
      ws.send(JSON.stringify({
        type: "Connect",
        sessionId,
        connectionCount,
        lastCloseReason: connectionCount === 0 ? null : "closed with code 1006",
        clientTs: Date.now(),
      })),
    message: async (pred, what, timeoutMs = WAIT_MS) => {
      const found = () => messages.find(pred);
      if (!found()) {
        await withTimeout(
          new Promise((resolve) => waiters.push({ check: () => found() !== undefined || closed !== null, resolve })),
          timeoutMs,
          what,
        );
      }
      const m = found();
      if (m === undefined) {
        throw new Error(`${what}: the socket closed first (${JSON.stringify(closed)}); messages: ${JSON.stringify(messages)}`);
      }
      return m;
    },
  };
}

function incrementMessage(requestId, name) {
  return { type: "Mutation", requestId, udfPath: "counter:increment", args: [{ name }] };
}

/** Runs `fn` after 0–3 ms (0: on the next turn of the event loop, before any timer). */
function afterRandomDelay(fn) {
  const ms = randomInt(0, 4);
  return new Promise((resolve) => {
    const run = () => resolve(fn(ms));
    if (ms === 0) {
      setImmediate(run);
    } else {
      setTimeout(run, ms);
    }
  });
}

/** Runs `tasks` (functions returning promises) with at most `limit` in flight. */
async function pool(tasks, limit) {
  const results = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, tasks.length) }, async () => {
      while (next < tasks.length) {
        const i = next++;
        results[i] = await tasks[i]();
      }
    }),
  );
  return results;
}

/** The value of a counter, read over HTTP (null when the row does not exist). */
async function counterValue(url, name) {
  return expectSuccess(assert, await callRaw(url, "query", "counter:get", { name }, { timeoutMs: WAIT_MS }));
}

/**
 * The official ConvexClient over a `ws` subclass that records its sockets, so the test can
 * terminate the live one (as a network failure would: no close frame).
 */
function recordingClient(url) {
  const sockets = [];
  class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const convex = new ConvexClient(url, {
    webSocketConstructor: RecordingWebSocket,
    skipConvexDeploymentUrlCheck: true,
    unsavedChangesWarning: false,
    logger: false,
  });
  return { convex, sockets, current: () => sockets[sockets.length - 1] };
}

/** Waits (bounded) until the recording client's current socket is open and in use. */
async function connected(c, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(c.convex.connectionState().isWebSocketConnected && c.current()?.readyState === WebSocket.OPEN)) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(10);
  }
}

// ---------------------------------------------------------------------------------------------

describe("exactly-once mutations across dropped sockets", () => {
  let server;
  let url;

  before(
    async () => {
      server = await NimbusServer.start();
      ({ url } = await server.tenantWithApp("once"));
      // Create the counters table first, so no trial is the commit that creates it.
      await counterValue(url, "setup");
      await callRaw(url, "mutation", "counter:increment", { name: "setup" });
    },
    { timeout: 240_000 },
  );

  after(async () => {
    await server?.cleanup();
  });

  /**
   * One raw trial: socket 1 sends the mutation and dies 0–3 ms later; socket 2 (same session,
   * connectionCount 1) re-sends it. Returns what happened.
   */
  async function rawTrial(trial) {
    const name = `raw-${trial}-${randomUUID()}`;
    const sessionId = randomUUID();
    const first = await rawSocket(url);
    first.connect(sessionId, 0);
    first.send(incrementMessage(0, name));
    const delayMs = await afterRandomDelay((ms) => {
      first.ws.terminate();
      return ms;
    });
    const second = await rawSocket(url);
    try {
      second.connect(sessionId, 1);
      second.send(incrementMessage(0, name));
      const response = await second.message(
        (m) => m.type === "MutationResponse" && m.requestId === 0,
        `trial ${trial}: the re-sent mutation's response`,
      );
      const value = await counterValue(url, name);
      return { trial, name, delayMs, success: response.success, result: response.result, value };
    } finally {
      second.ws.terminate();
    }
  }

  test(`a) raw protocol: ${RAW_TRIALS} mutations re-sent after the socket died 0–3 ms after sending`, { timeout: 180_000 }, async () => {
    const outcomes = await pool(
      Array.from({ length: RAW_TRIALS }, (_, i) => () => rawTrial(i)),
      RAW_PARALLEL,
    );
    const failed = outcomes.filter((o) => o.success !== true);
    const doubles = outcomes.filter((o) => o.value !== 1);
    const wrongResult = outcomes.filter((o) => o.success === true && o.result !== 1);
    console.log(
      `raw trials: ${RAW_TRIALS}, doubles (counter != 1): ${doubles.length}, ` +
        `re-sends answered with a result other than 1: ${wrongResult.length}, failed responses: ${failed.length}`,
    );
    assert.deepEqual(failed, [], `every re-send must succeed:\n${server.logTail(20)}`);
    assert.equal(
      doubles.length,
      0,
      `${doubles.length} of ${RAW_TRIALS} mutations ran twice (counter != 1): ${JSON.stringify(doubles.slice(0, 10))}`,
    );
    assert.equal(wrongResult.length, 0, `re-sends must get the first run's result: ${JSON.stringify(wrongResult.slice(0, 10))}`);
  });

  test(`b) the npm ConvexClient: ${CLIENT_MUTATIONS} mutations, the socket terminated 0–3 ms after each`, { timeout: 180_000 }, async () => {
    const clients = Array.from({ length: CLIENTS }, () => recordingClient(url));
    const outcomes = [];
    try {
      await Promise.all(
        clients.map(async (c, k) => {
          for (let j = 0; j < CLIENT_MUTATIONS / CLIENTS; j++) {
            // Start each mutation on a live socket (the previous one may still be reconnecting).
            await connected(c, `client ${k} to reconnect before mutation ${j}`);
            const name = `client-${k}-${j}-${randomUUID()}`;
            const pending = c.convex.mutation(api.counter.increment, { name });
            pending.catch(() => {}); // awaited below; avoid an unhandled rejection meanwhile
            const terminated = await afterRandomDelay(() => {
              const ws = c.current();
              if (ws?.readyState === WebSocket.OPEN) {
                ws.terminate();
                return true;
              }
              return false;
            });
            let result;
            let error = null;
            try {
              result = await withTimeout(pending, WAIT_MS, `client ${k} mutation ${j}`);
            } catch (e) {
              error = String(e?.message ?? e);
            }
            outcomes.push({ name, terminated, result, error });
          }
        }),
      );
    } finally {
      await Promise.all(clients.map((c) => c.convex.close()));
    }
    const values = await pool(outcomes.map((o) => () => counterValue(url, o.name)), 10);
    outcomes.forEach((o, i) => {
      o.value = values[i];
    });
    const errors = outcomes.filter((o) => o.error !== null);
    const doubles = outcomes.filter((o) => o.value !== 1);
    const wrongResult = outcomes.filter((o) => o.error === null && o.result !== 1);
    const terminations = outcomes.filter((o) => o.terminated).length;
    const sockets = clients.reduce((sum, c) => sum + c.sockets.length, 0);
    console.log(
      `npm client: ${CLIENT_MUTATIONS} mutations, ${terminations} sockets terminated, ${sockets} sockets opened, ` +
        `doubles: ${doubles.length}, wrong results: ${wrongResult.length}, errors: ${errors.length}`,
    );
    assert.ok(terminations >= CLIENT_MUTATIONS / 2, `too few sockets were terminated (${terminations}) for the test to mean anything`);
    assert.deepEqual(errors, [], "every mutation promise must resolve");
    assert.equal(
      doubles.length,
      0,
      `${doubles.length} of ${CLIENT_MUTATIONS} mutations ran twice: ${JSON.stringify(doubles.slice(0, 10))}`,
    );
    assert.deepEqual(wrongResult, [], "every mutation must resolve to the first run's result (1)");
  });

  test("d) a re-send after the first response arrived gets the same result and ts", { timeout: 60_000 }, async () => {
    const name = `replay-${randomUUID()}`;
    const sessionId = randomUUID();
    const first = await rawSocket(url);
    first.connect(sessionId, 0);
    first.send(incrementMessage(0, name));
    const original = await first.message((m) => m.type === "MutationResponse" && m.requestId === 0, "the first response");
    assert.equal(original.success, true, JSON.stringify(original));
    assert.equal(original.result, 1);
    first.ws.terminate();

    const second = await rawSocket(url);
    second.connect(sessionId, 1);
    second.send(incrementMessage(0, name));
    const replay = await second.message((m) => m.type === "MutationResponse" && m.requestId === 0, "the replayed response");
    second.ws.terminate();
    assert.equal(replay.success, true, JSON.stringify(replay));
    assert.deepEqual(replay.result, original.result, "the replay must carry the first run's result");
    assert.equal(replay.ts, original.ts, "the replay must carry the first run's commit ts");
    assert.equal(await counterValue(url, name), 1, "the re-send must not run again");
  });

  test(`d) a re-send is answered from memory even after ${OTHER_MUTATIONS} other mutations`, { timeout: 120_000 }, async () => {
    const name = `remembered-${randomUUID()}`;
    const sessionId = randomUUID();
    const first = await rawSocket(url);
    first.connect(sessionId, 0);
    first.send(incrementMessage(0, name));
    const original = await first.message((m) => m.type === "MutationResponse" && m.requestId === 0, "the first response");
    assert.equal(original.success, true, JSON.stringify(original));
    first.ws.terminate();

    // Other sessions' mutations, pipelined on one socket (the server reads at most 64 ahead).
    const busy = await rawSocket(url);
    busy.connect(randomUUID(), 0);
    for (let i = 0; i < OTHER_MUTATIONS; i++) {
      busy.send(incrementMessage(i, "filler"));
    }
    const last = await busy.message(
      (m) => m.type === "MutationResponse" && m.requestId === OTHER_MUTATIONS - 1,
      "the last of the other mutations",
      90_000,
    );
    busy.ws.terminate();
    assert.equal(last.success, true, JSON.stringify(last));

    const second = await rawSocket(url);
    second.connect(sessionId, 1);
    second.send(incrementMessage(0, name));
    const replay = await second.message((m) => m.type === "MutationResponse" && m.requestId === 0, "the replayed response");
    second.ws.terminate();
    assert.equal(replay.success, true, JSON.stringify(replay));
    assert.equal(
      await counterValue(url, name),
      1,
      `the re-send ran again after ${OTHER_MUTATIONS} other mutations (results must be remembered for 10 minutes)`,
    );
    assert.deepEqual(replay.result, original.result);
    assert.equal(replay.ts, original.ts);
  });

  test("d) a re-send after a restart (SIGKILL) gets the first run's result and ts", { timeout: 120_000 }, async () => {
    const name = `durable-replay-${randomUUID()}`;
    const sessionId = randomUUID();
    const first = await rawSocket(url);
    first.connect(sessionId, 0);
    first.send(incrementMessage(0, name));
    const original = await first.message((m) => m.type === "MutationResponse" && m.requestId === 0, "the first response");
    assert.equal(original.success, true, JSON.stringify(original));
    first.ws.terminate();

    // Acknowledged means durable, and so must be the memory of the answer.
    await server.kill();
    await server.launch();

    const second = await rawSocket(url);
    second.connect(sessionId, 1);
    second.send(incrementMessage(0, name));
    const replay = await second.message((m) => m.type === "MutationResponse" && m.requestId === 0, "the replayed response");
    second.ws.terminate();
    assert.equal(replay.success, true, JSON.stringify(replay));
    assert.equal(await counterValue(url, name), 1, "the re-send after the restart ran the mutation again");
    assert.deepEqual(replay.result, original.result);
    assert.equal(replay.ts, original.ts);
  });

  test(`c) ${RESTART_TRIALS} restarts between send and re-send`, { timeout: 180_000 }, async () => {
    const outcomes = [];
    for (let trial = 0; trial < RESTART_TRIALS; trial++) {
      const name = `restart-${trial}-${randomUUID()}`;
      const sessionId = randomUUID();
      const first = await rawSocket(url);
      first.connect(sessionId, 0);
      first.send(incrementMessage(0, name));
      await afterRandomDelay(() => first.ws.terminate());
      // Even trials: SIGKILL a few ms after the socket died (the mutation may or may not have
      // committed). Odd trials: a little later, so the first run has usually committed and
      // only the memory of its answer is at stake.
      await sleep(trial % 2 === 0 ? randomInt(0, 6) : 100);
      await server.kill();
      await server.launch();
      const committedBeforeKill = (await counterValue(url, name)) === 1;

      const second = await rawSocket(url);
      let response;
      try {
        second.connect(sessionId, 1);
        second.send(incrementMessage(0, name));
        response = await second.message((m) => m.type === "MutationResponse" && m.requestId === 0, `trial ${trial}: the re-sent mutation's response`);
      } finally {
        second.ws.terminate();
      }
      const value = await counterValue(url, name);
      outcomes.push({ trial, committedBeforeKill, success: response.success, result: response.result, value });
    }
    const committed = outcomes.filter((o) => o.committedBeforeKill).length;
    const doubles = outcomes.filter((o) => o.value !== 1);
    console.log(
      `restart trials: ${RESTART_TRIALS}, first run committed before the kill: ${committed}, doubles: ${doubles.length}`,
    );
    assert.deepEqual(outcomes.filter((o) => o.success !== true), [], "every re-send must succeed");
    assert.deepEqual(doubles, [], "no mutation may run twice across a restart");
    assert.deepEqual(outcomes.filter((o) => o.result !== 1), [], "every re-send must get the first run's result (1)");
  });
});
