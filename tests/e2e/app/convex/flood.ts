import { v } from "convex/values";
import { query } from "./_generated/server";

// Used by isolation.test.mjs: a cheap public query whose arguments can be made arbitrarily
// large (subscription floods over the sync socket, query-cache keys over HTTP).

/** Returns the length of its string argument. */
export const echo = query({
  args: { s: v.string() },
  returns: v.number(),
  handler: async (_ctx, { s }) => {
    return s.length;
  },
});
