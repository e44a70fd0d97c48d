import { v } from "convex/values";
import { paginationOptsValidator } from "convex/server";
import { mutation, query } from "./_generated/server";

// Used by isolation.test.mjs: the per-call read limits (documents and bytes read). The
// `bulk` table holds many small rows (bulk:insertRange), the `items` rows of group "big"
// are few but large.

/** Inserts `count` items of group "big", each with a name of `bytes` characters. */
export const insertBig = mutation({
  args: { start: v.number(), count: v.number(), bytes: v.number() },
  returns: v.number(),
  handler: async (ctx, { start, count, bytes }) => {
    const name = "b".repeat(bytes);
    for (let n = start; n < start + count; n++) {
      await ctx.db.insert("items", { group: "big", n, name });
    }
    return count;
  },
});

/** One page of the `bulk` table; returns only its size, not the rows. */
export const pageBulk = query({
  args: { paginationOpts: paginationOptsValidator },
  returns: v.object({ n: v.number(), isDone: v.boolean() }),
  handler: async (ctx, { paginationOpts }) => {
    const result = await ctx.db.query("bulk").paginate(paginationOpts);
    return { n: result.page.length, isDone: result.isDone };
  },
});

/** One page of the "big" items (an index range); returns only its size. */
export const pageBig = query({
  args: { paginationOpts: paginationOptsValidator },
  returns: v.object({ n: v.number(), isDone: v.boolean() }),
  handler: async (ctx, { paginationOpts }) => {
    const result = await ctx.db
      .query("items")
      .withIndex("by_group_n", (q) => q.eq("group", "big"))
      .paginate(paginationOpts);
    return { n: result.page.length, isDone: result.isDone };
  },
});

/** `query("bulk").count()` (internal in the 1.48 typings). */
export const countBulk = query({
  args: {},
  returns: v.number(),
  handler: async (ctx) => {
    const q = ctx.db.query("bulk") as unknown as { count: () => Promise<number> };
    return await q.count();
  },
});
