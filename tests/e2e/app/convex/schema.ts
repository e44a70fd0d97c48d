import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

// The tables of the end-to-end test app. Every tenant in the tests pushes this same schema,
// so two tenants always have tables with the same names.
export default defineSchema({
  // Database operations: get/insert/patch/replace/delete, index ranges, filters, pagination.
  items: defineTable({
    group: v.string(),
    n: v.number(),
    name: v.string(),
    tags: v.optional(v.array(v.string())),
    big: v.optional(v.int64()),
    meta: v.optional(v.object({ color: v.string(), weight: v.number() })),
  })
    .index("by_group_n", ["group", "n"])
    .index("by_n", ["n"]),

  // Serializability: read-modify-write counters.
  counters: defineTable({ name: v.string(), value: v.number() }).index("by_name", ["name"]),

  // Durability: each mutation writes several rows, so a partial commit would be visible.
  ledger: defineTable({ writer: v.number(), seq: v.number(), part: v.number() }).index(
    "by_writer_seq",
    ["writer", "seq"],
  ),

  // Index use: 50,000 rows keyed by k.
  bulk: defineTable({ k: v.number(), pad: v.string() }).index("by_k", ["k"]),

  // Atomicity and tenant isolation.
  notes: defineTable({ owner: v.string(), text: v.string() }).index("by_owner", ["owner"]),

  // Schema changes: a later push turns `label` into a number, which existing rows violate.
  things: defineTable({ label: v.string() }),

  // Scheduled functions and crons: how many times each key's jobs ran, and what a job saw.
  jobRuns: defineTable({
    key: v.string(),
    n: v.number(),
    sawState: v.optional(v.string()),
    sawJobId: v.optional(v.union(v.string(), v.null())),
  }).index("by_key", ["key"]),
});
