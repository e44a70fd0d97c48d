// Every `ctx.db` operation through the official client: get, insert, patch, replace, delete,
// normalizeId, index range queries, order, take, first, unique, collect, paginate, filter and
// count.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  NimbusServer,
  api,
  callRaw,
  expectFunctionError,
  expectSuccess,
  rejection,
} from "./harness.mjs";

let server;
let c;
let url;
/** n -> id for group "g" (n = 0..9) */
const gIds = new Map();

function item(group, n) {
  return {
    group,
    n,
    name: `item-${n}`,
    ...(n < 5 ? { tags: [`t${n}`] } : {}),
    big: BigInt(n),
    ...(n % 2 === 0 ? { meta: { color: "red", weight: n } } : { meta: { color: "blue", weight: n } }),
  };
}

before(
  async () => {
    server = await NimbusServer.start();
    ({ client: c, url } = await server.tenantWithApp("dbops"));
    const ids = await c.mutation(api.items.insertMany, {
      items: Array.from({ length: 10 }, (_, n) => item("g", n)),
    });
    ids.forEach((id, n) => gIds.set(n, id));
    // A second group with overlapping n: equality on the index prefix must exclude it.
    await c.mutation(api.items.insertMany, {
      items: Array.from({ length: 5 }, (_, n) => ({ group: "h", n, name: `h-${n}` })),
    });
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

const ns = (rows) => rows.map((row) => row.n);

describe("insert and get", () => {
  test("insert returns an ID that get (with and without table) reads back", async () => {
    const id = await c.mutation(api.items.insert, {
      group: "solo",
      n: 100,
      name: "solo",
      big: 123n,
      meta: { color: "green", weight: 1.5 },
    });
    assert.equal(typeof id, "string");
    for (const fn of [api.items.get, api.items.getWithTable]) {
      const doc = await c.query(fn, { id });
      assert.equal(doc._id, id);
      assert.equal(typeof doc._creationTime, "number");
      assert.ok(doc._creationTime > Date.now() - 10 * 60_000 && doc._creationTime <= Date.now() + 60_000);
      assert.deepEqual(
        { group: doc.group, n: doc.n, name: doc.name, big: doc.big, meta: doc.meta, tags: doc.tags },
        { group: "solo", n: 100, name: "solo", big: 123n, meta: { color: "green", weight: 1.5 }, tags: undefined },
      );
    }
  });

  test("floats keep every bit through the server (values a lossy JSON parser rounds)", async () => {
    // serde_json without `float_roundtrip` parsed each of these one ULP off.
    const weights = [1796179419381.6663, 1796179140220.3801, 1796179494625.2083, 1796179113957.6355];
    for (const weight of weights) {
      const id = await c.mutation(api.items.insert, { group: "floats", n: 1, name: "w", meta: { color: "x", weight } });
      const doc = await c.query(api.items.get, { id });
      assert.ok(Object.is(doc.meta.weight, weight), `${weight} came back as ${doc.meta.weight}`);
    }
  });

  test("int64 and float64 travel as convex-JSON", async () => {
    const res = await callRaw(url, "query", "items:get", { id: gIds.get(7) });
    const value = expectSuccess(assert, res);
    assert.deepEqual(value.big, { $integer: "BwAAAAAAAAA=" });
    assert.equal(value.n, 7);
    assert.equal(typeof value._creationTime, "number");
  });

  test("_creationTime increases in insertion order", async () => {
    const docs = await c.query(api.items.range, { group: "g" });
    const times = docs.map((d) => d._creationTime);
    for (let i = 1; i < times.length; i++) {
      assert.ok(times[i] > times[i - 1], `creation times must increase: ${times}`);
    }
  });
});

describe("patch, replace, delete", () => {
  test("patch merges top-level fields, removes fields set to undefined, keeps system fields", async () => {
    const id = await c.mutation(api.items.insert, { group: "p1", n: 1, name: "before", tags: ["a", "b"] });
    const before = await c.query(api.items.get, { id });
    const after = await c.mutation(api.items.patch, {
      id,
      name: "after",
      meta: { color: "red", weight: 2 },
      removeTags: true,
    });
    assert.equal(after._id, id);
    assert.equal(after._creationTime, before._creationTime);
    assert.equal(after.name, "after");
    assert.equal(after.n, 1);
    assert.deepEqual(after.meta, { color: "red", weight: 2 });
    assert.equal("tags" in after, false, "tags must be removed");
    assert.deepEqual(await c.query(api.items.get, { id }), after);

    await c.mutation(api.items.patchWithTable, { id, name: "third" });
    assert.equal((await c.query(api.items.get, { id })).name, "third");
  });

  test("patch replaces nested objects instead of merging them", async () => {
    const id = await c.mutation(api.items.insert, { group: "p2", n: 1, name: "x", meta: { color: "red", weight: 1 } });
    const after = await c.mutation(api.items.patch, { id, meta: { color: "blue", weight: 9 } });
    assert.deepEqual(after.meta, { color: "blue", weight: 9 });
  });

  test("replace drops fields that are not in the new value", async () => {
    const id = await c.mutation(api.items.insert, { group: "r1", n: 1001, name: "old", tags: ["x"], big: 5n });
    const before = await c.query(api.items.get, { id });
    const after = await c.mutation(api.items.replace, { id, doc: { group: "r1", n: 1002, name: "new" } });
    assert.equal(after._id, id);
    assert.equal(after._creationTime, before._creationTime);
    assert.deepEqual(
      Object.keys(after).sort(),
      ["_creationTime", "_id", "group", "n", "name"],
    );
    assert.equal(after.name, "new");
    assert.equal(after.n, 1002);
  });

  test("delete removes the document; a second delete fails", async () => {
    const id = await c.mutation(api.items.insert, { group: "d1", n: 1, name: "doomed" });
    assert.equal(await c.mutation(api.items.remove, { id }), null);
    assert.equal(await c.query(api.items.get, { id }), null);
    const again = await callRaw(url, "mutation", "items:remove", { id });
    expectFunctionError(assert, again, "UncaughtError");
  });

  test("delete with a table name, then get in the same transaction, reads null", async () => {
    const id = await c.mutation(api.items.insert, { group: "d2", n: 1, name: "doomed" });
    assert.equal(await c.mutation(api.items.removeWithTable, { id }), null);
    assert.equal(await c.query(api.items.getWithTable, { id }), null);
  });
});

describe("normalizeId and ID validation", () => {
  test("normalizeId accepts an ID of its table and rejects others", async () => {
    const id = gIds.get(0);
    assert.equal(await c.query(api.items.normalize, { table: "items", id }), id);
    assert.equal(await c.query(api.items.normalize, { table: "notes", id }), null);
    assert.equal(await c.query(api.items.normalize, { table: "items", id: "not-an-id" }), null);
    assert.equal(await c.query(api.items.normalize, { table: "items", id: "" }), null);
  });

  test("v.id rejects malformed IDs and IDs of another table", async () => {
    expectFunctionError(assert, await callRaw(url, "query", "items:get", { id: "not-an-id" }), "ArgumentValidationError");
    const noteId = await c.mutation(api.notes.add, { owner: "ids", text: "x" });
    expectFunctionError(assert, await callRaw(url, "query", "items:get", { id: noteId }), "ArgumentValidationError");
    assert.equal(await c.query(api.items.getLoose, { id: noteId }), null);
  });
});

describe("index range queries", () => {
  test("equality prefix alone returns the group in index order", async () => {
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g" })), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "h" })), [0, 1, 2, 3, 4]);
    assert.deepEqual(await c.query(api.items.range, { group: "nobody" }), []);
  });

  test("equality prefix plus one range, all bound kinds", async () => {
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", gte: 3, lt: 7 })), [3, 4, 5, 6]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", gt: 3, lte: 7 })), [4, 5, 6, 7]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", gt: 7 })), [8, 9]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", lt: 2 })), [0, 1]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", gte: 4.5, lte: 5.5 })), [5]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", gt: 5, lt: 5 })), []);
  });

  test("order desc and take", async () => {
    assert.deepEqual(
      ns(await c.query(api.items.range, { group: "g", gte: 3, lt: 7, order: "desc" })),
      [6, 5, 4, 3],
    );
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", order: "desc", take: 2 })), [9, 8]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", order: "asc", take: 3 })), [0, 1, 2]);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "g", take: 0 })), []);
    assert.deepEqual(ns(await c.query(api.items.range, { group: "h", take: 50 })), [0, 1, 2, 3, 4]);
  });

  test("a range on the first index field spans groups", async () => {
    const rows = await c.query(api.items.byN, { gte: 2, lt: 4 });
    assert.deepEqual(
      rows.map((r) => `${r.group}${r.n}`).sort(),
      ["g2", "g3", "h2", "h3"],
    );
    // Ties on n are broken by _creationTime: g rows were inserted first.
    assert.deepEqual(rows.map((r) => `${r.group}${r.n}`), ["g2", "h2", "g3", "h3"]);
    const desc = await c.query(api.items.byN, { gte: 2, lt: 4, order: "desc" });
    assert.deepEqual(desc.map((r) => `${r.group}${r.n}`), ["h3", "g3", "h2", "g2"]);
  });

  test("first and unique", async () => {
    assert.equal((await c.query(api.items.first, { group: "g" })).n, 0);
    assert.equal((await c.query(api.items.first, { group: "g", order: "desc" })).n, 9);
    assert.equal(await c.query(api.items.first, { group: "nobody" }), null);
    // n = 100 exists once (the "solo" row may not exist yet, so insert a dedicated one).
    await c.mutation(api.items.insert, { group: "u", n: 4242, name: "unique" });
    assert.equal((await c.query(api.items.uniqueByN, { n: 4242 })).name, "unique");
    assert.equal(await c.query(api.items.uniqueByN, { n: 987654 }), null);
    // n = 0 exists in groups g and h: unique() must fail.
    const err = await rejection(c.query(api.items.uniqueByN, { n: 0 }));
    assert.ok(!("data" in err) || err.data === undefined, "unique() failure is not a ConvexError");
    expectFunctionError(assert, await callRaw(url, "query", "items:uniqueByN", { n: 0 }), "UncaughtError");
  });

  test("the built-in by_creation_time index", async () => {
    const newest = (await c.query(api.items.all, { order: "desc", take: 1 }))[0];
    const marker = await c.mutation(api.items.insert, { group: "ct", n: 1, name: "after-newest" });
    const rows = await c.query(api.items.createdAfter, { after: newest._creationTime });
    const seen = (r) => `${r.name} ${r._id} @${r._creationTime}`;
    assert.deepEqual(
      rows.map((r) => r._id),
      [marker],
      `after the newest row (${seen(newest)}): ${rows.map(seen).join(", ")}`,
    );
  });

  test("full table scan in creation order, asc and desc", async () => {
    const asc = await c.query(api.items.all, {});
    const desc = await c.query(api.items.all, { order: "desc" });
    assert.ok(asc.length >= 15);
    assert.deepEqual(desc.map((r) => r._id), asc.map((r) => r._id).reverse());
    assert.equal(asc[0]._id, gIds.get(0), "the first row inserted comes first");
  });

  test("async iteration with an early break", async () => {
    assert.deepEqual(await c.query(api.items.firstNames, { group: "g", max: 2 }), ["item-0", "item-1"]);
  });
});

describe("pagination", () => {
  async function allPages(group, numItems, order) {
    const pages = [];
    let cursor = null;
    for (let i = 0; i < 50; i++) {
      const result = await c.query(api.items.page, { group, order, paginationOpts: { numItems, cursor } });
      assert.equal(typeof result.isDone, "boolean");
      assert.equal(typeof result.continueCursor, "string");
      pages.push(ns(result.page));
      if (result.isDone) {
        return pages;
      }
      cursor = result.continueCursor;
    }
    throw new Error("pagination did not finish in 50 pages");
  }

  test("pages of 3 cover the group exactly once, in order", async () => {
    const pages = await allPages("g", 3, "asc");
    assert.deepEqual(pages.flat(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(pages.slice(0, 3), [[0, 1, 2], [3, 4, 5], [6, 7, 8]]);
    assert.ok(pages.length === 4 || (pages.length === 5 && pages[4].length === 0), `pages: ${JSON.stringify(pages)}`);
  });

  test("descending pages", async () => {
    const pages = await allPages("g", 4, "desc");
    assert.deepEqual(pages.flat(), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    assert.deepEqual(pages[0], [9, 8, 7, 6]);
  });

  test("a page bigger than the range is done at once", async () => {
    const result = await c.query(api.items.page, { group: "h", paginationOpts: { numItems: 100, cursor: null } });
    assert.deepEqual(ns(result.page), [0, 1, 2, 3, 4]);
    assert.equal(result.isDone, true);
  });

  test("cursors are positions: rows inserted before the cursor do not shift later pages", async () => {
    await c.mutation(api.items.insertMany, {
      items: [0, 10, 20, 30, 40].map((n) => ({ group: "pg", n, name: `pg-${n}` })),
    });
    const first = await c.query(api.items.page, { group: "pg", paginationOpts: { numItems: 2, cursor: null } });
    assert.deepEqual(ns(first.page), [0, 10]);
    assert.equal(first.isDone, false);
    // One row before the cursor, one after it.
    await c.mutation(api.items.insertMany, {
      items: [5, 25].map((n) => ({ group: "pg", n, name: `pg-${n}` })),
    });
    const second = await c.query(api.items.page, {
      group: "pg",
      paginationOpts: { numItems: 2, cursor: first.continueCursor },
    });
    assert.deepEqual(ns(second.page), [20, 25]);
    const third = await c.query(api.items.page, {
      group: "pg",
      paginationOpts: { numItems: 2, cursor: second.continueCursor },
    });
    assert.deepEqual(ns(third.page), [30, 40]);
  });

  test("a garbage cursor is rejected", async () => {
    const res = await callRaw(url, "query", "items:page", {
      group: "g",
      paginationOpts: { numItems: 2, cursor: "definitely-not-a-cursor" },
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.status, "error", `a garbage cursor must fail: ${res.text}`);
  });
});

describe("filters", () => {
  const filtered = (kind) => c.query(api.items.filtered, { kind, group: "g" });

  test("and / comparison operators", async () => {
    assert.deepEqual(await filtered("eqAndRange"), [3, 4, 5, 6]);
  });

  test("or / not", async () => {
    assert.deepEqual(await filtered("orNot"), [1]);
  });

  test("nested field paths and neq", async () => {
    assert.deepEqual(await filtered("nestedField"), [0, 2, 4, 6, 8]);
  });

  test("arithmetic: add, mul, mod", async () => {
    assert.deepEqual(await filtered("arithmetic"), [6, 8]);
  });

  test("a missing field equals undefined", async () => {
    assert.deepEqual(await filtered("missingField"), [5, 6, 7, 8, 9]);
  });

  test("int64 comparison", async () => {
    assert.deepEqual(await filtered("int64"), [6, 7, 8, 9]);
  });

  test("a filter on an index range runs before take", async () => {
    assert.deepEqual(await c.query(api.items.rangeFilterTake, { group: "g", take: 3 }), [9, 7, 5]);
  });
});

describe("count", () => {
  test("query(table).count() counts every row", async () => {
    const rows = await c.query(api.items.all, {});
    assert.equal(await c.query(api.items.count, {}), rows.length);
    await c.mutation(api.items.insert, { group: "cnt", n: 1, name: "one more" });
    assert.equal(await c.query(api.items.count, {}), rows.length + 1);
  });
});
