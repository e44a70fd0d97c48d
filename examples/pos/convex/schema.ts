import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export const orderStatus = v.union(
  v.literal("open"),
  v.literal("paid"),
  v.literal("cancelled"),
);

export default defineSchema({
  shops: defineTable({
    name: v.string(),
  }),

  products: defineTable({
    shopId: v.id("shops"),
    name: v.string(),
    sku: v.string(),
    priceCents: v.number(),
    stock: v.number(),
  }).index("by_shop_sku", ["shopId", "sku"]),

  orders: defineTable({
    shopId: v.id("shops"),
    status: orderStatus,
    createdAt: v.number(),
    totalCents: v.number(),
  }).index("by_shop_status_created", ["shopId", "status", "createdAt"]),

  orderItems: defineTable({
    orderId: v.id("orders"),
    productId: v.id("products"),
    qty: v.number(),
    priceCents: v.number(),
  }).index("by_order", ["orderId"]),
});
