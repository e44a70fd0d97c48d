import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

export const add = mutation({
  args: { label: v.string() },
  returns: v.id("things"),
  handler: async (ctx, { label }) => {
    return await ctx.db.insert("things", { label });
  },
});

export const labels = query({
  args: {},
  returns: v.array(v.any()),
  handler: async (ctx) => {
    const rows = await ctx.db.query("things").collect();
    return rows.map((row) => row.label);
  },
});
