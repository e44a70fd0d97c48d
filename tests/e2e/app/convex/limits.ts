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

/** Fills ArrayBuffers (outside a V8 heap, counted against the same limit) until refused. */
export const arrayBufferBomb = query({
  args: {},
  returns: v.number(),
  handler: async () => {
    const keep: ArrayBuffer[] = [];
    for (;;) keep.push(new ArrayBuffer(8 << 20));
  },
});

/** Recurses without end: the stack limit must stop it with an error, not a crash. */
export const deepRecursion = query({
  args: {},
  returns: v.number(),
  handler: async () => {
    const down = (n: number): number => down(n + 1) + 1;
    return down(0);
  },
});

/** One 100 MB string, flattened (`indexOf` needs it in one piece), over a 64 MiB limit. */
export const hugeString = query({
  args: {},
  returns: v.number(),
  handler: async () => {
    const s = "x".repeat(100 * 1000 * 1000);
    return s.indexOf("y");
  },
});

/** A quick query, used to show the server still answers. */
export const ping = query({
  args: {},
  returns: v.string(),
  handler: async () => "pong",
});
