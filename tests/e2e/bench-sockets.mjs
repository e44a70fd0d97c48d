// Idle sockets benchmark (BENCHMARKS.md, "Idle sockets"): what an open, mostly idle sync
// socket with one subscription costs the server, and how long one commit takes to reach
// every subscriber of one query.
//
//   NIMBUS_BIN=... node tests/e2e/bench-sockets.mjs [--sockets 19000] [--tenants 100] [--hot 5000] [--commits 20]
//
// `--tenants` tenants get the e2e app. Every tenant is opened and its query run once first,
// so the baseline holds the tenants, and the growth after it is the sockets' alone. Then
// `--sockets` raw sync sockets (the protocol the official clients speak: Connect, then
// ModifyQuerySet) each subscribe to `counter:get` of their tenant: `--hot` of them on the first
// tenant, the rest spread evenly over the others. Sockets leave from 127.0.0.2, 127.0.0.3, ...
// (at most 900 per address, under the server's per-address limit), as browser tabs would.
// Reported: the server's resident memory (VmRSS) before and after, per socket; then
// `--commits` increments of the hot tenant's counter, one at a time, each timed from the
// mutation's send until every hot subscriber has the new value. Loopback only; every wait
// is bounded, and the server and sockets are closed at the end.
import fs from "node:fs";
import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { NimbusServer, callRaw, sleep, withTimeout } from "./harness.mjs";

const { values } = parseArgs({
  options: {
    sockets: { type: "string", default: "19000" },
    tenants: { type: "string", default: "100" },
    hot: { type: "string", default: "5000" },
    commits: { type: "string", default: "20" },
  },
});
const SOCKETS = Number(values.sockets);
const TENANTS = Number(values.tenants);
const HOT = Number(values.hot);
const COMMITS = Number(values.commits);
if (!(TENANTS >= 2 && HOT >= 1 && SOCKETS > HOT && COMMITS >= 1)) {
  throw new Error("need --tenants >= 2, --hot >= 1, --sockets > --hot, --commits >= 1");
}
const PER_ADDRESS = 900;
const OPEN_CONCURRENCY = 200;

function rssKib(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** One subscriber: a socket, and the latest counter value it was sent. */
function subscribe(url, localAddress) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/api/1.48.0/sync`, { localAddress });
    const sub = { ws, value: undefined, onValue: null };
    ws.on("message", (data) => {
      const message = JSON.parse(data.toString());
      if (message.type !== "Transition") return;
      for (const m of message.modifications) {
        if (m.type === "QueryUpdated" && m.queryId === 0) {
          sub.value = m.value;
          sub.onValue?.(m.value);
          resolve(sub);
        } else if (m.type === "QueryFailed") {
          reject(new Error(`subscription failed: ${m.errorMessage}`));
        }
      }
    });
    ws.on("open", () => {
      ws.send(JSON.stringify({ type: "Connect", sessionId: randomUUID(), connectionCount: 0, lastCloseReason: null, clientTs: Date.now() }));
      ws.send(JSON.stringify({
        type: "ModifyQuerySet", baseVersion: 0, newVersion: 1,
        modifications: [{ type: "Add", queryId: 0, udfPath: "counter:get", args: [{ name: "fan" }] }],
      }));
    });
    ws.on("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
    ws.on("error", reject);
  });
}

const server = await NimbusServer.start({ args: ["--max-connections-per-tenant", String(Math.max(10_000, HOT + 1))] });
const subs = [];
try {
  // Tenants, deployed four at a time.
  const names = Array.from({ length: TENANTS }, (_, i) => `sock${i}`);
  const urls = [];
  for (let i = 0; i < names.length; i += 4) {
    const batch = await Promise.all(names.slice(i, i + 4).map((name) => server.tenantWithApp(name)));
    urls.push(...batch.map((t) => t.url));
  }
  for (const url of urls) {
    const res = await callRaw(url, "query", "counter:get", { name: "fan" });
    if (res.body?.status !== "success") throw new Error(`warm-up query failed: ${res.text}`);
  }
  await sleep(2_000);
  const pid = server.proc.pid;
  const before = rssKib(pid);

  // Sockets: the hot tenant's first, then the rest round-robin over the others.
  const plan = [];
  for (let i = 0; i < HOT; i++) plan.push(0);
  for (let i = 0; i < SOCKETS - HOT; i++) plan.push(1 + (i % (TENANTS - 1)));
  const opened = Date.now();
  for (let i = 0; i < plan.length; i += OPEN_CONCURRENCY) {
    const batch = plan.slice(i, i + OPEN_CONCURRENCY).map((tenant, j) => {
      const n = i + j;
      const address = `127.0.0.${2 + Math.floor(n / PER_ADDRESS)}`;
      return withTimeout(subscribe(urls[tenant], address), 60_000, `socket ${n}`).then((sub) => {
        sub.tenant = tenant;
        return sub;
      });
    });
    subs.push(...(await Promise.all(batch)));
  }
  const openMs = Date.now() - opened;
  await sleep(5_000);
  const after = rssKib(pid);
  const perSocket = ((after - before) * 1024) / SOCKETS;
  console.log(`sockets: ${SOCKETS} (${HOT} on one tenant, the rest over ${TENANTS - 1}), opened and subscribed in ${openMs} ms`);
  console.log(`server VmRSS: ${(before / 1024).toFixed(1)} MiB before, ${(after / 1024).toFixed(1)} MiB after: ${(perSocket / 1024).toFixed(1)} KiB per socket`);

  // Fan-out: one commit at a time, timed until every hot subscriber has it.
  const hot = subs.filter((s) => s.tenant === 0);
  const allReached = [];
  const each = [];
  for (let c = 0; c < COMMITS; c++) {
    const sent = performance.now();
    let expected;
    let pending = hot.length;
    const reachedAll = new Promise((resolve) => {
      for (const s of hot) {
        s.onValue = (value) => {
          if (expected !== undefined && value === expected) {
            s.onValue = null;
            each.push(performance.now() - sent);
            if (--pending === 0) resolve(performance.now() - sent);
          }
        };
      }
    });
    const res = await callRaw(urls[0], "mutation", "counter:increment", { name: "fan" });
    if (res.body?.status !== "success") throw new Error(`increment failed: ${res.text}`);
    expected = res.body.value;
    // Updates that arrived before the acknowledgement told us the value.
    for (const s of hot) {
      if (s.onValue && s.value === expected) s.onValue(expected);
    }
    allReached.push(await withTimeout(reachedAll, 30_000, `commit ${c} reaching all ${hot.length} subscribers`));
    await sleep(200);
  }
  allReached.sort((a, b) => a - b);
  each.sort((a, b) => a - b);
  const f = (x) => x.toFixed(1);
  console.log(
    `one commit to all ${hot.length} subscribers of one query (${COMMITS} commits): p50 ${f(percentile(allReached, 50))} ms, p99 ${f(percentile(allReached, 99))} ms, max ${f(allReached[allReached.length - 1])} ms`,
  );
  console.log(`per subscriber (${each.length} deliveries): p50 ${f(percentile(each, 50))} ms, p99 ${f(percentile(each, 99))} ms`);
  console.log(`server VmRSS after the commits: ${(rssKib(pid) / 1024).toFixed(1)} MiB`);
} finally {
  for (const s of subs) s.ws.terminate();
  await server.cleanup();
}
