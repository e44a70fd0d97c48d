// Scheduler benchmark (BENCHMARKS.md, "Scheduled functions"): how fast one tenant's backlog
// of due jobs drains, and how long a quiet tenant's job waits while it does.
//
//   NIMBUS_BIN=... node tests/e2e/bench-scheduler.mjs [--jobs 20000] [--rounds 5]
//
// Each round: tenant A schedules `jobs` no-op mutations (1,000 per mutation, the per-call
// limit) all due at one moment T; at T, tenant B schedules one job due at once. Reported:
// A's drain time and rate (from T until its last job finished), and B's wait (its job's
// completedTime minus scheduledTime), as read from `_scheduled_functions`. Loopback only,
// bounded: every wait has a deadline.
import { parseArgs } from "node:util";
import { NimbusServer, api, sleep } from "./harness.mjs";

const { values } = parseArgs({
  options: { jobs: { type: "string", default: "20000" }, rounds: { type: "string", default: "5" } },
});
const jobs = Number(values.jobs);
const rounds = Number(values.rounds);
if (!(jobs >= 1000 && jobs % 1000 === 0) || !(rounds >= 1)) {
  throw new Error("--jobs must be a positive multiple of 1000, --rounds at least 1");
}

async function scheduler(server, name) {
  const res = await fetch(`${server.url}/admin/tenants/${name}/diagnostics`, {
    headers: { authorization: `Bearer ${server.adminKey}` },
    signal: AbortSignal.timeout(10_000),
  });
  return (await res.json()).scheduler;
}

async function until(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(20);
  }
}

const server = await NimbusServer.start();
try {
  const a = await server.tenantWithApp("bencha");
  const b = await server.tenantWithApp("benchb");
  const results = [];
  for (let round = 1; round <= rounds; round++) {
    const before = (await scheduler(server, "bencha")).succeeded;
    const dueAt = Date.now() + 2_000 + jobs / 5;
    for (let i = 0; i < jobs / 1000; i++) {
      await a.client.mutation(api.scheduler.scheduleNoops, { count: 1000, at: dueAt });
    }
    if (Date.now() > dueAt - 500) {
      throw new Error("scheduling took too long for this round's due time");
    }
    await sleep(dueAt - Date.now());
    const [id] = await b.client.mutation(api.scheduler.scheduleBump, { key: `round${round}`, delayMs: 0 });
    const job = await until(
      "B's job",
      async () => {
        const j = await b.client.query(api.scheduler.job, { id });
        return j.state.kind === "success" ? j : undefined;
      },
      60_000,
    );
    await until(
      "A's backlog",
      async () => {
        const s = await scheduler(server, "bencha");
        return s.succeeded - before >= jobs && s.running === 0 ? s : undefined;
      },
      300_000,
    );
    const drainMs = Date.now() - dueAt;
    const waitMs = job.completedTime - job.scheduledTime;
    results.push({ drainMs, waitMs });
    console.log(
      `round ${round}: A drained ${jobs} jobs in ${drainMs} ms (${Math.round((jobs * 1000) / drainMs)} jobs/s); B's job finished ${waitMs.toFixed(1)} ms after it was due`,
    );
  }
  const sorted = (xs) => [...xs].sort((x, y) => x - y);
  const median = (xs) => sorted(xs)[Math.floor(xs.length / 2)];
  console.log(
    `median of ${rounds}: drain ${median(results.map((r) => r.drainMs))} ms for ${jobs} jobs; B waited ${median(results.map((r) => r.waitMs)).toFixed(1)} ms (max ${sorted(results.map((r) => r.waitMs)).at(-1).toFixed(1)} ms)`,
  );
} finally {
  await server.cleanup();
}
