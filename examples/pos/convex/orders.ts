import { ConvexError, v } from "convex/values";
import { paginationOptsValidator, paginationResultValidator } from "convex/server";
import { mutation, query, type DatabaseReader } from "./_generated/server";
import type { Doc, Id } from "./_generated/dataModel";
import { orderDoc, orderItemDoc, orderStatus, requireInt } from "./model";

const MAX_LINES = 100;
const MAX_LIST = 100;

/**
 * Creates an open order. Reads the stock of every product, and either throws
 * `ConvexError({code: "OUT_OF_STOCK", productId, requested, available})` before writing
 * anything, or decrements the stock and inserts the order and its items in one transaction.
 *
 * This is the benchmark's write path: keep it lean.
 */
export const create = mutation({
  args: {
    shopId: v.id("shops"),
    items: v.array(v.object({ productId: v.id("products"), qty: v.number() })),
  },
  returns: v.object({
    orderId: v.id("orders"),
    totalCents: v.number(),
    createdAt: v.number(),
  }),
  handler: async (ctx, { shopId, items }) => {
    if (items.length === 0 || items.length > MAX_LINES) {
      throw new ConvexError({
        code: "INVALID_ARGUMENT",
        message: `an order has 1 to ${MAX_LINES} line items`,
        field: "items",
      });
    }
    // The same product may appear on several lines: check stock against the sum.
    const wanted = new Map<Id<"products">, number>();
    for (const { productId, qty } of items) {
      requireInt("qty", qty, 1);
      wanted.set(productId, (wanted.get(productId) ?? 0) + qty);
    }
    const lines: { product: Doc<"products">; qty: number }[] = [];
    let totalCents = 0;
    for (const [productId, qty] of wanted) {
      const product = await ctx.db.get("products", productId);
      if (product === null || product.shopId !== shopId) {
        throw new ConvexError({ code: "PRODUCT_NOT_FOUND", productId });
      }
      if (product.stock < qty) {
        throw new ConvexError({
          code: "OUT_OF_STOCK",
          productId,
          requested: qty,
          available: product.stock,
        });
      }
      lines.push({ product, qty });
      totalCents += product.priceCents * qty;
    }
    const createdAt = Date.now();
    const orderId = await ctx.db.insert("orders", {
      shopId,
      status: "open",
      createdAt,
      totalCents,
    });
    for (const { product, qty } of lines) {
      await ctx.db.patch("products", product._id, { stock: product.stock - qty });
      await ctx.db.insert("orderItems", {
        orderId,
        productId: product._id,
        qty,
        priceCents: product.priceCents,
      });
    }
    return { orderId, totalCents, createdAt };
  },
});

/**
 * Opens an empty order (a ticket at the till, items come later) and returns its ID: a
 * single insert, the smallest durable write. The shop is not read (its ID is checked by the
 * validator to be a `shops` ID); use `create` for an order with items and stock checks.
 *
 * This is the benchmark's one-document write, the counterpart of a "record create".
 */
export const open = mutation({
  args: { shopId: v.id("shops") },
  returns: v.id("orders"),
  handler: async (ctx, { shopId }) => {
    return await ctx.db.insert("orders", {
      shopId,
      status: "open",
      createdAt: Date.now(),
      totalCents: 0,
    });
  },
});

/**
 * The newest open orders of a shop, newest first: one index range scan of
 * `by_shop_status_created` (shopId = x, status = "open", since <= createdAt < before).
 *
 * This is the benchmark's read path: keep it lean.
 */
export const listOpen = query({
  args: {
    shopId: v.id("shops"),
    since: v.optional(v.number()),
    before: v.optional(v.number()),
    limit: v.optional(v.number()),
  },
  returns: v.array(orderDoc),
  handler: async (ctx, { shopId, since, before, limit }) => {
    const n = limit ?? 20;
    requireInt("limit", n, 1);
    return await ctx.db
      .query("orders")
      .withIndex("by_shop_status_created", (q) => {
        const open = q.eq("shopId", shopId).eq("status", "open");
        if (since !== undefined && before !== undefined) {
          return open.gte("createdAt", since).lt("createdAt", before);
        }
        if (since !== undefined) {
          return open.gte("createdAt", since);
        }
        if (before !== undefined) {
          return open.lt("createdAt", before);
        }
        return open;
      })
      .order("desc")
      .take(Math.min(n, MAX_LIST));
  },
});

/** One page of a shop's orders with the given status, newest first. */
export const page = query({
  args: {
    shopId: v.id("shops"),
    status: orderStatus,
    paginationOpts: paginationOptsValidator,
  },
  returns: paginationResultValidator(orderDoc),
  handler: async (ctx, { shopId, status, paginationOpts }) => {
    return await ctx.db
      .query("orders")
      .withIndex("by_shop_status_created", (q) => q.eq("shopId", shopId).eq("status", status))
      .order("desc")
      .paginate(paginationOpts);
  },
});

/** An order with its line items, or null. */
export const get = query({
  args: { orderId: v.id("orders") },
  returns: v.union(v.object({ order: orderDoc, items: v.array(orderItemDoc) }), v.null()),
  handler: async (ctx, { orderId }) => {
    const order = await ctx.db.get("orders", orderId);
    if (order === null) {
      return null;
    }
    const items = await ctx.db
      .query("orderItems")
      .withIndex("by_order", (q) => q.eq("orderId", orderId))
      .collect();
    return { order, items };
  },
});

async function openOrder(ctx: { db: DatabaseReader }, orderId: Id<"orders">) {
  const order = await ctx.db.get("orders", orderId);
  if (order === null) {
    throw new ConvexError({ code: "ORDER_NOT_FOUND", orderId });
  }
  if (order.status !== "open") {
    throw new ConvexError({ code: "ORDER_NOT_OPEN", orderId, status: order.status });
  }
  return order;
}

/** Marks an open order as paid. */
export const pay = mutation({
  args: { orderId: v.id("orders") },
  returns: v.null(),
  handler: async (ctx, { orderId }) => {
    await openOrder(ctx, orderId);
    await ctx.db.patch("orders", orderId, { status: "paid" });
    return null;
  },
});

/** Cancels an open order and puts its items back in stock. */
export const cancel = mutation({
  args: { orderId: v.id("orders") },
  returns: v.null(),
  handler: async (ctx, { orderId }) => {
    await openOrder(ctx, orderId);
    const items = await ctx.db
      .query("orderItems")
      .withIndex("by_order", (q) => q.eq("orderId", orderId))
      .collect();
    for (const item of items) {
      const product = await ctx.db.get("products", item.productId);
      if (product !== null) {
        await ctx.db.patch("products", product._id, { stock: product.stock + item.qty });
      }
    }
    await ctx.db.patch("orders", orderId, { status: "cancelled" });
    return null;
  },
});
