import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

// Convex functions see `process.env`; this app has no Node type definitions to declare it.
declare const process: { env: Record<string, string | undefined> };

/** `process.env[name]`, or null when it is not set. */
export const get = query({
  args: { name: v.string() },
  returns: v.union(v.string(), v.null()),
  handler: async (_ctx, { name }) => process.env[name] ?? null,
});

/** `process.env[name]` as a mutation sees it. */
export const read = mutation({
  args: { name: v.string() },
  returns: v.union(v.string(), v.null()),
  handler: async (_ctx, { name }) => process.env[name] ?? null,
});
