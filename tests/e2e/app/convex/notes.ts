import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

const noteDoc = v.object({
  _id: v.id("notes"),
  _creationTime: v.number(),
  owner: v.string(),
  text: v.string(),
});

export const add = mutation({
  args: { owner: v.string(), text: v.string() },
  returns: v.id("notes"),
  handler: async (ctx, args) => {
    return await ctx.db.insert("notes", args);
  },
});

/** Every note of the tenant (a full table scan). */
export const list = query({
  args: {},
  returns: v.array(noteDoc),
  handler: async (ctx) => {
    return await ctx.db.query("notes").collect();
  },
});

export const byOwner = query({
  args: { owner: v.string() },
  returns: v.array(noteDoc),
  handler: async (ctx, { owner }) => {
    return await ctx.db
      .query("notes")
      .withIndex("by_owner", (q) => q.eq("owner", owner))
      .collect();
  },
});

/** Any string: normalizeId, then get. */
export const getLoose = query({
  args: { id: v.string() },
  returns: v.union(noteDoc, v.null()),
  handler: async (ctx, { id }) => {
    const normalized = ctx.db.normalizeId("notes", id);
    return normalized === null ? null : await ctx.db.get(normalized);
  },
});

/** `v.id("notes")`: a foreign ID may fail validation, or read as null. */
export const get = query({
  args: { id: v.id("notes") },
  returns: v.union(noteDoc, v.null()),
  handler: async (ctx, { id }) => {
    return await ctx.db.get(id);
  },
});

/** Tries to overwrite a note by ID: must never reach another tenant's note. */
export const setText = mutation({
  args: { id: v.string(), text: v.string() },
  returns: v.boolean(),
  handler: async (ctx, { id, text }) => {
    const normalized = ctx.db.normalizeId("notes", id);
    if (normalized === null || (await ctx.db.get(normalized)) === null) {
      return false;
    }
    await ctx.db.patch(normalized, { text });
    return true;
  },
});
