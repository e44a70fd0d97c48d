// Index use: over 50,000 documents, a withIndex range query of 10 documents scans about 10
// documents (the `nimbus-documents-scanned` response header), not the table.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { NimbusServer, api, callRaw, expectSuccess } from "./harness.mjs";

const TOTAL = 50_000;
const BATCH = 1_000;

let server;
let url;
let c;

before(
  async () => {
    server = await NimbusServer.start();
    ({ url, client: c } = await server.tenantWithApp("indexed"));
    for (let start = 0; start < TOTAL; start += BATCH) {
      assert.equal(await c.mutation(api.bulk.insertRange, { start, count: BATCH }), BATCH);
    }
  },
  { timeout: 400_000 },
);

after(async () => {
  await server?.cleanup();
});

function scanned(res) {
  const header = res.headers.get("nimbus-documents-scanned");
  assert.notEqual(header, null, "the nimbus-documents-scanned header must be present");
  assert.match(header, /^\d+$/);
  return Number(header);
}

async function query(fnPath, args) {
  const res = await callRaw(url, "query", fnPath, args);
  const value = expectSuccess(assert, res);
  const execUs = res.headers.get("nimbus-execution-us");
  assert.match(execUs ?? "", /^\d+$/, "the nimbus-execution-us header must be present");
  return { value, scanned: scanned(res) };
}

const range = (lo, n) => Array.from({ length: n }, (_, i) => lo + i);

test("all rows are there", async () => {
  assert.deepEqual((await query("bulk:range", { lo: 0, hi: 10 })).value, range(0, 10));
  assert.deepEqual((await query("bulk:range", { lo: TOTAL - 5, hi: TOTAL + 5 })).value, range(TOTAL - 5, 5));
});

test("a 10-row range in the middle scans about 10 documents", async () => {
  const { value, scanned: n } = await query("bulk:range", { lo: 31_000, hi: 31_010 });
  assert.deepEqual(value, range(31_000, 10));
  assert.ok(n >= 10 && n <= 20, `scanned ${n} documents for a 10-row range of ${TOTAL}`);
});

test("the same range in descending order", async () => {
  const { value, scanned: n } = await query("bulk:range", { lo: 12_345, hi: 12_355, order: "desc" });
  assert.deepEqual(value, range(12_345, 10).reverse());
  assert.ok(n >= 10 && n <= 20, `scanned ${n} documents`);
});

test("take(10) on an open-ended range stops the scan", async () => {
  const { value, scanned: n } = await query("bulk:fromTake", { lo: 100, n: 10 });
  assert.deepEqual(value, range(100, 10));
  assert.ok(n >= 10 && n <= 20, `scanned ${n} documents`);
});

test("rows that fail a filter are counted as scanned", async () => {
  const { value, scanned: n } = await query("bulk:rangeFiltered", { lo: 20_000, width: 1_000 });
  assert.deepEqual(value, range(0, 10).map((i) => 20_000 + i * 100));
  assert.ok(n >= 1_000 && n <= 1_010, `scanned ${n} documents for a 1,000-row range`);
});

test("an empty range scans (almost) nothing", async () => {
  const { value, scanned: n } = await query("bulk:range", { lo: TOTAL + 10, hi: TOTAL + 20 });
  assert.deepEqual(value, []);
  assert.ok(n <= 1, `scanned ${n} documents for an empty range`);
});
