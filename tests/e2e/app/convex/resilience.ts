import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

// Used by live-resilience.test.mjs: slow live queries, transient evaluation failures,
// queries that fail by their own fault, and large socket requests.

/**
 * Burns CPU for `iterations` loop turns. `Date.now()` is frozen during a call in Convex's
 * deterministic runtime, so the test calibrates an iteration count instead of a duration.
 */
function spin(iterations: number): number {
  let x = 0;
  for (let i = 0; i < iterations; i++) {
    x = (x * 31 + i) % 1000003;
  }
  return x;
}

/** Only spins: the test times it over HTTP to calibrate `iterations`. */
export const calibrate = query({
  args: { iterations: v.number() },
  returns: v.number(),
  handler: async (_ctx, { iterations }) => spin(iterations),
});

/** The notes of `owner` (an index range), after spinning `iterations` turns. */
export const slowNotes = query({
  args: { owner: v.string(), iterations: v.number() },
  returns: v.object({ count: v.number(), texts: v.array(v.string()), spun: v.number() }),
  handler: async (ctx, { owner, iterations }) => {
    const notes = await ctx.db
      .query("notes")
      .withIndex("by_owner", (q) => q.eq("owner", owner))
      .collect();
    const spun = spin(iterations);
    return { count: notes.length, texts: notes.map((n) => n.text), spun };
  },
});

/** Writes both tables: a note of `owner` (read by slowNotes) and the counter `name`. */
export const touchBoth = mutation({
  args: { owner: v.string(), text: v.string(), name: v.string() },
  returns: v.number(),
  handler: async (ctx, { owner, text, name }) => {
    await ctx.db.insert("notes", { owner, text });
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

/** Sets the counter `name` to `value` (creating it). */
export const setCounter = mutation({
  args: { name: v.string(), value: v.number() },
  returns: v.null(),
  handler: async (ctx, { name, value }) => {
    const row = await ctx.db
      .query("counters")
      .withIndex("by_name", (q) => q.eq("name", name))
      .unique();
    if (row === null) {
      await ctx.db.insert("counters", { name, value });
    } else {
      await ctx.db.patch(row._id, { value });
    }
    return null;
  },
});

/** The counter `name`; throws (the query's own fault) while it is odd. */
export const evenOrThrow = query({
  args: { name: v.string() },
  returns: v.union(v.number(), v.null()),
  handler: async (ctx, { name }) => {
    const row = await ctx.db
      .query("counters")
      .withIndex("by_name", (q) => q.eq("name", name))
      .unique();
    const value = row === null ? null : row.value;
    if (value !== null && value % 2 === 1) {
      throw new Error(`odd counter ${name} = ${value}`);
    }
    return value;
  },
});

/** Takes an argument of any size and returns its length (size-limit tests). */
export const sizeOf = mutation({
  args: { s: v.string() },
  returns: v.number(),
  handler: async (_ctx, { s }) => s.length,
});
