import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** Read-modify-write: returns the new value. Concurrent calls must serialize. */
export const increment = mutation({
  args: { name: v.string() },
  returns: v.number(),
  handler: async (ctx, { name }) => {
    const row = await ctx.db
      .query("counters")
      .withIndex("by_name", (q) => q.eq("name", name))
      .unique();
    if (row === null) {
      await ctx.db.insert("counters", { name, value: 1 });
      return 1;
    }
    await ctx.db.patch(row._id, { value: row.value + 1 });
    return row.value + 1;
  },
});

export const get = query({
  args: { name: v.string() },
  returns: v.union(v.number(), v.null()),
  handler: async (ctx, { name }) => {
    const row = await ctx.db
      .query("counters")
      .withIndex("by_name", (q) => q.eq("name", name))
      .unique();
    return row === null ? null : row.value;
  },
});
