import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** Never returns: the CPU time limit must stop it. */
export const infiniteLoop = query({
  args: {},
  returns: v.null(),
  handler: async () => {
    let i = 0;
    while (true) {
      i = (i + 1) % 1000;
    }
  },
});

/** The same inside a mutation, after a write that must not commit. */
export const infiniteLoopMutation = mutation({
  args: { owner: v.string() },
  returns: v.null(),
  handler: async (ctx, { owner }) => {
    await ctx.db.insert("notes", { owner, text: "before the loop" });
    let i = 0;
    while (true) {
      i = (i + 1) % 1000;
    }
  },
});

/**
 * Keeps allocating (fresh 1 MiB strings and 64 Ki-element arrays) until memory runs out: the
 * memory limit must stop it, long before the CPU time limit would.
 */
export const memoryBomb = query({
  args: {},
  returns: v.number(),
  handler: async () => {
    const keep: unknown[] = [];
    for (let i = 0; ; i++) {
      keep.push("x".repeat(1 << 20) + i);
      keep.push(new Array(1 << 16).fill(i));
    }
  },
});

/** A quick query, used to show the server still answers. */
export const ping = query({
  args: {},
  returns: v.string(),
  handler: async () => "pong",
});
