// Validators and checks shared by the POS functions. This file exports no Convex functions.
import { ConvexError, v } from "convex/values";
import { orderStatus } from "./schema";

export { orderStatus };

export const shopDoc = v.object({
  _id: v.id("shops"),
  _creationTime: v.number(),
  name: v.string(),
});

export const productDoc = v.object({
  _id: v.id("products"),
  _creationTime: v.number(),
  shopId: v.id("shops"),
  name: v.string(),
  sku: v.string(),
  priceCents: v.number(),
  stock: v.number(),
});

export const orderDoc = v.object({
  _id: v.id("orders"),
  _creationTime: v.number(),
  shopId: v.id("shops"),
  status: orderStatus,
  createdAt: v.number(),
  totalCents: v.number(),
});

export const orderItemDoc = v.object({
  _id: v.id("orderItems"),
  _creationTime: v.number(),
  orderId: v.id("orders"),
  productId: v.id("products"),
  qty: v.number(),
  priceCents: v.number(),
});

/** Throws a `ConvexError` with code `INVALID_ARGUMENT` unless `n` is an integer >= `min`. */
export function requireInt(field: string, n: number, min: number): void {
  if (!Number.isSafeInteger(n) || n < min) {
    throw new ConvexError({
      code: "INVALID_ARGUMENT",
      message: `${field} must be an integer >= ${min}`,
      field,
    });
  }
}
