// Test harness for the Nimbus end-to-end suite.
//
// It builds nothing: it runs the `nimbus` binary named by NIMBUS_BIN (default
// `${CARGO_TARGET_DIR:-<repo>/target}/release/nimbus`), pushes Convex apps with the official
// `convex` CLI from ./node_modules, and talks to the server with `ConvexHttpClient` and raw
// `fetch`. Every wait is bounded, and every child process is killed when the test file ends
// (normally, by a signal, or even by SIGKILL of this process: see `spawnWatchdog`).

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import WebSocket from "ws";
import { anyApi } from "convex/server";

export const E2E_DIR = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(E2E_DIR, "../..");
/** The Convex app of the test suite. */
export const APP_DIR = path.join(E2E_DIR, "app");
/** The example app of the repository. */
export const POS_DIR = path.join(REPO_ROOT, "examples/pos");
/** Function references by name: `api.items.insert` is `items:insert`. */
export const api = anyApi;

export const CONVEX_CLI = path.join(E2E_DIR, "node_modules/convex/bin/main.js");
const WORK_DIR = path.join(E2E_DIR, ".work");
const HEALTH_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;
const DEPLOY_TIMEOUT_MS = 180_000;

/** The path of the nimbus binary under test. */
export function nimbusBin() {
  if (process.env.NIMBUS_BIN) {
    return path.resolve(process.env.NIMBUS_BIN);
  }
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(process.env.CARGO_TARGET_DIR)
    : path.join(REPO_ROOT, "target");
  return path.join(targetDir, "release/nimbus");
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `check` every `intervalMs` until it returns something other than undefined or false,
 * and returns that; throws after `timeoutMs`, naming `what` (a string, or a function giving
 * one then, so the message can say what was last seen).
 */
export async function eventually(what, check, timeoutMs = 10_000, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await check();
    if (got !== undefined && got !== false) return got;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`);
    }
    await sleep(intervalMs);
  }
}

/** Rejects with `what` timed out after `ms`; never leaves a timer behind. */
export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A TCP port that is free right now on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A random lowercase suffix for tenant names and markers. */
export function randomName(prefix) {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

// ---------------------------------------------------------------------------------------------
// Child processes: every one is registered here and killed on exit.

const liveChildren = new Set();

function killAllChildren() {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }
  liveChildren.clear();
}

process.on("exit", killAllChildren);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAllChildren();
    process.exit(128 + (os.constants.signals[signal] ?? 0));
  });
}

/**
 * Starts a small shell loop that SIGKILLs `pid` once this Node process is gone, so a server
 * never outlives a test run, even when the test runner kills this process with SIGKILL. The
 * loop ends by itself when `pid` exits.
 */
function spawnWatchdog(pid) {
  const script = `while kill -0 ${process.pid} 2>/dev/null && kill -0 ${pid} 2>/dev/null; do sleep 1; done; kill -9 ${pid} 2>/dev/null; exit 0`;
  try {
    const watchdog = spawn("sh", ["-c", script], { detached: true, stdio: "ignore" });
    watchdog.unref();
  } catch {
    // Without a watchdog the exit handlers above still apply.
  }
}

// ---------------------------------------------------------------------------------------------
// The server.

/** A `nimbus serve` process on 127.0.0.1 with its own data directory. */
export class NimbusServer {
  /**
   * Starts a server and waits until `GET /health` answers 200.
   * Options: `dataDir` (default: a new temporary directory, removed by `cleanup`),
   * `adminKey` (default: random), `args` (extra CLI arguments), `env` (extra environment).
   */
  static async start(options = {}) {
    const server = new NimbusServer(options);
    await server.launch();
    return server;
  }

  constructor({ dataDir, adminKey, args = [], env = {} } = {}) {
    this.ownsDataDir = dataDir === undefined;
    this.dataDir = dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-e2e-"));
    this.adminKey = adminKey ?? `test-admin-${randomBytes(16).toString("hex")}`;
    this.extraArgs = args;
    this.extraEnv = env;
    this.proc = null;
    this.port = null;
    this.exitPromise = null;
    this.exit = null;
    this.logPath = path.join(this.dataDir, "e2e-server.log");
    this.starts = 0;
  }

  /** `http://127.0.0.1:<port>` */
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The Convex deployment URL of a tenant (path-prefix form). */
  tenantUrl(name) {
    return `${this.url}/t/${name}`;
  }

  /** `<data-dir>/tenants/<name>.sqlite3` */
  tenantDbPath(name) {
    return path.join(this.dataDir, "tenants", `${name}.sqlite3`);
  }

  /** Starts the process (again, on the same data directory and port if restarting). */
  async launch() {
    if (this.proc !== null) {
      throw new Error("nimbus is already running");
    }
    const bin = nimbusBin();
    if (!fs.existsSync(bin)) {
      throw new Error(
        `nimbus binary not found at ${bin}: build it with \`cargo build --release -p nimbus\` or set NIMBUS_BIN`,
      );
    }
    // Keep the port across restarts so clients and tenant URLs stay valid; a fresh port
    // only for the first start.
    if (this.port === null) {
      this.port = await freePort();
    }
    this.starts += 1;
    const log = fs.openSync(this.logPath, "a");
    fs.writeSync(log, `\n===== start #${this.starts} on port ${this.port} at ${new Date().toISOString()}\n`);
    const args = [
      "serve",
      "--listen",
      `127.0.0.1:${this.port}`,
      "--data-dir",
      this.dataDir,
      ...this.extraArgs,
    ];
    const child = spawn(bin, args, {
      env: {
        ...process.env,
        RUST_BACKTRACE: "1",
        ...this.extraEnv,
        NIMBUS_ADMIN_KEY: this.adminKey,
      },
      stdio: ["ignore", log, log],
    });
    fs.closeSync(log);
    liveChildren.add(child);
    spawnWatchdog(child.pid);
    this.proc = child;
    this.exit = null;
    this.exitPromise = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        liveChildren.delete(child);
        this.exit = { code, signal };
        if (this.proc === child) {
          this.proc = null;
        }
        resolve({ code, signal });
      });
      child.once("error", (error) => {
        liveChildren.delete(child);
        this.exit = { code: null, signal: null, error };
        if (this.proc === child) {
          this.proc = null;
        }
        resolve(this.exit);
      });
    });
    await this.waitHealthy();
  }

  /** Polls `GET /health` until it answers 200 `{"status":"ok"}`. */
  async waitHealthy(timeoutMs = HEALTH_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    let last = "no answer";
    while (Date.now() < deadline) {
      if (this.exit !== null) {
        throw new Error(
          `nimbus exited during startup (${JSON.stringify(this.exit)}); log tail:\n${this.logTail()}`,
        );
      }
      try {
        const res = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(2_000) });
        const text = await res.text();
        if (res.status === 200) {
          const body = JSON.parse(text);
          if (body.status === "ok") {
            return;
          }
        }
        last = `${res.status} ${text}`;
      } catch (error) {
        last = String(error?.cause?.code ?? error);
      }
      await sleep(100);
    }
    throw new Error(`nimbus not healthy after ${timeoutMs} ms (last: ${last}); log tail:\n${this.logTail()}`);
  }

  /** Whether the process is running. */
  get running() {
    return this.proc !== null && this.exit === null;
  }

  /** Sends `signal` and waits for the exit; SIGKILL if it does not exit in time. */
  async stop(signal = "SIGTERM", timeoutMs = STOP_TIMEOUT_MS) {
    const child = this.proc;
    if (child === null) {
      return this.exit;
    }
    child.kill(signal);
    try {
      return await withTimeout(this.exitPromise, timeoutMs, `nimbus exit after ${signal}`);
    } catch {
      child.kill("SIGKILL");
      return await withTimeout(this.exitPromise, STOP_TIMEOUT_MS, "nimbus exit after SIGKILL");
    }
  }

  /** SIGKILL: no chance to flush or clean up. */
  async kill() {
    return await this.stop("SIGKILL");
  }

  /** Stops (SIGTERM by default) and starts again on the same data directory and port. */
  async restart(signal = "SIGTERM") {
    await this.stop(signal);
    await this.launch();
  }

  /** Stops the server and removes its data directory if the harness created it. */
  async cleanup() {
    await this.stop("SIGTERM");
    if (this.ownsDataDir && process.env.NIMBUS_E2E_KEEP_DATA === undefined) {
      fs.rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  /** The last lines of the server log (for failure messages). */
  logTail(lines = 40) {
    try {
      return fs.readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /** An admin API call with the instance admin key. Returns `{status, headers, body, text}`. */
  async admin(method, urlPath, body, { key = this.adminKey } = {}) {
    const headers = {};
    if (key !== null) {
      headers.authorization = `Bearer ${key}`;
    }
    if (body !== undefined) {
      headers["content-type"] = "application/json";
    }
    return await httpRequest(`${this.url}${urlPath}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  /** `POST /admin/tenants`; returns `{name, url, adminKey}` (throws unless 201). */
  async createTenant(name) {
    const res = await this.admin("POST", "/admin/tenants", { name });
    if (res.status !== 201) {
      throw new Error(`create tenant ${name}: ${res.status} ${res.text}`);
    }
    return res.body;
  }

  /** `DELETE /admin/tenants/<name>` (throws unless 204). */
  async deleteTenant(name) {
    const res = await this.admin("DELETE", `/admin/tenants/${name}`);
    if (res.status !== 204) {
      throw new Error(`delete tenant ${name}: ${res.status} ${res.text}`);
    }
  }

  /** Creates a tenant and pushes an app to it. Returns `{name, url, adminKey, client}`. */
  async tenantWithApp(name, appDir = APP_DIR) {
    const tenant = await this.createTenant(name);
    const url = this.tenantUrl(name);
    await deploy({ appDir, url, adminKey: tenant.adminKey, server: this });
    return { ...tenant, url, client: client(url) };
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers.

/** fetch with a timeout; parses JSON bodies. Returns `{status, headers, body, text}`. */
export async function httpRequest(url, { method = "GET", headers = {}, body, timeoutMs = 60_000 } = {}) {
  const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let parsed;
  try {
    parsed = text === "" ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/**
 * A function call as the npm client sends it, but with the raw response:
 * `POST <url>/api/<kind>` with `{path, format: "convex_encoded_json", args: [args]}`.
 * `kind` is `query`, `mutation`, `action` or `function`.
 */
export async function callRaw(url, kind, fnPath, args = {}, { timeoutMs = 60_000, headers = {} } = {}) {
  return await httpRequest(`${url}/api/${kind}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ path: fnPath, format: "convex_encoded_json", args: [args] }),
    timeoutMs,
  });
}

/** Sends a raw body (string or Buffer) to `<url>/api/<kind>`. */
export async function postRaw(url, kind, body, { timeoutMs = 60_000, headers = {} } = {}) {
  return await httpRequest(`${url}/api/${kind}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
    timeoutMs,
  });
}

/**
 * POSTs a large body with node:http and resolves with the response even when the server
 * answers (e.g. 413) and closes the connection before the whole body was sent.
 * Returns `{status, body, text}`.
 */
export function postLarge(url, body, { timeoutMs = 60_000, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    let settled = false;
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: "POST",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers },
        timeout: timeoutMs,
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          settled = true;
          let parsed;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          resolve({ status: res.statusCode, body: parsed, text });
        });
        res.on("error", (error) => {
          if (!settled) {
            settled = true;
            reject(error);
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`POST ${url}: timed out after ${timeoutMs} ms`)));
    req.on("error", (error) => {
      // EPIPE/ECONNRESET while still writing: wait briefly for the early response.
      setTimeout(() => {
        if (!settled) {
          settled = true;
          reject(error);
        }
      }, 2_000);
    });
    req.end(body);
  });
}

/**
 * A `ConvexHttpClient` for a tenant URL that does not print function logs and gives up on a
 * request after `timeoutMs`.
 */
export function client(url, { timeoutMs = 120_000 } = {}) {
  const fetchWithTimeout = (input, init = {}) =>
    fetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(timeoutMs) });
  return new ConvexHttpClient(url, { logger: false, fetch: fetchWithTimeout });
}

/** The npm `ConvexClient` (the sync socket) for a tenant URL, quiet, over `ws`. */
export function socketClient(url) {
  return new ConvexClient(url, {
    webSocketConstructor: WebSocket,
    skipConvexDeploymentUrlCheck: true,
    unsavedChangesWarning: false,
    logger: false,
  });
}

/**
 * Times `resilience:calibrate` and returns the iteration count that spins about
 * `targetMs` on this machine (the runtime's clock is frozen inside a call, so a duration
 * cannot be spun directly).
 */
export async function calibrateSpin(url, targetMs) {
  let iterations = 2_000_000;
  for (let attempt = 0; attempt < 4; attempt++) {
    const started = performance.now();
    const res = await callRaw(url, "query", "resilience:calibrate", { iterations });
    const ms = performance.now() - started;
    if (res.body?.status !== "success") {
      throw new Error(`calibration call failed: ${res.text}`);
    }
    if (ms >= 150) {
      return Math.ceil((iterations * targetMs) / ms);
    }
    iterations *= 4;
  }
  throw new Error("could not calibrate the spin loop");
}

// ---------------------------------------------------------------------------------------------
// Pushing code with the official CLI.

/**
 * Runs `convex deploy --yes` (the CLI from this project's node_modules) in `appDir` against a
 * self-hosted URL. Resolves to `{code, stdout, stderr, output}`; with `expectSuccess` (the
 * default) a non-zero exit throws an error that includes the CLI output and the server log.
 */
export async function deploy({
  appDir,
  url,
  adminKey,
  server,
  args = [],
  expectSuccess = true,
  timeoutMs = DEPLOY_TIMEOUT_MS,
}) {
  const envFile = path.join(appDir, ".env.local");
  if (fs.existsSync(envFile) && /CONVEX_DEPLOYMENT\s*=/.test(fs.readFileSync(envFile, "utf8"))) {
    throw new Error(`${envFile} sets CONVEX_DEPLOYMENT, which conflicts with a self-hosted push: remove it`);
  }
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith("CONVEX_")) {
      delete env[name];
    }
  }
  Object.assign(env, {
    CONVEX_SELF_HOSTED_URL: url,
    CONVEX_SELF_HOSTED_ADMIN_KEY: adminKey,
    NO_COLOR: "1",
    FORCE_COLOR: "0",
    CI: "1",
  });
  const cliArgs = [CONVEX_CLI, "deploy", "--yes", "--typecheck", "disable", ...args];
  const child = spawn(process.execPath, cliArgs, { cwd: appDir, env, stdio: ["ignore", "pipe", "pipe"] });
  liveChildren.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
  });
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    child.once("error", (error) => resolve({ code: null, signal: null, error }));
  });
  let result;
  try {
    result = await withTimeout(exited, timeoutMs, `convex deploy in ${appDir}`);
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`${error.message}\n--- stdout\n${stdout}\n--- stderr\n${stderr}`);
  } finally {
    liveChildren.delete(child);
  }
  const output = `${stdout}\n${stderr}`;
  const outcome = { code: result.code, signal: result.signal, stdout, stderr, output };
  if (expectSuccess && result.code !== 0) {
    const log = server ? `\n--- server log\n${server.logTail()}` : "";
    throw new Error(
      `convex deploy failed (exit ${result.code}, signal ${result.signal}) for ${url}\n--- stdout\n${stdout}\n--- stderr\n${stderr}${log}`,
    );
  }
  return outcome;
}

/**
 * Copies an app directory (without node_modules) under tests/e2e/.work/, applies `edits`
 * (`{"convex/file.ts": "new contents" | null to delete | (old) => new}`), and returns the new
 * directory. Imports of `convex` resolve to tests/e2e/node_modules from there.
 */
export function makeAppVariant(baseDir, name, edits = {}) {
  fs.mkdirSync(WORK_DIR, { recursive: true });
  const dir = path.join(WORK_DIR, `${name}-${process.pid}-${randomBytes(3).toString("hex")}`);
  fs.cpSync(baseDir, dir, {
    recursive: true,
    filter: (src) => !src.split(path.sep).includes("node_modules"),
  });
  for (const [file, edit] of Object.entries(edits)) {
    const target = path.join(dir, file);
    if (edit === null) {
      fs.rmSync(target, { force: true });
    } else if (typeof edit === "function") {
      fs.writeFileSync(target, edit(fs.readFileSync(target, "utf8")));
    } else {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, edit);
    }
  }
  return dir;
}

/** Removes a directory made by `makeAppVariant`. */
export function removeAppVariant(dir) {
  if (path.dirname(dir) === WORK_DIR) {
    fs.rmSync(dir, { recursive: true, force: true });
    try {
      fs.rmdirSync(WORK_DIR); // only when no other variant is left
    } catch {
      // Not empty, or already gone.
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Assertion helpers.

/** Asserts a function error response: HTTP 200, `status: "error"` and the given errorCode. */
export function expectFunctionError(assert, res, errorCode) {
  assert.equal(res.status, 200, `expected HTTP 200 for a function error, got ${res.status}: ${res.text}`);
  assert.equal(res.body?.status, "error", `expected status "error": ${res.text}`);
  assert.equal(typeof res.body.errorMessage, "string", `errorMessage must be a string: ${res.text}`);
  assert.equal(res.body.errorCode, errorCode, `expected errorCode ${errorCode}: ${res.text}`);
}

/** Asserts a request error response: the HTTP status and `{code, message}`. */
export function expectRequestError(assert, res, status, code) {
  assert.equal(res.status, status, `expected HTTP ${status} ${code}, got ${res.status}: ${res.text}`);
  assert.equal(res.body?.code, code, `expected code ${code}: ${res.text}`);
  assert.equal(typeof res.body.message, "string", `message must be a string: ${res.text}`);
}

/** Asserts a successful function response and returns its (convex-JSON) value. */
export function expectSuccess(assert, res) {
  assert.equal(res.status, 200, `expected HTTP 200, got ${res.status}: ${res.text}`);
  assert.equal(res.body?.status, "success", `expected status "success": ${res.text}`);
  return res.body.value;
}

/** Runs `fn` and returns the error it throws (fails if it does not throw). */
export async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to fail, but it succeeded");
}
