// ConvexError round trip, uncaught errors, and atomicity: a mutation that throws leaves nothing.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConvexError } from "convex/values";
import { NimbusServer, api, callRaw, expectFunctionError, rejection } from "./harness.mjs";

let server;
let c;
let url;

before(
  async () => {
    server = await NimbusServer.start();
    ({ client: c, url } = await server.tenantWithApp("errors"));
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

test("ConvexError with object data reaches the client as a ConvexError with the same data", async () => {
  const err = await rejection(c.query(api.errors.convexError, { kind: "object" }));
  assert.ok(err instanceof ConvexError, `expected a ConvexError, got ${err}`);
  assert.deepEqual(err.data, { code: "E_TEST", n: 42, big: 7n, flag: true, nested: { list: [1, "two", null] } });

  const res = await callRaw(url, "query", "errors:convexError", { kind: "object" });
  expectFunctionError(assert, res, "ConvexError");
  assert.deepEqual(res.body.errorData, {
    code: "E_TEST",
    n: 42,
    big: { $integer: "BwAAAAAAAAA=" },
    flag: true,
    nested: { list: [1, "two", null] },
  });
});

test("ConvexError with string data", async () => {
  const err = await rejection(c.query(api.errors.convexError, { kind: "string" }));
  assert.ok(err instanceof ConvexError);
  assert.equal(err.data, "just a message");
  const res = await callRaw(url, "query", "errors:convexError", { kind: "string" });
  expectFunctionError(assert, res, "ConvexError");
  assert.equal(res.body.errorData, "just a message");
});

test("a plain Error is an UncaughtError without errorData", async () => {
  const err = await rejection(c.query(api.errors.plainError, {}));
  assert.ok(!(err instanceof ConvexError));
  assert.match(err.message, /boom from plainError/);
  const res = await callRaw(url, "query", "errors:plainError", {});
  expectFunctionError(assert, res, "UncaughtError");
  assert.match(res.body.errorMessage, /boom from plainError/);
  assert.equal("errorData" in res.body, false);
});

test("a mutation that inserts then throws leaves nothing behind", async () => {
  const owner = "atomic-insert";
  const err = await rejection(c.mutation(api.errors.insertThenThrow, { owner }));
  assert.match(err.message, /failing after two inserts/);
  assert.deepEqual(await c.query(api.notes.byOwner, { owner }), []);
  assert.equal((await c.query(api.notes.list, {})).filter((n) => n.owner === owner).length, 0);
  // The same function's writes do commit when it does not throw: a control.
  await c.mutation(api.notes.add, { owner, text: "control" });
  assert.deepEqual((await c.query(api.notes.byOwner, { owner })).map((n) => n.text), ["control"]);
});

test("insert + patch then ConvexError: neither write commits, the data comes through", async () => {
  const owner = "atomic-patch";
  const existing = await c.mutation(api.notes.add, { owner, text: "original" });
  const err = await rejection(c.mutation(api.errors.writeThenConvexError, { owner, existing }));
  assert.ok(err instanceof ConvexError);
  assert.deepEqual(err.data, { code: "ROLLBACK", owner });
  const notes = await c.query(api.notes.byOwner, { owner });
  assert.deepEqual(notes.map((n) => n.text), ["original"]);
});

test("delete then throw: the document is still there", async () => {
  const owner = "atomic-delete";
  const id = await c.mutation(api.notes.add, { owner, text: "keep me" });
  await rejection(c.mutation(api.errors.deleteThenThrow, { id }));
  assert.equal((await c.query(api.notes.get, { id }))?.text, "keep me");
});

test("many failing mutations in a row leave the table unchanged", async () => {
  const before = (await c.query(api.notes.list, {})).length;
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, (_, i) => c.mutation(api.errors.insertThenThrow, { owner: `burst-${i}` }, { skipQueue: true })),
  );
  assert.equal(results.filter((r) => r.status === "rejected").length, 20);
  assert.equal((await c.query(api.notes.list, {})).length, before);
});

test("errors keep a stable code on the mutation endpoint too", async () => {
  expectFunctionError(assert, await callRaw(url, "mutation", "errors:insertThenThrow", { owner: "raw" }), "UncaughtError");
  assert.deepEqual(await c.query(api.notes.byOwner, { owner: "raw" }), []);
});
