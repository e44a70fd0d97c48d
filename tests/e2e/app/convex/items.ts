import { v } from "convex/values";
import { paginationOptsValidator, paginationResultValidator } from "convex/server";
import { mutation, query } from "./_generated/server";

const meta = v.object({ color: v.string(), weight: v.number() });

export const itemFields = {
  group: v.string(),
  n: v.number(),
  name: v.string(),
  tags: v.optional(v.array(v.string())),
  big: v.optional(v.int64()),
  meta: v.optional(meta),
};

export const itemDoc = v.object({
  _id: v.id("items"),
  _creationTime: v.number(),
  ...itemFields,
});

const order = v.union(v.literal("asc"), v.literal("desc"));

export const insert = mutation({
  args: itemFields,
  returns: v.id("items"),
  handler: async (ctx, args) => {
    return await ctx.db.insert("items", args);
  },
});

/** Inserts many items in one transaction; returns their IDs in order. */
export const insertMany = mutation({
  args: { items: v.array(v.object(itemFields)) },
  returns: v.array(v.id("items")),
  handler: async (ctx, { items }) => {
    const ids = [];
    for (const item of items) {
      ids.push(await ctx.db.insert("items", item));
    }
    return ids;
  },
});

/** Inserts anything into `items`: the schema, not an args validator, must reject bad rows. */
export const insertAny = mutation({
  args: { doc: v.any() },
  returns: v.string(),
  handler: async (ctx, { doc }) => {
    return await ctx.db.insert("items", doc);
  },
});

/** `db.get(id)`: the table comes from the ID. */
export const get = query({
  args: { id: v.id("items") },
  returns: v.union(itemDoc, v.null()),
  handler: async (ctx, { id }) => {
    return await ctx.db.get(id);
  },
});

/** `db.get(table, id)`. */
export const getWithTable = query({
  args: { id: v.id("items") },
  returns: v.union(itemDoc, v.null()),
  handler: async (ctx, { id }) => {
    return await ctx.db.get("items", id);
  },
});

/** `db.get` of any string: normalizeId first, so foreign or malformed IDs read as null. */
export const getLoose = query({
  args: { id: v.string() },
  returns: v.union(itemDoc, v.null()),
  handler: async (ctx, { id }) => {
    const normalized = ctx.db.normalizeId("items", id);
    return normalized === null ? null : await ctx.db.get(normalized);
  },
});

export const normalize = query({
  args: { table: v.union(v.literal("items"), v.literal("notes")), id: v.string() },
  returns: v.union(v.string(), v.null()),
  handler: async (ctx, { table, id }) => {
    return ctx.db.normalizeId(table, id);
  },
});

export const patch = mutation({
  args: {
    id: v.id("items"),
    name: v.optional(v.string()),
    n: v.optional(v.number()),
    meta: v.optional(meta),
    removeTags: v.optional(v.boolean()),
  },
  returns: itemDoc,
  handler: async (ctx, { id, removeTags, ...fields }) => {
    await ctx.db.patch(id, removeTags ? { ...fields, tags: undefined } : fields);
    const doc = await ctx.db.get(id);
    if (doc === null) {
      throw new Error("patched document vanished");
    }
    return doc;
  },
});

/** `db.patch(table, id, value)`. */
export const patchWithTable = mutation({
  args: { id: v.id("items"), name: v.string() },
  returns: v.null(),
  handler: async (ctx, { id, name }) => {
    await ctx.db.patch("items", id, { name });
    return null;
  },
});

export const replace = mutation({
  args: { id: v.id("items"), doc: v.object(itemFields) },
  returns: itemDoc,
  handler: async (ctx, { id, doc }) => {
    await ctx.db.replace(id, doc);
    const after = await ctx.db.get("items", id);
    if (after === null) {
      throw new Error("replaced document vanished");
    }
    return after;
  },
});

export const remove = mutation({
  args: { id: v.id("items") },
  returns: v.null(),
  handler: async (ctx, { id }) => {
    await ctx.db.delete(id);
    return null;
  },
});

/** `db.delete(table, id)`, then reads it back inside the same transaction. */
export const removeWithTable = mutation({
  args: { id: v.id("items") },
  returns: v.union(itemDoc, v.null()),
  handler: async (ctx, { id }) => {
    await ctx.db.delete("items", id);
    return await ctx.db.get("items", id);
  },
});

/**
 * `withIndex("by_group_n")`: equality on `group`, then an optional lower and upper bound on `n`.
 */
export const range = query({
  args: {
    group: v.string(),
    gt: v.optional(v.number()),
    gte: v.optional(v.number()),
    lt: v.optional(v.number()),
    lte: v.optional(v.number()),
    order: v.optional(order),
    take: v.optional(v.number()),
  },
  returns: v.array(itemDoc),
  handler: async (ctx, args) => {
    const q = ctx.db.query("items").withIndex("by_group_n", (r) => {
      const eq = r.eq("group", args.group);
      const lower =
        args.gt !== undefined ? eq.gt("n", args.gt) : args.gte !== undefined ? eq.gte("n", args.gte) : eq;
      return args.lt !== undefined ? lower.lt("n", args.lt) : args.lte !== undefined ? lower.lte("n", args.lte) : lower;
    });
    const ordered = q.order(args.order ?? "asc");
    return args.take !== undefined ? await ordered.take(args.take) : await ordered.collect();
  },
});

/** A range on the first field of an index only (no equality prefix). */
export const byN = query({
  args: { gte: v.number(), lt: v.number(), order: v.optional(order) },
  returns: v.array(itemDoc),
  handler: async (ctx, { gte, lt, order }) => {
    return await ctx.db
      .query("items")
      .withIndex("by_n", (r) => r.gte("n", gte).lt("n", lt))
      .order(order ?? "asc")
      .collect();
  },
});

export const first = query({
  args: { group: v.string(), order: v.optional(order) },
  returns: v.union(itemDoc, v.null()),
  handler: async (ctx, { group, order }) => {
    return await ctx.db
      .query("items")
      .withIndex("by_group_n", (r) => r.eq("group", group))
      .order(order ?? "asc")
      .first();
  },
});

/** `.unique()` on `by_n`: null for no row, the row for one, an error for two or more. */
export const uniqueByN = query({
  args: { n: v.number() },
  returns: v.union(itemDoc, v.null()),
  handler: async (ctx, { n }) => {
    return await ctx.db
      .query("items")
      .withIndex("by_n", (r) => r.eq("n", n))
      .unique();
  },
});

export const page = query({
  args: { group: v.string(), order: v.optional(order), paginationOpts: paginationOptsValidator },
  returns: paginationResultValidator(itemDoc),
  handler: async (ctx, { group, order, paginationOpts }) => {
    return await ctx.db
      .query("items")
      .withIndex("by_group_n", (r) => r.eq("group", group))
      .order(order ?? "asc")
      .paginate(paginationOpts);
  },
});

/** A full table scan in `_creationTime` order. */
export const all = query({
  args: { order: v.optional(order), take: v.optional(v.number()) },
  returns: v.array(itemDoc),
  handler: async (ctx, { order, take }) => {
    const q = ctx.db.query("items").order(order ?? "asc");
    return take !== undefined ? await q.take(take) : await q.collect();
  },
});

/** The built-in `by_creation_time` index. */
export const createdAfter = query({
  args: { after: v.number() },
  returns: v.array(itemDoc),
  handler: async (ctx, { after }) => {
    return await ctx.db
      .query("items")
      .withIndex("by_creation_time", (r) => r.gt("_creationTime", after))
      .collect();
  },
});

/**
 * Filter expressions. Each `kind` exercises different operators of the filter language.
 */
export const filtered = query({
  args: {
    kind: v.union(
      v.literal("eqAndRange"),
      v.literal("orNot"),
      v.literal("nestedField"),
      v.literal("arithmetic"),
      v.literal("missingField"),
      v.literal("int64"),
    ),
    group: v.string(),
  },
  returns: v.array(v.number()),
  handler: async (ctx, { kind, group }) => {
    const base = ctx.db.query("items");
    let rows;
    switch (kind) {
      case "eqAndRange":
        // group = g AND 3 <= n < 7
        rows = await base
          .filter((q) =>
            q.and(q.eq(q.field("group"), group), q.gte(q.field("n"), 3), q.lt(q.field("n"), 7)),
          )
          .collect();
        break;
      case "orNot":
        // group = g AND (n = 1 OR n = 8) AND NOT (n = 8 AND name = "item-8")
        rows = await base
          .filter((q) =>
            q.and(
              q.eq(q.field("group"), group),
              q.or(q.eq(q.field("n"), 1), q.eq(q.field("n"), 8)),
              q.not(q.and(q.eq(q.field("n"), 8), q.eq(q.field("name"), "item-8"))),
            ),
          )
          .collect();
        break;
      case "nestedField":
        // meta.color = "red", with a `neq` on the group
        rows = await base
          .filter((q) =>
            q.and(q.eq(q.field("group"), group), q.eq(q.field("meta.color"), "red"), q.neq(q.field("name"), "")),
          )
          .collect();
        break;
      case "arithmetic":
        // n * 2 + 1 > 10 AND n % 2 = 0 (n is a float64)
        rows = await base
          .filter((q) =>
            q.and(
              q.eq(q.field("group"), group),
              q.gt(q.add(q.mul(q.field("n"), 2), 1), 10),
              q.eq(q.mod(q.field("n"), 2), 0),
            ),
          )
          .collect();
        break;
      case "missingField":
        // rows without `tags`
        rows = await base
          .filter((q) => q.and(q.eq(q.field("group"), group), q.eq(q.field("tags"), undefined)))
          .collect();
        break;
      case "int64":
        // big > 5n (an int64 literal; float64 rows never equal int64 ones)
        rows = await base
          .filter((q) => q.and(q.eq(q.field("group"), group), q.gt(q.field("big"), 5n)))
          .collect();
        break;
    }
    return rows.map((row) => row.n).sort((a, b) => a - b);
  },
});

/** A filter on an index range, then `take`: the filter runs before the limit. */
export const rangeFilterTake = query({
  args: { group: v.string(), take: v.number() },
  returns: v.array(v.number()),
  handler: async (ctx, { group, take }) => {
    const rows = await ctx.db
      .query("items")
      .withIndex("by_group_n", (r) => r.eq("group", group))
      .filter((q) => q.eq(q.mod(q.field("n"), 2), 1))
      .order("desc")
      .take(take);
    return rows.map((row) => row.n);
  },
});

/** `query(table).count()`: part of the 1.48 library (internal in its typings). */
export const count = query({
  args: {},
  returns: v.number(),
  handler: async (ctx) => {
    const q = ctx.db.query("items") as unknown as { count: () => Promise<number> };
    return await q.count();
  },
});

/** Async iteration with an early break (exercises queryCleanup). */
export const firstNames = query({
  args: { group: v.string(), max: v.number() },
  returns: v.array(v.string()),
  handler: async (ctx, { group, max }) => {
    const names: string[] = [];
    for await (const row of ctx.db.query("items").withIndex("by_group_n", (r) => r.eq("group", group))) {
      if (names.length >= max) {
        break;
      }
      names.push(row.name);
    }
    return names;
  },
});
