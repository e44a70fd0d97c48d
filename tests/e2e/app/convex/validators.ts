import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

const typed = {
  s: v.string(),
  n: v.number(),
  b: v.boolean(),
  i: v.int64(),
  bytes: v.bytes(),
  nul: v.null(),
  arr: v.array(v.number()),
  obj: v.object({ x: v.string(), y: v.optional(v.number()) }),
  lit: v.union(v.literal("a"), v.literal("b")),
  rec: v.record(v.string(), v.number()),
  maybe: v.optional(v.string()),
  id: v.optional(v.id("items")),
};

/** Returns its arguments: every validator kind, both ways. */
export const echo = query({
  args: typed,
  returns: v.object(typed),
  handler: async (_ctx, args) => {
    return args;
  },
});

/** The same as a mutation. */
export const echoMutation = mutation({
  args: typed,
  returns: v.object(typed),
  handler: async (_ctx, args) => {
    return args;
  },
});

/** Declares a string return but returns a number. */
export const badReturn = query({
  args: {},
  returns: v.string(),
  handler: async () => {
    return 42 as unknown as string;
  },
});

/** Declares an object return but adds a field the validator does not know. */
export const extraReturnField = query({
  args: {},
  returns: v.object({ a: v.number() }),
  handler: async () => {
    return { a: 1, b: 2 } as unknown as { a: number };
  },
});

/** A mutation whose return value is invalid: its writes must not commit. */
export const badReturnMutation = mutation({
  args: { owner: v.string() },
  returns: v.number(),
  handler: async (ctx, { owner }) => {
    await ctx.db.insert("notes", { owner, text: "bad return" });
    return "not a number" as unknown as number;
  },
});

/** No args validator: anything goes. */
export const untyped = query({
  handler: async (_ctx, args: Record<string, unknown>) => {
    return Object.keys(args).sort();
  },
});

/** Sums a list of numbers: used for argument sizes. */
export const sumLength = mutation({
  args: { payload: v.string() },
  returns: v.number(),
  handler: async (_ctx, { payload }) => {
    return payload.length;
  },
});
