import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

const PAD = "p".repeat(64);

/** Inserts rows k = start .. start+count-1. */
export const insertRange = mutation({
  args: { start: v.number(), count: v.number() },
  returns: v.number(),
  handler: async (ctx, { start, count }) => {
    for (let k = start; k < start + count; k++) {
      await ctx.db.insert("bulk", { k, pad: PAD });
    }
    return count;
  },
});

/** `withIndex("by_k", lo <= k < hi)`: returns the ks. */
export const range = query({
  args: { lo: v.number(), hi: v.number(), order: v.optional(v.union(v.literal("asc"), v.literal("desc"))) },
  returns: v.array(v.number()),
  handler: async (ctx, { lo, hi, order }) => {
    const rows = await ctx.db
      .query("bulk")
      .withIndex("by_k", (q) => q.gte("k", lo).lt("k", hi))
      .order(order ?? "asc")
      .collect();
    return rows.map((row) => row.k);
  },
});

/** `withIndex("by_k", k >= lo)` with `take(n)`: the limit must stop the scan. */
export const fromTake = query({
  args: { lo: v.number(), n: v.number() },
  returns: v.array(v.number()),
  handler: async (ctx, { lo, n }) => {
    const rows = await ctx.db
      .query("bulk")
      .withIndex("by_k", (q) => q.gte("k", lo))
      .take(n);
    return rows.map((row) => row.k);
  },
});

/** An index range of `width` rows with a filter that keeps one row in 100. */
export const rangeFiltered = query({
  args: { lo: v.number(), width: v.number() },
  returns: v.array(v.number()),
  handler: async (ctx, { lo, width }) => {
    const rows = await ctx.db
      .query("bulk")
      .withIndex("by_k", (q) => q.gte("k", lo).lt("k", lo + width))
      .filter((q) => q.eq(q.mod(q.field("k"), 100), 0))
      .collect();
    return rows.map((row) => row.k);
  },
});
