// Scheduled functions (issue 15): jobs that count their runs per key, scheduling from
// mutations and actions, cancellation, and the system table `_scheduled_functions`.
import { v } from "convex/values";
import { makeFunctionReference } from "convex/server";
import { action, internalAction, internalMutation, mutation, query } from "./_generated/server";
import { api, internal } from "./_generated/api";
import type { Id } from "./_generated/dataModel";

/** Adds one run to `key`'s counter, and notes how the job saw itself. */
export const bump = internalMutation({
  args: { key: v.string() },
  handler: async (ctx, { key }) => {
    const { scheduledFunctionId } = await ctx.meta.getRequestMetadata();
    let sawState: string | undefined;
    if (scheduledFunctionId) {
      const self = await ctx.db.system.get(scheduledFunctionId as Id<"_scheduled_functions">);
      sawState = self?.state.kind;
    }
    const row = await ctx.db
      .query("jobRuns")
      .withIndex("by_key", (q) => q.eq("key", key))
      .unique();
    if (row) {
      await ctx.db.patch(row._id, { n: row.n + 1, sawState, sawJobId: scheduledFunctionId });
    } else {
      await ctx.db.insert("jobRuns", { key, n: 1, sawState, sawJobId: scheduledFunctionId });
    }
  },
});

/** Does nothing: a job whose only write is its own completion. */
export const noop = internalMutation({ args: { i: v.number() }, handler: async () => null });

/** Always fails. */
export const fail = internalMutation({
  args: {},
  handler: async () => {
    throw new Error("this scheduled mutation fails on purpose");
  },
});

/** A scheduled action: bumps through a mutation. */
export const bumpLater = internalAction({
  args: { key: v.string() },
  handler: async (ctx, { key }): Promise<null> => {
    await ctx.runMutation(internal.scheduler.bump, { key });
    return null;
  },
});

export const runs = query({
  args: { key: v.string() },
  handler: async (ctx, { key }) => {
    const row = await ctx.db
      .query("jobRuns")
      .withIndex("by_key", (q) => q.eq("key", key))
      .unique();
    return row ?? null;
  },
});

export const scheduleBump = mutation({
  args: { key: v.string(), delayMs: v.number(), times: v.optional(v.number()) },
  handler: async (ctx, { key, delayMs, times }): Promise<Id<"_scheduled_functions">[]> => {
    const ids = [];
    for (let i = 0; i < (times ?? 1); i++) {
      ids.push(await ctx.scheduler.runAfter(delayMs, internal.scheduler.bump, { key }));
    }
    return ids;
  },
});

/** Jobs `i * stepMs` apart, for the restart test. */
export const scheduleSpread = mutation({
  args: { key: v.string(), count: v.number(), stepMs: v.number() },
  handler: async (ctx, { key, count, stepMs }) => {
    for (let i = 0; i < count; i++) {
      await ctx.scheduler.runAfter(i * stepMs, internal.scheduler.bump, { key });
    }
  },
});

export const scheduleNoops = mutation({
  args: { count: v.number(), at: v.number() },
  handler: async (ctx, { count, at }) => {
    for (let i = 0; i < count; i++) {
      await ctx.scheduler.runAt(at, internal.scheduler.noop, { i });
    }
  },
});

export const scheduleAt = mutation({
  args: { key: v.string(), at: v.number() },
  handler: async (ctx, { key, at }): Promise<Id<"_scheduled_functions">> =>
    ctx.scheduler.runAt(at, internal.scheduler.bump, { key }),
});

export const scheduleThenThrow = mutation({
  args: { key: v.string() },
  handler: async (ctx, { key }) => {
    await ctx.scheduler.runAfter(0, internal.scheduler.bump, { key });
    throw new Error("changed my mind");
  },
});

export const scheduleFailure = mutation({
  args: {},
  handler: async (ctx): Promise<Id<"_scheduled_functions">> =>
    ctx.scheduler.runAfter(0, internal.scheduler.fail, {}),
});

export const scheduleAction = mutation({
  args: { key: v.string(), delayMs: v.number() },
  handler: async (ctx, { key, delayMs }): Promise<Id<"_scheduled_functions">> =>
    ctx.scheduler.runAfter(delayMs, internal.scheduler.bumpLater, { key }),
});

export const cancel = mutation({
  args: { id: v.id("_scheduled_functions") },
  handler: async (ctx, { id }) => {
    await ctx.scheduler.cancel(id);
  },
});

/** Schedules from an action (committed at once), and cancels from one. */
export const fromAction = action({
  args: { key: v.string(), delayMs: v.number(), cancel: v.optional(v.boolean()) },
  handler: async (ctx, { key, delayMs, cancel }): Promise<string> => {
    const id = await ctx.scheduler.runAfter(delayMs, internal.scheduler.bump, { key });
    if (cancel) {
      await ctx.scheduler.cancel(id);
    }
    return id;
  },
});

export const job = query({
  args: { id: v.id("_scheduled_functions") },
  handler: async (ctx, { id }) => ctx.db.system.get(id),
});

export const jobsNamed = query({
  args: { name: v.string() },
  handler: async (ctx, { name }) =>
    (await ctx.db.system.query("_scheduled_functions").collect()).filter((j) => j.name === name),
});

/** Cron state and recorded runs (system tables the library's types do not list). */
export const cronState = query({
  args: {},
  handler: async (ctx) => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const system = ctx.db.system as any;
    const crons = await system.query("_cron_jobs").collect();
    const runs = await system.query("_cron_job_logs").collect();
    return { crons, runs };
  },
});

/** Bad input at the call site; every case throws. */
export const scheduleBad = mutation({
  args: { what: v.string() },
  handler: async (ctx, { what }): Promise<unknown> => {
    const raw = (args: unknown) =>
      // The syscall as the library makes it, with values the library would refuse itself.
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      (globalThis as any).Convex.asyncSyscall("1.0/schedule", JSON.stringify(args));
    switch (what) {
      case "unknown":
        return ctx.scheduler.runAfter(0, makeFunctionReference<"mutation">("scheduler:nope"), {});
      case "query":
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        return ctx.scheduler.runAfter(0, api.scheduler.runs as any, { key: "x" });
      case "negative":
        return ctx.scheduler.runAfter(-5, internal.scheduler.bump, { key: "x" });
      case "invalidDate":
        return ctx.scheduler.runAt(new Date("not a date"), internal.scheduler.bump, { key: "x" });
      case "badArgs":
        return ctx.scheduler.runAfter(0, internal.scheduler.bump, { key: 5 as unknown as string });
      case "notConvex":
        return ctx.scheduler.runAfter(0, internal.scheduler.bump, {
          key: new Map() as unknown as string,
        });
      case "rawNegative":
        return raw({ name: "scheduler:bump", ts: -1, args: { key: "x" } });
      case "rawNotConvex":
        return raw({ name: "scheduler:bump", ts: Date.now() / 1000, args: { key: { $weird: 1 } } });
      case "rawQuery":
        return raw({ name: "scheduler:runs", ts: Date.now() / 1000, args: { key: "x" } });
      case "tooMany":
        for (let i = 0; i < 1001; i++) {
          await ctx.scheduler.runAfter(60_000, internal.scheduler.noop, { i });
        }
        return null;
      case "writeSystem":
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        return (ctx.db as any).insert("_scheduled_functions", { name: "x" });
      default:
        throw new Error(`unknown case ${what}`);
    }
  },
});

// For engines.test.mjs, which compares the scheduler on V8 and on QuickJS: `runAt` with a
// `Date` and `cancel` from an action (the existing functions cover `runAfter` there), and a
// job whose arguments are of every Convex type, which reports what they arrived as.

/** From an action: `runAt` with a `Date` (the library turns it into the syscall's seconds). */
export const atFromAction = action({
  args: { key: v.string(), at: v.number() },
  handler: async (ctx, { key, at }): Promise<string> =>
    ctx.scheduler.runAt(new Date(at), internal.scheduler.bump, { key }),
});

/** From an action: cancels any job, e.g. one a mutation scheduled. */
export const cancelFromAction = action({
  args: { id: v.id("_scheduled_functions") },
  handler: async (ctx, { id }): Promise<null> => {
    await ctx.scheduler.cancel(id);
    return null;
  },
});

/** Writes a note (owner `key`) spelling out the type of every part of `value`. */
export const describeArgs = internalMutation({
  args: { key: v.string(), value: v.any() },
  handler: async (ctx, { key, value }) => {
    const describe = (x: unknown): string => {
      if (typeof x === "bigint") return `${x}n`;
      if (typeof x === "number") return Object.is(x, -0) ? "-0" : String(x);
      if (x instanceof ArrayBuffer) return `bytes(${new Uint8Array(x).join(" ")})`;
      if (Array.isArray(x)) return `[${x.map(describe).join(", ")}]`;
      if (x !== null && typeof x === "object") {
        return `{${Object.entries(x).map(([k, y]) => `${k}: ${describe(y)}`).join(", ")}}`;
      }
      return JSON.stringify(x);
    };
    await ctx.db.insert("notes", { owner: key, text: describe(value) });
  },
});

export const scheduleDescribe = mutation({
  args: { key: v.string(), value: v.any(), delayMs: v.number() },
  handler: async (ctx, { key, value, delayMs }): Promise<Id<"_scheduled_functions">> =>
    ctx.scheduler.runAfter(delayMs, internal.scheduler.describeArgs, { key, value }),
});
