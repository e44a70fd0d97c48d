import { v, ConvexError } from "convex/values";
import { action, internalAction, internalMutation, internalQuery, query } from "./_generated/server";
import { api, internal } from "./_generated/api";
import type { Id } from "./_generated/dataModel";

// Actions (issue 15): they run outside a transaction, call queries, mutations and other
// actions (each its own transaction), wait on timers and fetch from the outside world.

declare const process: { env: Record<string, string | undefined> };

/** How many notes `owner` has (public, for the tests to check what actions wrote). */
export const countNotes = query({
  args: { owner: v.string() },
  returns: v.number(),
  handler: async (ctx, { owner }) =>
    (await ctx.db.query("notes").withIndex("by_owner", (q) => q.eq("owner", owner)).collect()).length,
});

export const notesOf = internalQuery({
  args: { owner: v.string() },
  returns: v.array(v.string()),
  handler: async (ctx, { owner }) =>
    (await ctx.db.query("notes").withIndex("by_owner", (q) => q.eq("owner", owner)).collect()).map((n) => n.text),
});

export const addNote = internalMutation({
  args: { owner: v.string(), text: v.string() },
  returns: v.id("notes"),
  handler: async (ctx, args) => ctx.db.insert("notes", args),
});

export const double = internalAction({
  args: { n: v.number() },
  returns: v.number(),
  handler: async (_ctx, { n }) => n * 2,
});

export const refuse = internalMutation({
  args: {},
  handler: async () => {
    throw new ConvexError({ code: "NOPE", detail: "refused on purpose" });
  },
});

/** Calls a mutation, a query and another action, two of them at once. */
export const pipeline = action({
  args: { owner: v.string(), text: v.string() },
  // Annotated: a function whose result depends on functions of its own module needs
  // explicit types (TypeScript cannot infer through the generated `api`).
  handler: async (ctx, { owner, text }): Promise<{ id: Id<"notes">; texts: string[]; doubled: number; refusal: unknown; identity: unknown }> => {
    const id: Id<"notes"> = await ctx.runMutation(internal.actions.addNote, { owner, text });
    const [texts, doubled]: [string[], number] = await Promise.all([
      ctx.runQuery(internal.actions.notesOf, { owner }),
      ctx.runAction(internal.actions.double, { n: 21 }),
    ]);
    let refusal = null;
    try {
      await ctx.runMutation(internal.actions.refuse, {});
    } catch (e) {
      refusal = e instanceof ConvexError ? e.data : String(e);
    }
    return { id, texts, doubled, refusal, identity: await ctx.auth.getUserIdentity() };
  },
});

/** Timers inside an action: three sleeps at once, then one after the other. */
export const sleeps = action({
  args: { ms: v.number() },
  handler: async (_ctx, { ms }) => {
    const started = Date.now();
    const wait = (t: number) => new Promise<number>((resolve) => setTimeout(() => resolve(t), t));
    const together = await Promise.all([wait(ms), wait(ms), wait(ms)]);
    await wait(ms);
    const controller = new AbortController();
    const canceled = setTimeout(() => controller.abort(), 10 * ms);
    clearTimeout(canceled);
    return { together, elapsed: Date.now() - started, aborted: controller.signal.aborted };
  },
});

/** Fetches `url` with a JSON body and reports what came back. */
export const fetchEcho = action({
  args: { url: v.string(), body: v.optional(v.string()) },
  handler: async (_ctx, { url, body }) => {
    const response = await fetch(url, {
      method: body === undefined ? "GET" : "POST",
      headers: { "content-type": "application/json", "x-nimbus-test": "yes" },
      body,
    });
    const bytes = new Uint8Array(await response.arrayBuffer());
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return {
      status: response.status,
      ok: response.ok,
      type: response.headers.get("content-type"),
      text: new TextDecoder().decode(bytes),
      sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
      url: response.url,
    };
  },
});

/** A fetch whose failure is caught, to show the message the function sees. */
export const fetchError = action({
  args: { url: v.string() },
  handler: async (_ctx, { url }) => {
    try {
      const response = await fetch(url);
      return `fetched: ${response.status}`;
    } catch (e) {
      return `${(e as Error).name}: ${(e as Error).message}`;
    }
  },
});

/**
 * For engines.test.mjs: one fetch with a method, headers, a JSON body and a time limit, and
 * everything the function sees of the answer (the headers as `Headers` iterates them, the
 * body parsed when it is JSON), or the error's name and message.
 */
export const fetchDetail = action({
  args: {
    url: v.string(),
    method: v.optional(v.string()),
    headers: v.optional(v.record(v.string(), v.string())),
    json: v.optional(v.any()),
    timeoutMs: v.optional(v.number()),
  },
  handler: async (_ctx, { url, method, headers, json, timeoutMs }) => {
    try {
      const response = await fetch(url, {
        method,
        headers,
        body: json === undefined ? undefined : JSON.stringify(json),
        signal: timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs),
      });
      const isJson = (response.headers.get("content-type") ?? "").startsWith("application/json");
      return {
        status: response.status,
        statusText: response.statusText,
        ok: response.ok,
        redirected: response.redirected,
        url: response.url,
        // The date differs from call to call.
        headers: pairs(response.headers).filter(([name]) => name !== "date"),
        body: isJson ? await response.json() : await response.text(),
      };
    } catch (e) {
      return { error: `${(e as Error).name}: ${(e as Error).message}` };
    }
  },
});

/** process.env as an action sees it. */
export const envOf = action({
  args: { name: v.string() },
  handler: async (_ctx, { name }) => process.env[name] ?? null,
});

/** Never ends on its own: for the wall-time limit. */
export const hang = action({
  args: {},
  handler: async () => {
    await new Promise((resolve) => setTimeout(resolve, 3_600_000));
  },
});

/** Burns CPU: for the CPU limit. */
export const spin = action({
  args: {},
  handler: async () => {
    for (;;) {}
  },
});

/** Calls itself, ever deeper: for the nesting limit. */
export const recurse = action({
  args: { depth: v.number() },
  handler: async (ctx, { depth }): Promise<number> =>
    await ctx.runAction(api.actions.recurse, { depth: depth + 1 }),
});

/** Name and value pairs, in iteration order (forEach: the apps' tsconfig has no DOM.Iterable). */
function pairs(list: { forEach(fn: (value: string, name: string) => void): void }): [string, string][] {
  const out: [string, string][] = [];
  list.forEach((value, name) => out.push([name, value]));
  return out;
}
