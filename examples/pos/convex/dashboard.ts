import { v } from "convex/values";
import { query } from "./_generated/server";

/**
 * A shop's headline numbers: how many orders are open (and what they are worth), and the
 * revenue of its paid orders. Both come from range scans of `by_shop_status_created`.
 */
export const summary = query({
  args: { shopId: v.id("shops") },
  returns: v.object({
    openOrders: v.number(),
    openTotalCents: v.number(),
    paidOrders: v.number(),
    revenueCents: v.number(),
  }),
  handler: async (ctx, { shopId }) => {
    let openOrders = 0;
    let openTotalCents = 0;
    for await (const order of ctx.db
      .query("orders")
      .withIndex("by_shop_status_created", (q) => q.eq("shopId", shopId).eq("status", "open"))) {
      openOrders += 1;
      openTotalCents += order.totalCents;
    }
    let paidOrders = 0;
    let revenueCents = 0;
    for await (const order of ctx.db
      .query("orders")
      .withIndex("by_shop_status_created", (q) => q.eq("shopId", shopId).eq("status", "paid"))) {
      paidOrders += 1;
      revenueCents += order.totalCents;
    }
    return { openOrders, openTotalCents, paidOrders, revenueCents };
  },
});
