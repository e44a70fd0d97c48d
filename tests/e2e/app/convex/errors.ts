import { ConvexError, v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** Throws a ConvexError whose data uses several value types. */
export const convexError = query({
  args: { kind: v.union(v.literal("object"), v.literal("string")) },
  returns: v.null(),
  handler: async (_ctx, { kind }) => {
    if (kind === "string") {
      throw new ConvexError("just a message");
    }
    throw new ConvexError({
      code: "E_TEST",
      n: 42,
      big: 7n,
      flag: true,
      nested: { list: [1, "two", null] },
    });
  },
});

/** Throws a plain Error. */
export const plainError = query({
  args: {},
  returns: v.null(),
  handler: async () => {
    throw new Error("boom from plainError");
  },
});

/** Inserts two notes, then throws: nothing may be left behind. */
export const insertThenThrow = mutation({
  args: { owner: v.string() },
  returns: v.null(),
  handler: async (ctx, { owner }) => {
    await ctx.db.insert("notes", { owner, text: "first" });
    await ctx.db.insert("notes", { owner, text: "second" });
    throw new Error("failing after two inserts");
  },
});

/** Inserts, patches and deletes, then throws a ConvexError. */
export const writeThenConvexError = mutation({
  args: { owner: v.string(), existing: v.id("notes") },
  returns: v.null(),
  handler: async (ctx, { owner, existing }) => {
    await ctx.db.insert("notes", { owner, text: "inserted" });
    await ctx.db.patch(existing, { text: "patched" });
    throw new ConvexError({ code: "ROLLBACK", owner });
  },
});

/** Deletes a note, then throws. */
export const deleteThenThrow = mutation({
  args: { id: v.id("notes") },
  returns: v.null(),
  handler: async (ctx, { id }) => {
    await ctx.db.delete(id);
    throw new Error("failing after a delete");
  },
});

/** A mutation run as a query, etc.: the caller picks the wrong endpoint. */
export const aMutation = mutation({
  args: {},
  returns: v.string(),
  handler: async () => "mutation ran",
});
