import { ConvexError, v } from "convex/values";
import { mutation, query } from "./_generated/server";
import { shopDoc } from "./model";

/** Creates a shop and returns its ID. */
export const create = mutation({
  args: { name: v.string() },
  returns: v.id("shops"),
  handler: async (ctx, { name }) => {
    if (name.trim() === "") {
      throw new ConvexError({ code: "INVALID_ARGUMENT", message: "name must not be empty", field: "name" });
    }
    return await ctx.db.insert("shops", { name });
  },
});

/** Returns one shop, or null. */
export const get = query({
  args: { shopId: v.id("shops") },
  returns: v.union(shopDoc, v.null()),
  handler: async (ctx, { shopId }) => {
    return await ctx.db.get(shopId);
  },
});
