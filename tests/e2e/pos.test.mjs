// The example point-of-sale app (examples/pos), pushed with the official CLI and driven with
// ConvexHttpClient, plus its demo script.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ConvexError } from "convex/values";
import {
  NimbusServer,
  POS_DIR,
  api,
  callRaw,
  expectFunctionError,
  rejection,
  withTimeout,
} from "./harness.mjs";

let server;
let c;
let url;
let shopId;
let otherShopId;
const products = {};

before(
  async () => {
    if (!fs.existsSync(path.join(POS_DIR, "node_modules/convex"))) {
      throw new Error(`${POS_DIR}/node_modules is missing: run \`npm ci\` there first`);
    }
    server = await NimbusServer.start();
    ({ client: c, url } = await server.tenantWithApp("pos", POS_DIR));
    shopId = await c.mutation(api.shops.create, { name: "Main Street" });
    otherShopId = await c.mutation(api.shops.create, { name: "Harbour" });
    for (const [key, priceCents, stock] of [
      ["coffee", 350, 10],
      ["bagel", 225, 4],
      ["juice", 400, 2],
    ]) {
      products[key] = await c.mutation(api.products.add, {
        shopId,
        name: key,
        sku: key.toUpperCase(),
        priceCents,
        stock,
      });
    }
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

const stock = async (key) => (await c.query(api.products.get, { productId: products[key] })).stock;
const createOrder = (items, shop = shopId) =>
  c.mutation(api.orders.create, { shopId: shop, items: items.map(([key, qty]) => ({ productId: products[key], qty })) });

/** Orders created by this file, in creation order: {orderId, totalCents, createdAt}. */
const created = [];

describe("catalogue", () => {
  test("products are listed by SKU and found by SKU", async () => {
    const list = await c.query(api.products.list, { shopId });
    assert.deepEqual(list.map((p) => p.sku), ["BAGEL", "COFFEE", "JUICE"]);
    assert.equal((await c.query(api.products.bySku, { shopId, sku: "JUICE" }))._id, products.juice);
    assert.equal(await c.query(api.products.bySku, { shopId: otherShopId, sku: "JUICE" }), null);
    assert.deepEqual(await c.query(api.products.list, { shopId: otherShopId }), []);
  });

  test("a duplicate SKU is a ConvexError", async () => {
    const err = await rejection(
      c.mutation(api.products.add, { shopId, name: "again", sku: "COFFEE", priceCents: 1, stock: 1 }),
    );
    assert.ok(err instanceof ConvexError);
    assert.deepEqual(err.data, { code: "DUPLICATE_SKU", sku: "COFFEE", productId: products.coffee });
  });

  test("restock adds to the stock", async () => {
    assert.equal(await c.mutation(api.products.restock, { productId: products.coffee, qty: 5 }), 15);
    assert.equal(await stock("coffee"), 15);
  });
});

describe("orders", () => {
  test("create totals the order, decrements stock and records the items", async () => {
    const order = await createOrder([
      ["coffee", 2],
      ["bagel", 1],
    ]);
    created.push(order);
    assert.equal(order.totalCents, 2 * 350 + 225);
    assert.equal(typeof order.createdAt, "number");
    assert.equal(await stock("coffee"), 13);
    assert.equal(await stock("bagel"), 3);
    const full = await c.query(api.orders.get, { orderId: order.orderId });
    assert.equal(full.order.status, "open");
    assert.equal(full.order.totalCents, 925);
    assert.deepEqual(
      full.items.map((i) => [i.productId, i.qty, i.priceCents]).sort(),
      [
        [products.bagel, 1, 225],
        [products.coffee, 2, 350],
      ].sort(),
    );
  });

  test("OUT_OF_STOCK is a ConvexError with the numbers, and nothing changes", async () => {
    const openBefore = await c.query(api.orders.listOpen, { shopId, limit: 100 });
    const err = await rejection(
      createOrder([
        ["coffee", 1],
        ["juice", 5],
      ]),
    );
    assert.ok(err instanceof ConvexError, `expected a ConvexError, got ${err}`);
    assert.deepEqual(err.data, { code: "OUT_OF_STOCK", productId: products.juice, requested: 5, available: 2 });
    assert.equal(await stock("coffee"), 13, "no stock was taken");
    assert.equal(await stock("juice"), 2);
    assert.deepEqual(await c.query(api.orders.listOpen, { shopId, limit: 100 }), openBefore);
  });

  test("the same product on two lines is checked against the sum", async () => {
    const err = await rejection(
      createOrder([
        ["bagel", 2],
        ["bagel", 2],
      ]),
    );
    assert.deepEqual(err.data, { code: "OUT_OF_STOCK", productId: products.bagel, requested: 4, available: 3 });
  });

  test("a product of another shop is PRODUCT_NOT_FOUND", async () => {
    const err = await rejection(createOrder([["coffee", 1]], otherShopId));
    assert.deepEqual(err.data, { code: "PRODUCT_NOT_FOUND", productId: products.coffee });
  });

  test("validators: wrong types are rejected by the server, bad quantities by the handler", async () => {
    expectFunctionError(
      assert,
      await callRaw(url, "mutation", "orders:create", { shopId, items: [{ productId: products.coffee, qty: "2" }] }),
      "ArgumentValidationError",
    );
    expectFunctionError(
      assert,
      await callRaw(url, "mutation", "orders:create", { shopId: products.coffee, items: [] }),
      "ArgumentValidationError",
    );
    const err = await rejection(createOrder([["coffee", 0]]));
    assert.equal(err.data.code, "INVALID_ARGUMENT");
  });

  test("listOpen: newest first, limit, and a createdAt range", async () => {
    for (let i = 0; i < 5; i++) {
      created.push(await createOrder([["coffee", 1]]));
    }
    const expected = created
      .map((o, index) => ({ ...o, index }))
      .sort((a, b) => b.createdAt - a.createdAt || b.index - a.index);
    const open = await c.query(api.orders.listOpen, { shopId, limit: 100 });
    assert.deepEqual(open.map((o) => o._id), expected.map((o) => o.orderId));
    for (const o of open) {
      assert.equal(o.status, "open");
      assert.equal(o.shopId, shopId);
    }
    const top2 = await c.query(api.orders.listOpen, { shopId, limit: 2 });
    assert.deepEqual(top2.map((o) => o._id), expected.slice(0, 2).map((o) => o.orderId));

    const since = created[2].createdAt;
    const before = created[5].createdAt;
    const inRange = await c.query(api.orders.listOpen, { shopId, since, before, limit: 100 });
    assert.deepEqual(
      inRange.map((o) => o._id),
      expected.filter((o) => o.createdAt >= since && o.createdAt < before).map((o) => o.orderId),
    );
    const onlySince = await c.query(api.orders.listOpen, { shopId, since, limit: 100 });
    assert.deepEqual(
      onlySince.map((o) => o._id),
      expected.filter((o) => o.createdAt >= since).map((o) => o.orderId),
    );
    assert.deepEqual(await c.query(api.orders.listOpen, { shopId: otherShopId }), []);
  });

  test("pay moves an order out of listOpen into the paid pages; paying twice fails", async () => {
    const paid = created[0];
    assert.equal(await c.mutation(api.orders.pay, { orderId: paid.orderId }), null);
    const open = await c.query(api.orders.listOpen, { shopId, limit: 100 });
    assert.equal(open.some((o) => o._id === paid.orderId), false);
    const page = await c.query(api.orders.page, { shopId, status: "paid", paginationOpts: { numItems: 10, cursor: null } });
    assert.deepEqual(page.page.map((o) => o._id), [paid.orderId]);
    assert.equal(page.isDone, true);
    const err = await rejection(c.mutation(api.orders.pay, { orderId: paid.orderId }));
    assert.deepEqual(err.data, { code: "ORDER_NOT_OPEN", orderId: paid.orderId, status: "paid" });
  });

  test("page walks all open orders with cursors", async () => {
    const all = [];
    let cursor = null;
    for (let i = 0; i < 20; i++) {
      const result = await c.query(api.orders.page, { shopId, status: "open", paginationOpts: { numItems: 2, cursor } });
      all.push(...result.page.map((o) => o._id));
      if (result.isDone) {
        break;
      }
      cursor = result.continueCursor;
    }
    const open = await c.query(api.orders.listOpen, { shopId, limit: 100 });
    assert.deepEqual(all, open.map((o) => o._id));
    assert.equal(all.length, 5);
  });

  test("cancel puts the stock back", async () => {
    const before = await stock("coffee");
    const order = created[1];
    await c.mutation(api.orders.cancel, { orderId: order.orderId });
    assert.equal(await stock("coffee"), before + 1);
    assert.equal((await c.query(api.orders.get, { orderId: order.orderId })).order.status, "cancelled");
  });

  test("dashboard: open count and value, paid count and revenue", async () => {
    const summary = await c.query(api.dashboard.summary, { shopId });
    assert.deepEqual(summary, {
      openOrders: 4,
      openTotalCents: 4 * 350,
      paidOrders: 1,
      revenueCents: 925,
    });
    assert.deepEqual(await c.query(api.dashboard.summary, { shopId: otherShopId }), {
      openOrders: 0,
      openTotalCents: 0,
      paidOrders: 0,
      revenueCents: 0,
    });
  });

  test("open inserts one empty open order; a product ID is not a shop ID", async () => {
    const shop = await c.mutation(api.shops.create, { name: "Kiosk" });
    const orderId = await c.mutation(api.orders.open, { shopId: shop });
    const [order] = await c.query(api.orders.listOpen, { shopId: shop });
    assert.equal(order._id, orderId);
    assert.equal(order.status, "open");
    assert.equal(order.totalCents, 0);
    assert.deepEqual((await c.query(api.orders.get, { orderId })).items, []);
    expectFunctionError(
      assert,
      await callRaw(url, "mutation", "orders:open", { shopId: products.coffee }),
      "ArgumentValidationError",
    );
    assert.equal((await c.query(api.orders.listOpen, { shopId: shop, limit: 100 })).length, 1);
  });
});

test("the demo script runs against the app", { timeout: 120_000 }, async () => {
  const child = spawn(process.execPath, [path.join(POS_DIR, "scripts/demo-calls.mjs"), url], {
    cwd: POS_DIR,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const code = await withTimeout(
    new Promise((resolve) => child.once("exit", resolve)),
    100_000,
    "demo-calls.mjs",
  ).catch((error) => {
    child.kill("SIGKILL");
    throw error;
  });
  assert.equal(code, 0, output);
  assert.match(output, /ConvexError \{.*"code":"OUT_OF_STOCK"/);
  assert.match(output, /orders:listOpen/);
  assert.match(output, /Demo calls done\./);
});
