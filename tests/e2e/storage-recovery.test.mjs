// A tenant recovers from a full disk without a restart.
//
// The server's data directory is on a small tmpfs (needs root for `mount`; the tests skip
// with a message when mounting is impossible). A filler file takes almost all of its space,
// then `notes:add` mutations of ~10 KiB each are written until the disk is full. Meanwhile:
// failed writes answer 503 `TenantUnavailable`, queries of that tenant and of another tenant
// keep working, and `GET /admin/tenants/<t>/stats` shows `storage.state` other than "ok".
// After the filler is deleted, writes succeed again within seconds, in the same process,
// `storage.state` is "ok" again, and every acknowledged write is there.
// `POST /admin/tenants/<t>/reopen` answers 200 with the storage state.
//
// The server log is written outside the tmpfs, so a full disk cannot break logging.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { NimbusServer, api, callRaw, expectSuccess, sleep } from "./harness.mjs";

const TMPFS_SIZE = "40m";
const LEAVE_FREE = 1.5 * 1024 * 1024; // bytes left free after the filler
const NOTE_TEXT = "x".repeat(10 * 1024);
const MAX_WRITES = 4_000; // a bound: 40 MiB of notes cannot fit in a 40 MiB file system
const FILL_DEADLINE_MS = 90_000;
const RECOVERY_MS = 10_000;
const OWNER = "filler-test";

/** Mounts a tmpfs on a new directory; returns it, or throws with the reason. */
function mountTmpfs() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-e2e-tmpfs-"));
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${TMPFS_SIZE}`, "tmpfs", dir], { stdio: "pipe" });
  } catch (error) {
    fs.rmdirSync(dir);
    throw new Error(`cannot mount a tmpfs (root needed): ${String(error.stderr ?? error.message).trim()}`);
  }
  return dir;
}

/** Unmounts (lazily if busy) and removes the mount point; never throws. */
function unmountTmpfs(dir) {
  for (const args of [[dir], ["-l", dir]]) {
    try {
      execFileSync("umount", args, { stdio: "pipe" });
      break;
    } catch {
      // Busy or already gone: try the lazy form, then give up.
    }
  }
  try {
    fs.rmdirSync(dir);
  } catch {
    // Still mounted or already removed.
  }
}

/** Free bytes for an unprivileged writer on the file system holding `dir`. */
function freeBytes(dir) {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

/** The server log's WARN and ERROR lines (without colour codes), for failure messages. */
function logProblems(server, lines = 10) {
  try {
    return fs
      .readFileSync(server.logPath, "utf8")
      .replace(/\x1b\[[0-9;]*m/g, "")
      .split("\n")
      .filter((line) => / (WARN|ERROR) /.test(line))
      .slice(-lines)
      .join("\n");
  } catch {
    return "(no log)";
  }
}

describe("a tenant recovers from a full disk without a restart", () => {
  let mountDir = null;
  let skipReason = null;
  let logDir;
  let server;
  let url;
  let otherUrl;
  let fillerPath;
  let pid;
  const acked = []; // ids of acknowledged notes
  const failures = []; // answers of failed writes
  let fullAt = null; // acknowledged writes before the first failure

  // A last resort if the process dies without running `after`.
  const emergencyUnmount = () => mountDir !== null && unmountTmpfs(mountDir);

  before(
    async () => {
      try {
        mountDir = mountTmpfs();
      } catch (error) {
        skipReason = error.message;
        return;
      }
      process.once("exit", emergencyUnmount);
      logDir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-e2e-log-"));
      const dataDir = path.join(mountDir, "data");
      fs.mkdirSync(dataDir);
      // With the shared journal: a round that fails on a full disk is undone, and appends
      // go on once there is room (without it, the tenant's own file fails and recovers).
      server = new NimbusServer({ dataDir, args: ["--journal"] });
      server.logPath = path.join(logDir, "e2e-server.log");
      await server.launch();
      ({ url } = await server.tenantWithApp("disk"));
      ({ url: otherUrl } = await server.tenantWithApp("bystander"));
      expectSuccess(assert, await callRaw(otherUrl, "mutation", "counter:increment", { name: "b" }));
      expectSuccess(assert, await callRaw(url, "mutation", "notes:add", { owner: OWNER, text: "first" }));
      pid = server.proc.pid;
      fillerPath = path.join(mountDir, "filler");
    },
    { timeout: 240_000 },
  );

  after(async () => {
    await server?.stop();
    if (mountDir !== null) {
      unmountTmpfs(mountDir);
      process.removeListener("exit", emergencyUnmount);
      mountDir = null;
    }
    if (logDir !== undefined && process.env.NIMBUS_E2E_KEEP_DATA === undefined) {
      fs.rmSync(logDir, { recursive: true, force: true });
    }
  });

  async function addNote(text = NOTE_TEXT) {
    return await callRaw(url, "mutation", "notes:add", { owner: OWNER, text }, { timeoutMs: 30_000 });
  }

  async function storageStats(tenant) {
    const res = await server.admin("GET", `/admin/tenants/${tenant}/stats`);
    assert.equal(res.status, 200, res.text);
    return res.body.storage;
  }

  test("with the disk full, writes fail with 503 TenantUnavailable and reads keep working", { timeout: 150_000 }, async (t) => {
    if (skipReason !== null) {
      t.skip(skipReason);
      return;
    }
    const free = freeBytes(mountDir);
    fs.writeFileSync(fillerPath, Buffer.alloc(Math.max(0, free - LEAVE_FREE)));
    t.diagnostic(`free before the filler: ${free} bytes; after: ${freeBytes(mountDir)} bytes`);

    // Write until the first failure, then a few more to see that failures are steady.
    const deadline = Date.now() + FILL_DEADLINE_MS;
    for (let i = 0; i < MAX_WRITES && Date.now() < deadline; i++) {
      const res = await addNote();
      if (res.status === 200 && res.body?.status === "success") {
        acked.push(res.body.value); // (a success between failures is allowed: it must be kept)
      } else {
        failures.push({ status: res.status, code: res.body?.code, body: res.text.slice(0, 300) });
        fullAt ??= acked.length;
        if (failures.length >= 5) {
          break;
        }
      }
    }
    t.diagnostic(`acknowledged writes: ${acked.length}; failed answers: ${JSON.stringify(failures)}`);
    assert.ok(fullAt !== null, `the disk never filled after ${acked.length} writes`);

    for (const failure of failures) {
      assert.equal(failure.status, 503, `a failed write must answer 503 TenantUnavailable: ${JSON.stringify(failure)}\nserver log warnings and errors:\n${logProblems(server)}`);
      assert.equal(failure.code, "TenantUnavailable", JSON.stringify(failure));
    }

    // Reads of this tenant and of another one keep working.
    const note = expectSuccess(assert, await callRaw(url, "query", "notes:get", { id: acked[acked.length - 1] }));
    assert.equal(note?.text, NOTE_TEXT);
    assert.equal(expectSuccess(assert, await callRaw(otherUrl, "query", "counter:get", { name: "b" })), 1);
  });

  test("stats show the failed storage", async (t) => {
    if (skipReason !== null) {
      t.skip(skipReason);
      return;
    }
    assert.ok(fullAt !== null, "needs the disk-full test to have filled the disk");
    const storage = await storageStats("disk");
    t.diagnostic(`storage stats while full: ${JSON.stringify(storage)}`);
    assert.equal(typeof storage, "object", "stats must have a `storage` object");
    assert.ok(["failed", "recovering"].includes(storage?.state), `storage.state while full: ${JSON.stringify(storage)}`);
    assert.equal(typeof storage.lastError, "string", `storage.lastError while full: ${JSON.stringify(storage)}`);
  });

  test("after the filler is deleted, writes succeed again in the same process", { timeout: 60_000 }, async (t) => {
    if (skipReason !== null) {
      t.skip(skipReason);
      return;
    }
    fs.rmSync(fillerPath, { force: true });
    const freedAt = Date.now();
    const answers = [];
    let recoveredAfterMs = null;
    while (Date.now() - freedAt < RECOVERY_MS) {
      const res = await addNote("after recovery");
      if (res.status === 200 && res.body?.status === "success") {
        acked.push(res.body.value);
        recoveredAfterMs = Date.now() - freedAt;
        break;
      }
      answers.push(`${res.status} ${res.body?.code ?? res.text.slice(0, 100)}`);
      await sleep(250);
    }
    t.diagnostic(`answers while recovering: ${JSON.stringify([...new Set(answers)])}; recovered after ${recoveredAfterMs} ms`);
    assert.ok(
      recoveredAfterMs !== null,
      `writes still fail ${RECOVERY_MS} ms after the space was freed (last: ${answers[answers.length - 1]})\nserver log warnings and errors:\n${logProblems(server)}`,
    );
    // More writes, to be sure it is not a fluke.
    for (let i = 0; i < 20; i++) {
      acked.push(expectSuccess(assert, await addNote()));
    }
    assert.equal(server.proc?.pid, pid, "the server must not have been restarted");
    assert.equal(server.starts, 1);
    const storage = await storageStats("disk");
    assert.equal(storage?.state, "ok", `storage stats after recovery: ${JSON.stringify(storage)}`);
  });

  test("every acknowledged write is there", async (t) => {
    if (skipReason !== null) {
      t.skip(skipReason);
      return;
    }
    const rows = expectSuccess(assert, await callRaw(url, "query", "notes:byOwner", { owner: OWNER }, { timeoutMs: 60_000 }));
    const stored = new Set(rows.map((row) => row._id));
    const lost = acked.filter((id) => !stored.has(id));
    assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged notes are missing`);
  });

  test("POST /admin/tenants/<t>/reopen answers 200 with the storage state", async (t) => {
    if (skipReason !== null) {
      t.skip(skipReason);
      return;
    }
    for (const tenant of ["bystander", "disk"]) {
      const res = await server.admin("POST", `/admin/tenants/${tenant}/reopen`);
      assert.equal(res.status, 200, `reopen ${tenant}: ${res.status} ${res.text}`);
      const state = res.body?.storage?.state ?? res.body?.state;
      assert.equal(state, "ok", `reopen ${tenant} must report the storage state: ${res.text}`);
    }
    // Both tenants still serve reads and writes afterwards.
    expectSuccess(assert, await addNote("after reopen"));
    assert.equal(expectSuccess(assert, await callRaw(otherUrl, "mutation", "counter:increment", { name: "b" })), 2);
    assert.equal(server.proc?.pid, pid, "reopen must not restart the server");
  });
});
