import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

export const PARTS = 3;

/** Writes PARTS rows for (writer, seq) in one transaction. */
export const write = mutation({
  args: { writer: v.number(), seq: v.number() },
  returns: v.null(),
  handler: async (ctx, { writer, seq }) => {
    for (let part = 0; part < PARTS; part++) {
      await ctx.db.insert("ledger", { writer, seq, part });
    }
    return null;
  },
});

/** Every (seq, part) of a writer, in index order. */
export const rows = query({
  args: { writer: v.number() },
  returns: v.array(v.object({ seq: v.number(), part: v.number() })),
  handler: async (ctx, { writer }) => {
    const rows = await ctx.db
      .query("ledger")
      .withIndex("by_writer_seq", (q) => q.eq("writer", writer))
      .collect();
    return rows.map(({ seq, part }) => ({ seq, part }));
  },
});
