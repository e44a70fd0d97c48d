// Paginated live queries do not shift (spec §4.6, "Reactive stability (journal)"): the server
// records a page's end cursor in the query journal (`QueryUpdated.journal`) and, when the page
// re-runs because data changed, ends the page there instead of after `numItems` rows. Loaded
// pages then stay gapless: a row inserted into page 1 grows page 1 instead of pushing its last
// row out of view, and a row deleted from page 1 shrinks it instead of pulling page 2's first
// row in (shown twice). A journal sent back in `Add` (the npm client re-adds its queries with
// their journals after a reconnect) must be honoured the same way.
//
// Uses `items:page` (`items` by the `by_group_n` index, `paginate(paginationOpts)`).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { NimbusServer, api, sleep, withTimeout } from "./harness.mjs";

const WAIT_MS = 20_000;
const PAGE = 10;
const ROWS = 30; // n = 10, 20, ..., 300: page 1 is 10..100, page 2 is 110..200
const STEP = 10;

function liveClient(url) {
  return new ConvexClient(url, {
    webSocketConstructor: WebSocket,
    skipConvexDeploymentUrlCheck: true,
    unsavedChangesWarning: false,
    logger: false,
  });
}

/** Polls `check` (sync or async) until it returns a truthy value; bounded by WAIT_MS. */
async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(20);
  }
}

/**
 * Waits up to `ms` for `check()` and returns whether it became true. Used where a shifted page
 * can hide the row for good: the comparison that follows reports it as missing.
 */
async function settle(check, ms = 2_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) {
      return false;
    }
    await sleep(20);
  }
  return true;
}

/** `n` values, for failure messages. */
const show = (rows) => rows.map((r) => `${r.n}`).join(",");

/**
 * Compares the loaded pages with every row of the group up to `endN` (inclusive): each must
 * appear exactly once, in index order. Returns a description of the differences, or null.
 */
function compare(loaded, expected) {
  const count = new Map();
  for (const row of loaded) {
    count.set(row._id, (count.get(row._id) ?? 0) + 1);
  }
  const missing = expected.filter((row) => !count.has(row._id));
  const duplicated = loaded.filter((row, i) => loaded.findIndex((r) => r._id === row._id) !== i);
  const expectedIds = new Set(expected.map((row) => row._id));
  const extra = loaded.filter((row) => !expectedIds.has(row._id));
  const inOrder = loaded.map((r) => r._id).join() === expected.map((r) => r._id).join();
  if (missing.length === 0 && duplicated.length === 0 && extra.length === 0 && inOrder) {
    return null;
  }
  return {
    missing: show(missing),
    duplicated: show(duplicated),
    extra: show(extra),
    loaded: show(loaded),
    expected: show(expected),
  };
}

describe("paginated live queries with the npm ConvexClient", () => {
  let server;
  let url;
  let http;
  let live;
  const group = "paged";

  before(
    async () => {
      server = await NimbusServer.start();
      ({ url, client: http } = await server.tenantWithApp("pages"));
      await http.mutation(api.items.insertMany, {
        items: Array.from({ length: ROWS }, (_, i) => ({ group, n: (i + 1) * STEP, name: `row-${(i + 1) * STEP}` })),
      });
      live = liveClient(url);
    },
    { timeout: 240_000 },
  );

  after(async () => {
    await live?.close();
    await server?.cleanup();
  });

  test("two loaded pages stay gapless while rows are inserted into and deleted from page 1", { timeout: 120_000 }, async () => {
    const errors = [];
    let updates = 0;
    const sub = live.onPaginatedUpdate_experimental(
      api.items.page,
      { group },
      { initialNumItems: PAGE },
      () => {
        updates += 1;
      },
      (error) => errors.push(String(error?.message ?? error)),
    );
    const current = () => sub.getCurrentValue();
    try {
      // Page 1, then page 2.
      await until("page 1", () => current()?.status === "CanLoadMore");
      assert.equal(current().results.length, PAGE);
      assert.ok(current().loadMore(PAGE), "loadMore must start loading page 2");
      await until("page 2", () => current()?.status === "CanLoadMore" && current().results.length === 2 * PAGE);
      const initial = current().results;
      assert.deepEqual(initial.map((r) => r.n), Array.from({ length: 2 * PAGE }, (_, i) => (i + 1) * STEP));
      const endN = initial[initial.length - 1].n; // page 2's original end: 200

      /** Every row of the group up to page 2's original end, straight from the database. */
      const expectedRows = async () => await http.query(api.items.range, { group, lte: endN });

      const problems = [];
      const byN = new Map(initial.map((r) => [r.n, r._id]));
      const changes = [
        ["insert 55 (inside page 1)", { insert: 55 }],
        ["delete 30 (page 1)", { remove: 30 }],
        ["delete 70 (page 1)", { remove: 70 }],
        ["insert 5 (before page 1's first row)", { insert: 5 }],
        ["insert 95 (inside page 1)", { insert: 95 }],
        ["insert 96 (inside page 1)", { insert: 96 }],
        ["delete 10 (page 1)", { remove: 10 }],
        ["delete 100 (page 1's last row)", { remove: 100 }],
        ["insert 105 (between page 1's end and page 2's first row)", { insert: 105 }],
        ["delete 5 (page 1's first row)", { remove: 5 }],
        ["insert 20.5 (inside page 1)", { insert: 20.5 }],
      ];
      for (const [what, change] of changes) {
        // The mutation goes through the same client: its promise resolves only after the
        // Transition that reflects it, so the pages already show the change. `settle` gives
        // the update a little more time anyway (a shifted page may hide an inserted row for
        // good; the comparison then reports it missing).
        if (change.insert !== undefined) {
          const id = await live.mutation(api.items.insert, { group, n: change.insert, name: `row-${change.insert}` });
          byN.set(change.insert, id);
          await settle(() => current()?.results.some((r) => r._id === id));
        } else {
          const id = byN.get(change.remove);
          await live.mutation(api.items.remove, { id });
          await settle(() => current() && !current().results.some((r) => r._id === id));
        }
        const diff = compare(current().results, await expectedRows());
        if (diff !== null) {
          problems.push({ after: what, ...diff });
        }
      }
      assert.deepEqual(errors, []);
      assert.deepEqual(
        problems,
        [],
        `the loaded pages shifted (${problems.length} of ${changes.length} changes; ${updates} updates):\n` +
          problems.map((p) => JSON.stringify(p)).join("\n"),
      );

      // A reconnect: the client re-adds both pages with their journals; the server must use
      // them, so the pages keep their boundaries across the new socket.
      const before = live.connectionState().connectionCount;
      const res = await server.admin("POST", "/admin/tenants/pages/disconnect");
      assert.equal(res.status, 200, res.text);
      await until("the client to reconnect", () =>
        live.connectionState().connectionCount > before && live.connectionState().isWebSocketConnected);
      const id = await live.mutation(api.items.insert, { group, n: 42, name: "row-42" });
      await settle(() => current()?.results.some((r) => r._id === id));
      const diff = compare(current().results, await expectedRows());
      assert.equal(diff, null, `after a reconnect and an insert into page 1 the pages shifted: ${JSON.stringify(diff)}`);
    } finally {
      sub.unsubscribe();
    }
  });
});

/** A raw sync-protocol socket (see live.test.mjs): send JSON, wait for messages. */
async function rawSocket(url) {
  const ws = new WebSocket(url.replace(/^http/, "ws") + "/api/1.48.0/sync");
  const messages = [];
  const waiters = [];
  ws.on("message", (data) => {
    messages.push(JSON.parse(data.toString()));
    for (const w of [...waiters]) {
      if (messages.some(w.pred)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  });
  ws.on("error", () => {});
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    }),
    WAIT_MS,
    "opening a raw socket",
  );
  ws.send(JSON.stringify({
    type: "Connect", sessionId: randomUUID(), connectionCount: 0, lastCloseReason: null, clientTs: Date.now(),
  }));
  return {
    ws,
    send: (m) => ws.send(JSON.stringify(m)),
    message: async (pred, what) => {
      if (!messages.some(pred)) {
        await withTimeout(new Promise((resolve) => waiters.push({ pred, resolve })), WAIT_MS, what);
      }
      return messages.find(pred);
    },
  };
}

describe("page journals on the raw protocol", () => {
  let server;
  let url;
  let http;
  const group = "journal";

  before(
    async () => {
      server = await NimbusServer.start();
      ({ url, client: http } = await server.tenantWithApp("journals"));
      await http.mutation(api.items.insertMany, {
        items: Array.from({ length: ROWS }, (_, i) => ({ group, n: (i + 1) * STEP, name: `row-${(i + 1) * STEP}` })),
      });
    },
    { timeout: 240_000 },
  );

  after(async () => {
    await server?.cleanup();
  });

  /** Subscribes to page 1 (`cursor: null`) on a new socket, optionally with a journal. */
  async function subscribePage1(journal) {
    const s = await rawSocket(url);
    const add = {
      type: "Add",
      queryId: 0,
      udfPath: "items:page",
      args: [{ group, paginationOpts: { numItems: PAGE, cursor: null, id: 1 } }],
    };
    if (journal !== undefined) {
      add.journal = journal;
    }
    s.send({ type: "ModifyQuerySet", baseVersion: 0, newVersion: 1, modifications: [add] });
    const t = await s.message((m) => m.type === "Transition" && m.endVersion.querySet === 1, "page 1's first result");
    s.ws.close();
    const update = t.modifications.find((m) => m.queryId === 0);
    assert.equal(update?.type, "QueryUpdated", JSON.stringify(t));
    return update;
  }

  test("QueryUpdated carries the page's end as its journal, and an Add with it ends the page there", { timeout: 60_000 }, async () => {
    const first = await subscribePage1();
    assert.deepEqual(first.value.page.map((r) => r.n), Array.from({ length: PAGE }, (_, i) => (i + 1) * STEP));
    assert.equal(
      typeof first.journal,
      "string",
      `a paginated query's QueryUpdated must carry its end cursor as the journal, got ${JSON.stringify(first.journal)}`,
    );

    // A row inside page 1, then a new socket subscribing with the journal: the page still
    // ends after row 100 (11 rows), and without the journal it is the first 10 again.
    await http.mutation(api.items.insert, { group, n: 15, name: "row-15" });
    const withJournal = await subscribePage1(first.journal);
    assert.deepEqual(
      withJournal.value.page.map((r) => r.n),
      [10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100],
      "an Add with the journal must end the page at the journaled cursor",
    );
    const fresh = await subscribePage1(null);
    assert.deepEqual(fresh.value.page.map((r) => r.n), [10, 15, 20, 30, 40, 50, 60, 70, 80, 90]);
  });
});
