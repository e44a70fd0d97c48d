import { ConvexError, v } from "convex/values";
import { mutation, query } from "./_generated/server";
import { productDoc, requireInt } from "./model";

/** Adds a product to a shop. SKUs are unique per shop. */
export const add = mutation({
  args: {
    shopId: v.id("shops"),
    name: v.string(),
    sku: v.string(),
    priceCents: v.number(),
    stock: v.number(),
  },
  returns: v.id("products"),
  handler: async (ctx, args) => {
    requireInt("priceCents", args.priceCents, 0);
    requireInt("stock", args.stock, 0);
    if ((await ctx.db.get(args.shopId)) === null) {
      throw new ConvexError({ code: "SHOP_NOT_FOUND", shopId: args.shopId });
    }
    const existing = await ctx.db
      .query("products")
      .withIndex("by_shop_sku", (q) => q.eq("shopId", args.shopId).eq("sku", args.sku))
      .unique();
    if (existing !== null) {
      throw new ConvexError({ code: "DUPLICATE_SKU", sku: args.sku, productId: existing._id });
    }
    return await ctx.db.insert("products", args);
  },
});

/** Adds `qty` units to a product's stock and returns the new stock. */
export const restock = mutation({
  args: { productId: v.id("products"), qty: v.number() },
  returns: v.number(),
  handler: async (ctx, { productId, qty }) => {
    requireInt("qty", qty, 1);
    const product = await ctx.db.get(productId);
    if (product === null) {
      throw new ConvexError({ code: "PRODUCT_NOT_FOUND", productId });
    }
    const stock = product.stock + qty;
    await ctx.db.patch(productId, { stock });
    return stock;
  },
});

/** Returns one product, or null. */
export const get = query({
  args: { productId: v.id("products") },
  returns: v.union(productDoc, v.null()),
  handler: async (ctx, { productId }) => {
    return await ctx.db.get(productId);
  },
});

/** Looks a product up by SKU. */
export const bySku = query({
  args: { shopId: v.id("shops"), sku: v.string() },
  returns: v.union(productDoc, v.null()),
  handler: async (ctx, { shopId, sku }) => {
    return await ctx.db
      .query("products")
      .withIndex("by_shop_sku", (q) => q.eq("shopId", shopId).eq("sku", sku))
      .unique();
  },
});

/** Lists a shop's products in SKU order (at most 100). */
export const list = query({
  args: { shopId: v.id("shops") },
  returns: v.array(productDoc),
  handler: async (ctx, { shopId }) => {
    return await ctx.db
      .query("products")
      .withIndex("by_shop_sku", (q) => q.eq("shopId", shopId))
      .take(100);
  },
});
