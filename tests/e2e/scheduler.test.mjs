// Scheduled functions and crons (issue 15) through the official client and CLI:
// `ctx.scheduler.runAfter/runAt/cancel` from mutations and actions, the system table
// `_scheduled_functions`, exactly-once mutations (also across SIGKILL), at-most-once actions,
// `crons.ts` registered at push and removed by a re-push, the policy for cron runs missed
// while the server was down, fairness between tenants, and bad input at the call site.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  APP_DIR,
  NimbusServer,
  api,
  callRaw,
  deploy,
  expectFunctionError,
  expectSuccess,
  httpRequest,
  makeAppVariant,
  rejection,
  removeAppVariant,
  sleep,
} from "./harness.mjs";

let server;
let tenant;

before(
  async () => {
    server = await NimbusServer.start();
    tenant = await server.tenantWithApp("sched");
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
});

/** Polls `check` (async, returns a value or undefined) until it returns a value. */
async function eventually(what, check, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last !== undefined && last !== false) {
      return last;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}\n--- server log\n${server.logTail()}`);
    }
    await sleep(100);
  }
}

async function runsOf(t, key) {
  return (await t.client.query(api.scheduler.runs, { key }))?.n ?? 0;
}

async function jobOf(t, id) {
  return await t.client.query(api.scheduler.job, { id });
}

async function diagnostics(srv, name) {
  const res = await httpRequest(`${srv.url}/admin/tenants/${name}/diagnostics`, {
    headers: { authorization: `Bearer ${srv.adminKey}` },
  });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

describe("scheduled mutations", () => {
  test("a mutation schedules a mutation 1 s later, which runs exactly once and shows success", async () => {
    const scheduledAt = Date.now();
    const [id] = await tenant.client.mutation(api.scheduler.scheduleBump, { key: "one", delayMs: 1000 });
    const pending = await jobOf(tenant, id);
    assert.equal(pending.state.kind, "pending");
    assert.equal(pending.name, "scheduler.js:bump");
    assert.deepEqual(pending.args, [{ key: "one" }]);
    assert.ok(Math.abs(pending.scheduledTime - (scheduledAt + 1000)) < 1000, JSON.stringify(pending));
    assert.equal(await runsOf(tenant, "one"), 0, "it must not run before it is due");
    const done = await eventually("the job to succeed", async () => {
      const job = await jobOf(tenant, id);
      return job.state.kind === "success" ? job : undefined;
    });
    assert.ok(done.completedTime >= done.scheduledTime, JSON.stringify(done));
    assert.ok(done.completedTime - scheduledAt >= 1000, `ran after ${done.completedTime - scheduledAt} ms`);
    await sleep(1500);
    const row = await tenant.client.query(api.scheduler.runs, { key: "one" });
    assert.equal(row.n, 1, "exactly once");
    // Inside its own transaction the job saw itself in progress, under its own ID.
    assert.equal(row.sawState, "inProgress");
    assert.equal(row.sawJobId, id);
  });

  test("a mutation that schedules and then throws schedules nothing", async () => {
    const error = await rejection(tenant.client.mutation(api.scheduler.scheduleThenThrow, { key: "thrown" }));
    assert.match(String(error), /changed my mind/);
    await sleep(1000);
    assert.equal(await runsOf(tenant, "thrown"), 0);
    const jobs = await tenant.client.query(api.scheduler.jobsNamed, { name: "scheduler.js:bump" });
    assert.ok(jobs.every((job) => job.args[0].key !== "thrown"), JSON.stringify(jobs));
  });

  test("a job canceled before it is due never runs, and shows canceled", async () => {
    const [id] = await tenant.client.mutation(api.scheduler.scheduleBump, { key: "canceled", delayMs: 1500 });
    await tenant.client.mutation(api.scheduler.cancel, { id });
    const job = await jobOf(tenant, id);
    assert.equal(job.state.kind, "canceled");
    assert.equal(typeof job.completedTime, "number");
    await sleep(2500);
    assert.equal(await runsOf(tenant, "canceled"), 0);
    assert.equal((await jobOf(tenant, id)).state.kind, "canceled");
    // Canceling a finished job changes nothing.
    await tenant.client.mutation(api.scheduler.cancel, { id });
    assert.equal((await jobOf(tenant, id)).state.kind, "canceled");
  });

  test("runAt in the past runs at once; a failing job shows failed with its error", async () => {
    const id = await tenant.client.mutation(api.scheduler.scheduleAt, { key: "past", at: Date.now() - 60_000 });
    await eventually("the past job", async () => (await runsOf(tenant, "past")) === 1);
    assert.equal((await jobOf(tenant, id)).state.kind, "success");
    const failing = await tenant.client.mutation(api.scheduler.scheduleFailure, {});
    const failed = await eventually("the failing job", async () => {
      const job = await jobOf(tenant, failing);
      return job.state.kind === "failed" ? job : undefined;
    });
    assert.match(failed.state.error, /fails on purpose/);
  });
});

describe("scheduling from actions, and scheduled actions", () => {
  test("an action schedules (at once) and cancels", async () => {
    const id = await tenant.client.action(api.scheduler.fromAction, { key: "from-action", delayMs: 0 });
    await eventually("the job an action scheduled", async () => (await runsOf(tenant, "from-action")) === 1);
    assert.equal((await jobOf(tenant, id)).state.kind, "success");
    const canceled = await tenant.client.action(api.scheduler.fromAction, {
      key: "action-canceled",
      delayMs: 500,
      cancel: true,
    });
    assert.equal((await jobOf(tenant, canceled)).state.kind, "canceled");
    await sleep(1200);
    assert.equal(await runsOf(tenant, "action-canceled"), 0);
  });

  test("a scheduled action runs once and its outcome is recorded", async () => {
    const id = await tenant.client.mutation(api.scheduler.scheduleAction, { key: "scheduled-action", delayMs: 0 });
    const done = await eventually("the scheduled action", async () => {
      const job = await jobOf(tenant, id);
      return job.state.kind === "success" ? job : undefined;
    });
    assert.equal(done.name, "scheduler.js:bumpLater");
    await sleep(500);
    assert.equal(await runsOf(tenant, "scheduled-action"), 1);
  });
});

describe("bad input at the call site", () => {
  const cases = [
    ["unknown", /nonexistent path: scheduler:nope/],
    ["query", /only mutations and actions can be scheduled/],
    ["negative", /must be non-negative/],
    ["invalidDate", /not a valid date/],
    ["badArgs", /ArgumentValidationError/],
    ["notConvex", /not a supported Convex type|not a valid Convex value/i],
    ["rawNegative", /before 1970|non-negative/],
    ["rawNotConvex", /not Convex values/],
    ["rawQuery", /only mutations and actions can be scheduled/],
    ["tooMany", /at most 1000 functions/],
    ["writeSystem", /read-only|system table/i],
  ];
  for (const [what, pattern] of cases) {
    test(`${what}: a clear error, and nothing scheduled`, async () => {
      const res = await callRaw(tenant.url, "mutation", "scheduler:scheduleBad", { what });
      expectFunctionError(assert, res, "UncaughtError");
      assert.match(res.body.errorMessage, pattern, res.text);
    });
  }
  test("nothing from the failed calls is in _scheduled_functions", async () => {
    const noops = await tenant.client.query(api.scheduler.jobsNamed, { name: "scheduler.js:noop" });
    assert.equal(noops.length, 0, "the 1001-job mutation failed as a whole");
  });
});

describe("crons", () => {
  test("a cron running every second runs repeatedly, is recorded, and stops after a re-push without it", async () => {
    const t = await server.tenantWithApp("crons");
    const withCron = makeAppVariant(APP_DIR, "crons", {
      "convex/crons.ts": [
        'import { cronJobs } from "convex/server";',
        'import { internal } from "./_generated/api";',
        "const crons = cronJobs();",
        'crons.interval("tick", { seconds: 1 }, internal.scheduler.bump, { key: "cron" });',
        'crons.cron("nightly", "0 3 * * *", internal.scheduler.noop, { i: 1 });',
        "export default crons;",
        "",
      ].join("\n"),
    });
    try {
      await deploy({ appDir: withCron, url: t.url, adminKey: t.adminKey, server });
      await eventually("three cron runs", async () => (await runsOf(t, "cron")) >= 3, 15_000);
      const state = await t.client.query(api.scheduler.cronState, {});
      assert.deepEqual(state.crons.map((c) => c.name).sort(), ["nightly", "tick"]);
      const tick = state.crons.find((c) => c.name === "tick");
      assert.equal(tick.cronSpec.udfPath, "scheduler.js:bump");
      assert.ok(tick.nextTs > tick.prevTs, JSON.stringify(tick));
      const nightly = state.crons.find((c) => c.name === "nightly");
      const next = new Date(nightly.nextTs);
      assert.equal(next.getUTCHours(), 3);
      assert.equal(next.getUTCMinutes(), 0);
      const runs = state.runs.filter((r) => r.cron === "tick");
      assert.ok(runs.filter((r) => r.state.kind === "success").length >= 3, JSON.stringify(runs));

      // Re-push without crons.ts: no run starts after the push has finished.
      await deploy({ appDir: APP_DIR, url: t.url, adminKey: t.adminKey, server });
      const atRepush = await runsOf(t, "cron");
      await sleep(3000);
      assert.equal(await runsOf(t, "cron"), atRepush, "the cron ran after it was removed");
      assert.deepEqual((await t.client.query(api.scheduler.cronState, {})).crons, []);
    } finally {
      removeAppVariant(withCron);
    }
  });
});

describe("restart", () => {
  test("jobs pending at SIGKILL run after the restart, each exactly once, without a request waking the tenant", async () => {
    const srv = await NimbusServer.start();
    try {
      const t = await srv.tenantWithApp("restart");
      // 20 jobs 100 ms apart: some run before the kill, some may be running at it, the rest after.
      await t.client.mutation(api.scheduler.scheduleSpread, { key: "restart", count: 20, stepMs: 100 });
      await sleep(700);
      await srv.kill();
      await srv.launch();
      // No request touches the tenant (diagnostics do not open it): the instance opens it
      // by itself, from the due time it recorded in its control plane.
      const diag = await eventually(
        "the tenant to be opened for its due jobs and to finish them",
        async () => {
          const d = await diagnostics(srv, "restart");
          return d.state === "active" &&
            d.scheduler.succeeded > 0 &&
            d.scheduler.pending === 0 &&
            d.scheduler.running === 0
            ? d
            : undefined;
        },
        20_000,
      );
      assert.equal(diag.scheduler.nextDueMs, null, JSON.stringify(diag.scheduler));
      await sleep(500);
      assert.equal(await runsOf(t, "restart"), 20, "each of the 20 jobs ran exactly once");
      const jobs = await t.client.query(api.scheduler.jobsNamed, { name: "scheduler.js:bump" });
      assert.equal(jobs.length, 20);
      assert.ok(jobs.every((job) => job.state.kind === "success"), JSON.stringify(jobs.map((j) => j.state)));
    } finally {
      await srv.cleanup();
    }
  });

  test("a cron's runs missed while the server was down are made up by one run", async () => {
    const srv = await NimbusServer.start();
    const withCron = makeAppVariant(APP_DIR, "crons-down", {
      "convex/crons.ts": [
        'import { cronJobs } from "convex/server";',
        'import { internal } from "./_generated/api";',
        "const crons = cronJobs();",
        'crons.interval("tick", { seconds: 1 }, internal.scheduler.bump, { key: "tick" });',
        "export default crons;",
        "",
      ].join("\n"),
    });
    try {
      const t = await srv.tenantWithApp("down");
      await deploy({ appDir: withCron, url: t.url, adminKey: t.adminKey, server: srv });
      await eventually("a first cron run", async () => (await runsOf(t, "tick")) >= 1, 15_000);
      await srv.kill();
      const killedAt = Date.now();
      await sleep(4000);
      const restartedAt = Date.now();
      await srv.launch();
      await sleep(2500);
      const { runs } = await t.client.query(api.scheduler.cronState, {});
      // Due times that fell while the server was down: only the first (the make-up run).
      const missed = runs.filter((r) => r.scheduledTime > killedAt + 1100 && r.scheduledTime < restartedAt - 100);
      assert.deepEqual(missed, [], JSON.stringify(runs));
      const madeUp = runs.filter((r) => r.scheduledTime <= killedAt + 1100 && r.completedTime > restartedAt);
      assert.ok(madeUp.length <= 1, JSON.stringify(runs));
      assert.ok(
        runs.some((r) => r.completedTime > restartedAt && r.state.kind === "success"),
        `the cron runs again after the restart: ${JSON.stringify(runs)}`,
      );
    } finally {
      removeAppVariant(withCron);
      await srv.cleanup();
    }
  });
});

describe("fairness", () => {
  test("tenant A's 20,000 due jobs do not hold back tenant B's one job", async () => {
    const srv = await NimbusServer.start();
    try {
      const a = await srv.tenantWithApp("busya");
      const b = await srv.tenantWithApp("quietb");
      // All of A's jobs fall due at one moment; B's job is scheduled at that moment.
      const started = Date.now();
      const dueAt = started + 10_000;
      for (let i = 0; i < 20; i++) {
        await a.client.mutation(api.scheduler.scheduleNoops, { count: 1000, at: dueAt });
      }
      const scheduledA = Date.now() - started;
      assert.ok(Date.now() < dueAt - 1000, `scheduling A's jobs took ${scheduledA} ms`);
      await sleep(dueAt - Date.now() + 200);
      const diagA = await diagnostics(srv, "busya");
      assert.ok(diagA.scheduler.pending > 15_000, JSON.stringify(diagA.scheduler));
      const [id] = await b.client.mutation(api.scheduler.scheduleBump, { key: "b", delayMs: 0 });
      const job = await eventually("B's job", async () => {
        const j = await jobOf(b, id);
        return j.state.kind === "success" ? j : undefined;
      }, 60_000);
      const delayMs = job.completedTime - job.scheduledTime;
      const aNow = (await diagnostics(srv, "busya")).scheduler;
      const aDone = aNow.succeeded;
      console.log(
        `fairness: A scheduled 20,000 jobs in ${scheduledA} ms; B's job finished ${delayMs.toFixed(1)} ms after it was due, when A had run ${aDone} of its jobs`,
      );
      assert.ok(delayMs < 5000, `B waited ${delayMs} ms`);
      assert.ok(aDone < 20_000, `A's backlog should still be draining when B's job is done (else the test shows nothing): ${JSON.stringify(aNow)}`);
      const drained = await eventually("A's backlog to drain", async () => {
        const d = await diagnostics(srv, "busya");
        return d.scheduler.pending === 0 && d.scheduler.running === 0 ? d : undefined;
      }, 240_000);
      const total = Date.now() - dueAt;
      console.log(`fairness: A's 20,000 jobs drained ${total} ms after they fell due (${drained.scheduler.succeeded} succeeded)`);
      assert.equal(drained.scheduler.failed, 0);
    } finally {
      await srv.cleanup();
    }
  });
});
