#!/usr/bin/env node
// A short tour of the POS app through the official ConvexHttpClient: creates a shop and
// products, places an order, shows an OUT_OF_STOCK ConvexError, lists open orders, pays one
// and prints the dashboard. Prints every call and its result.
//
// Usage: node scripts/demo-calls.mjs <deployment url>   (or set CONVEX_URL)
// e.g.   node scripts/demo-calls.mjs http://127.0.0.1:8080/t/demo
import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { ConvexError } from "convex/values";

const url = process.argv[2] ?? process.env.CONVEX_URL;
if (!url) {
  console.error("usage: node scripts/demo-calls.mjs <deployment url>");
  process.exit(2);
}

const api = anyApi;
const client = new ConvexHttpClient(url, { logger: false });

function show(value) {
  return JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? `${v}n` : v));
}

async function call(kind, name, args) {
  const [module, fn] = name.split(":");
  console.log(`→ ${kind} ${name} ${show(args)}`);
  const result = await client[kind](api[module][fn], args);
  console.log(`← ${show(result)}`);
  return result;
}

const shopId = await call("mutation", "shops:create", { name: `Corner Shop ${new Date().toISOString()}` });
const coffee = await call("mutation", "products:add", { shopId, name: "Coffee", sku: "COF-1", priceCents: 350, stock: 10 });
const bagel = await call("mutation", "products:add", { shopId, name: "Bagel", sku: "BAG-1", priceCents: 225, stock: 4 });
const juice = await call("mutation", "products:add", { shopId, name: "Juice", sku: "JUI-1", priceCents: 400, stock: 2 });

const first = await call("mutation", "orders:create", {
  shopId,
  items: [
    { productId: coffee, qty: 2 },
    { productId: bagel, qty: 1 },
  ],
});

console.log("\n# Ordering more juice than is in stock fails with a ConvexError and changes nothing:");
try {
  await call("mutation", "orders:create", { shopId, items: [{ productId: juice, qty: 5 }] });
  console.error("expected OUT_OF_STOCK");
  process.exit(1);
} catch (error) {
  if (!(error instanceof ConvexError) || error.data?.code !== "OUT_OF_STOCK") {
    throw error;
  }
  console.log(`← ConvexError ${show(error.data)}`);
}

await call("mutation", "orders:create", { shopId, items: [{ productId: juice, qty: 2 }] });
await call("mutation", "products:restock", { productId: juice, qty: 6 });

console.log("\n# Open orders, newest first:");
await call("query", "orders:listOpen", { shopId, limit: 10 });

await call("mutation", "orders:pay", { orderId: first.orderId });
await call("query", "orders:page", { shopId, status: "paid", paginationOpts: { numItems: 5, cursor: null } });
await call("query", "dashboard:summary", { shopId });
await call("query", "products:list", { shopId });
console.log("\nDemo calls done.");
