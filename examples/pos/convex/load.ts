import { v } from "convex/values";
import { query } from "./_generated/server";

/** The most iterations one call may ask for (about a second of QuickJS on one core). */
const MAX_ITERATIONS = 20_000_000;

/**
 * CPU work and nothing else, for the benchmark harness's CPU-heavy neighbour
 * (`nimbus-bench noisy --neighbour-workload cpu`). `salt` differs on every call, so no
 * answer comes from the query cache and every call runs.
 */
export const burn = query({
  args: { iterations: v.number(), salt: v.string() },
  returns: v.number(),
  handler: async (_ctx, { iterations, salt }) => {
    const n = Math.min(Math.max(0, Math.floor(iterations)), MAX_ITERATIONS);
    let x = salt.length;
    for (let i = 0; i < n; i++) {
      x = (x * 31 + i) % 1_000_003;
    }
    return x;
  },
});
