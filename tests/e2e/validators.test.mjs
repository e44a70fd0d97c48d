// Argument and return validators are enforced by the server, and function kinds are checked.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConvexError } from "convex/values";
import {
  NimbusServer,
  api,
  callRaw,
  expectFunctionError,
  expectSuccess,
  httpRequest,
  rejection,
} from "./harness.mjs";

let server;
let c;
let url;
let itemId;

before(
  async () => {
    server = await NimbusServer.start();
    ({ client: c, url } = await server.tenantWithApp("validators"));
    itemId = await c.mutation(api.items.insert, { group: "v", n: 1, name: "for ids" });
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

function validArgs() {
  return {
    s: "text",
    n: 1.5,
    b: true,
    i: 9007199254740993n,
    bytes: new Uint8Array([0, 1, 2, 255]).buffer,
    nul: null,
    arr: [1, 2, 3],
    obj: { x: "x" },
    lit: "b",
    rec: { a: 1, b: 2 },
    maybe: "here",
    id: itemId,
  };
}

test("every validator kind accepts a valid value, and the value round-trips", async () => {
  const outs = [
    await c.query(api.validators.echo, validArgs()),
    await c.mutation(api.validators.echoMutation, validArgs()),
  ];
  for (const out of outs) {
    const { bytes, ...rest } = out;
    const { bytes: sentBytes, ...sentRest } = validArgs();
    assert.deepEqual(rest, sentRest);
    assert.ok(bytes instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(bytes)], [...new Uint8Array(sentBytes)]);
  }
});

test("optional fields may be absent", async () => {
  const { maybe, id, ...args } = validArgs();
  const out = await c.query(api.validators.echo, args);
  assert.equal("maybe" in out, false);
  assert.equal("id" in out, false);
  assert.equal(out.i, 9007199254740993n);
});

const invalid = {
  "a number for a string": { s: 5 },
  "a string for a number": { n: "1.5" },
  "a float64 for an int64": { i: 5 },
  "an int64 for a float64": { n: 5n },
  "a string for a boolean": { b: "true" },
  "a string for bytes": { bytes: "AAEC" },
  "a wrong array element": { arr: [1, "2", 3] },
  "a missing object field": { obj: {} },
  "an unknown object field": { obj: { x: "x", z: 1 } },
  "a literal outside the union": { lit: "c" },
  "a wrong record value": { rec: { a: "1" } },
  "an ID of another table": { id: "__NOTE_ID__" },
  "a malformed ID": { id: "nope" },
  "a number for null": { nul: 0 },
};

for (const [what, patch] of Object.entries(invalid)) {
  test(`ArgumentValidationError for ${what}`, async () => {
    const args = { ...validArgs(), ...patch };
    if (args.id === "__NOTE_ID__") {
      args.id = await c.mutation(api.notes.add, { owner: "validators", text: "x" });
    }
    const err = await rejection(c.query(api.validators.echo, args));
    assert.ok(!(err instanceof ConvexError), "validation errors are not ConvexErrors");
    // The same call, raw: a function error with a stable code.
    const { bytes, ...rawArgs } = args;
    const encoded = { ...rawArgs, i: typeof args.i === "bigint" ? { $integer: Buffer.from(new BigInt64Array([args.i]).buffer).toString("base64") } : args.i, bytes: { $bytes: "AAEC/w==" } };
    if (typeof bytes === "string") {
      encoded.bytes = bytes;
    }
    if (typeof args.n === "bigint") {
      encoded.n = { $integer: Buffer.from(new BigInt64Array([args.n]).buffer).toString("base64") };
    }
    expectFunctionError(assert, await callRaw(url, "query", "validators:echo", encoded), "ArgumentValidationError");
  });
}

test("a missing required argument and an unknown argument are rejected", async () => {
  const { s, ...missing } = validArgs();
  await rejection(c.query(api.validators.echo, missing));
  await rejection(c.query(api.validators.echo, { ...validArgs(), extra: 1 }));
  expectFunctionError(assert, await callRaw(url, "query", "validators:echo", {}), "ArgumentValidationError");
});

test("a return value that does not match `returns` is a ReturnValidationError", async () => {
  expectFunctionError(assert, await callRaw(url, "query", "validators:badReturn", {}), "ReturnValidationError");
  expectFunctionError(assert, await callRaw(url, "query", "validators:extraReturnField", {}), "ReturnValidationError");
  await rejection(c.query(api.validators.badReturn, {}));
});

test("a mutation whose return value is invalid commits nothing", async () => {
  const res = await callRaw(url, "mutation", "validators:badReturnMutation", { owner: "bad-return" });
  expectFunctionError(assert, res, "ReturnValidationError");
  assert.deepEqual(await c.query(api.notes.byOwner, { owner: "bad-return" }), []);
});

test("a function without an args validator accepts any arguments", async () => {
  assert.deepEqual(await c.query(api.validators.untyped, { zeta: 1, alpha: [true] }), ["alpha", "zeta"]);
});

test("calling a function as the wrong kind is InvalidFunctionKind", async () => {
  expectFunctionError(assert, await callRaw(url, "query", "errors:aMutation", {}), "InvalidFunctionKind");
  expectFunctionError(assert, await callRaw(url, "mutation", "limits:ping", {}), "InvalidFunctionKind");
  // Nothing ran: the mutation's result is not returned.
  assert.equal(await c.mutation(api.errors.aMutation, {}), "mutation ran");
});

test("/api/function runs any kind, with args as a bare object", async () => {
  const run = async (fnPath, args) =>
    await httpRequest(`${url}/api/function`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ path: fnPath, format: "convex_encoded_json", args }),
    });
  assert.equal(expectSuccess(assert, await run("errors:aMutation", {})), "mutation ran");
  assert.equal(expectSuccess(assert, await run("limits:ping", {})), "pong");
});

test("function names: module:export, .js suffix", async () => {
  assert.equal(expectSuccess(assert, await callRaw(url, "query", "limits:ping", {})), "pong");
  assert.equal(expectSuccess(assert, await callRaw(url, "query", "limits.js:ping", {})), "pong");
  expectFunctionError(assert, await callRaw(url, "query", "limits:nope", {}), "FunctionNotFound");
});
