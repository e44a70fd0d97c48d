// Bad input and runaway functions: each gets a clear JSON error with a stable code and the
// right HTTP status, the server never falls over, and other tenants keep being served while a
// function spins in an infinite loop.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  NimbusServer,
  api,
  callRaw,
  client,
  expectFunctionError,
  expectRequestError,
  expectSuccess,
  httpRequest,
  postLarge,
  postRaw,
} from "./harness.mjs";

const MAX_REQUEST_BYTES = 8 * 1024 * 1024; // the server's default --max-request-bytes

let server;
let lim; // the tenant that misbehaves
let other; // a bystander

before(
  async () => {
    server = await NimbusServer.start();
    lim = await server.tenantWithApp("lim");
    other = await server.tenantWithApp("other");
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
});

function nestedArray(depth) {
  let value = 0;
  for (let i = 0; i < depth; i++) {
    value = [value];
  }
  return value;
}

function nestedObject(depth) {
  let value = "leaf";
  for (let i = 0; i < depth; i++) {
    value = { a: value };
  }
  return value;
}

describe("malformed requests", () => {
  test("a body that is not JSON is 400 BadJsonInput", async () => {
    for (const kind of ["query", "mutation"]) {
      expectRequestError(assert, await postRaw(lim.url, kind, "{not json"), 400, "BadJsonInput");
      expectRequestError(assert, await postRaw(lim.url, kind, ""), 400, "BadJsonInput");
    }
  });

  test("JSON of the wrong shape is 400 BadJsonInput", async () => {
    expectRequestError(assert, await postRaw(lim.url, "query", "[1, 2, 3]"), 400, "BadJsonInput");
    expectRequestError(assert, await postRaw(lim.url, "query", JSON.stringify({ args: [{}] })), 400, "BadJsonInput");
    expectRequestError(
      assert,
      await postRaw(lim.url, "query", JSON.stringify({ path: 42, args: [{}], format: "convex_encoded_json" })),
      400,
      "BadJsonInput",
    );
  });

  test("a value nested deeper than 64 levels is 400 InvalidValue", async () => {
    for (const doc of [nestedArray(100), nestedObject(100)]) {
      const body = JSON.stringify({ path: "items:insertAny", format: "convex_encoded_json", args: [{ doc }] });
      expectRequestError(assert, await postRaw(lim.url, "mutation", body), 400, "InvalidValue");
    }
    // A moderately nested value is fine (and is then rejected by the schema, not the decoder).
    const ok = await callRaw(lim.url, "query", "validators:untyped", { doc: nestedArray(10) });
    assert.deepEqual(expectSuccess(assert, ok), ["doc"]);
  });

  test("invalid convex-JSON is 400 InvalidValue", async () => {
    const bad = [
      { x: { $integer: "AQ==" } }, // not 8 bytes
      { x: { $float: "AAAAAAAA8D8=" } }, // an ordinary number as $float
      { x: { $set: [] } }, // legacy type
      { $bad: 1 }, // field name starting with $
    ];
    for (const args of bad) {
      const body = JSON.stringify({ path: "validators:untyped", format: "convex_encoded_json", args: [args] });
      expectRequestError(assert, await postRaw(lim.url, "query", body), 400, "InvalidValue");
    }
  });

  test(`a body over ${MAX_REQUEST_BYTES} bytes is 413 RequestTooLarge`, { timeout: 120_000 }, async () => {
    const payload = "x".repeat(MAX_REQUEST_BYTES + 1024);
    const body = JSON.stringify({ path: "validators:sumLength", format: "convex_encoded_json", args: [{ payload }] });
    expectRequestError(assert, await postLarge(`${lim.url}/api/mutation`, body), 413, "RequestTooLarge");
    // Well under the limit is fine.
    const small = "y".repeat(512 * 1024);
    assert.equal(await lim.client.mutation(api.validators.sumLength, { payload: small }), small.length);
  });
});

describe("function errors", () => {
  test("an unknown function is 200 status:error FunctionNotFound", async () => {
    expectFunctionError(assert, await callRaw(lim.url, "query", "nope:missing", {}), "FunctionNotFound");
    expectFunctionError(assert, await callRaw(lim.url, "mutation", "items:doesNotExist", {}), "FunctionNotFound");
  });

  test("wrong argument types are ArgumentValidationError", async () => {
    expectFunctionError(
      assert,
      await callRaw(lim.url, "mutation", "items:insert", { group: 1, n: "one", name: null }),
      "ArgumentValidationError",
    );
  });

  test("an infinite loop is stopped with FunctionTimeout; another tenant is served meanwhile", { timeout: 180_000 }, async () => {
    let loopDone = false;
    const started = Date.now();
    const loop = callRaw(lim.url, "query", "limits:infiniteLoop", {}, { timeoutMs: 150_000 }).finally(() => {
      loopDone = true;
    });
    const bystander = client(other.url);
    const during = [];
    let i = 0;
    while (!loopDone) {
      const t0 = Date.now();
      const text = `during-${i++}`;
      await bystander.mutation(api.notes.add, { owner: "bystander", text });
      assert.equal(await bystander.query(api.limits.ping, {}), "pong");
      if (!loopDone) {
        during.push({ text, ms: Date.now() - t0 });
      }
    }
    const res = await loop;
    const loopMs = Date.now() - started;
    expectFunctionError(assert, res, "FunctionTimeout");
    assert.ok(during.length >= 3, `only ${during.length} bystander calls finished during a ${loopMs} ms loop`);
    const slowest = Math.max(...during.map((d) => d.ms));
    assert.ok(slowest < Math.max(2_000, loopMs / 2), `a bystander call took ${slowest} ms during the loop`);
    const notes = (await bystander.query(api.notes.byOwner, { owner: "bystander" })).map((n) => n.text);
    for (const { text } of during) {
      assert.ok(notes.includes(text), `bystander write ${text} was lost`);
    }
  });

  test("an infinite loop in a mutation times out and commits nothing", { timeout: 180_000 }, async () => {
    const res = await callRaw(lim.url, "mutation", "limits:infiniteLoopMutation", { owner: "looper" }, { timeoutMs: 150_000 });
    expectFunctionError(assert, res, "FunctionTimeout");
    assert.deepEqual(await lim.client.query(api.notes.byOwner, { owner: "looper" }), []);
  });

  test("a memory bomb is stopped with FunctionOutOfMemory", { timeout: 180_000 }, async () => {
    const res = await callRaw(lim.url, "query", "limits:memoryBomb", {}, { timeoutMs: 150_000 });
    expectFunctionError(assert, res, "FunctionOutOfMemory");
  });

  test("ArrayBuffers past the limit, and a 100 MB string, are FunctionOutOfMemory", { timeout: 180_000 }, async () => {
    for (const name of ["limits:arrayBufferBomb", "limits:hugeString"]) {
      const res = await callRaw(lim.url, "query", name, {}, { timeoutMs: 150_000 });
      expectFunctionError(assert, res, "FunctionOutOfMemory");
    }
    assert.equal(await other.client.query(api.limits.ping, {}), "pong");
  });

  test("endless recursion is a clear UncaughtError, and the tenant carries on", { timeout: 180_000 }, async () => {
    const res = await callRaw(lim.url, "query", "limits:deepRecursion", {}, { timeoutMs: 150_000 });
    expectFunctionError(assert, res, "UncaughtError");
    // V8: "RangeError: Maximum call stack size exceeded"; QuickJS: "InternalError: stack overflow".
    assert.match(res.body.errorMessage, /Maximum call stack size exceeded|stack overflow/);
    assert.equal(await lim.client.query(api.limits.ping, {}), "pong");
  });
});

describe("after all that", () => {
  test("the server is healthy and both tenants answer", async () => {
    const health = await httpRequest(`${server.url}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(health.body, { status: "ok" });
    assert.equal(server.running, true, "the server process must still be running");
    assert.equal(await lim.client.query(api.limits.ping, {}), "pong");
    assert.equal(await other.client.query(api.limits.ping, {}), "pong");
    const id = await lim.client.mutation(api.notes.add, { owner: "after", text: "still writable" });
    assert.equal((await lim.client.query(api.notes.get, { id })).text, "still writable");
  });
});
