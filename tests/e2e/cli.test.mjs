// The official CLI's everyday commands against a tenant (issue 17): `npx convex data`,
// `data <table> --limit 2`, `function-spec`, `env list` and `env get` read the tenant
// through `_system/cli/*` queries (answered natively, to the tenant admin only); the
// commands for features Nimbus does not have yet (`export`, `import`) fail at once with a
// message that says so, instead of retrying a 404 for half a minute; and environment
// variables (`env set|get|list|remove`, issue 15) reach `process.env` without a push.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { ConvexClient } from "convex/browser";
import { APP_DIR, CONVEX_CLI, NimbusServer, callRaw, deploy, httpRequest, withTimeout } from "./harness.mjs";

// Far below the CLI's own retrying of a 404 (it gave up after about a minute), so a
// regression to retries fails here rather than passing slowly.
const CLI_LIMIT_MS = 30_000;

let server;
let tenant;
let scratch;

before(
  async () => {
    server = await NimbusServer.start();
    tenant = await server.tenantWithApp("cli");
    for (const text of ["first", "second", "third"]) {
      const res = await callRaw(tenant.url, "mutation", "notes:add", { owner: "cli", text });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.status, "success", res.text);
    }
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-cli-"));
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

/** Runs the official CLI against the tenant; resolves to `{code, output}`. */
async function cli(args) {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith("CONVEX_")) delete env[name];
  }
  Object.assign(env, {
    CONVEX_SELF_HOSTED_URL: tenant.url,
    CONVEX_SELF_HOSTED_ADMIN_KEY: tenant.adminKey,
    NO_COLOR: "1",
    CI: "1",
  });
  const child = spawn(process.execPath, [CONVEX_CLI, ...args], { cwd: APP_DIR, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  try {
    const code = await withTimeout(exited, CLI_LIMIT_MS, `convex ${args.join(" ")}`);
    return { code, output };
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`${error.message}\n--- output\n${output}`);
  }
}

describe("CLI commands that read the tenant", () => {
  test("npx convex data lists the tables", { timeout: 60_000 }, async () => {
    const { code, output } = await cli(["data"]);
    assert.equal(code, 0, output);
    const lines = output.split("\n").map((l) => l.trim());
    assert.ok(lines.includes("notes"), output);
    assert.ok(!lines.some((l) => l.startsWith("_")), `no system table listed:\n${output}`);
  });

  test("npx convex data notes --limit 2 shows the two newest documents", { timeout: 60_000 }, async () => {
    const { code, output } = await cli(["data", "notes", "--limit", "2", "--format", "jsonLines"]);
    assert.equal(code, 0, output);
    const docs = output
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      docs.map((d) => d.text),
      ["third", "second"],
      output,
    );
    assert.ok(docs.every((d) => typeof d._id === "string" && typeof d._creationTime === "number"), output);
    const table = await cli(["data", "notes", "--limit", "2"]);
    assert.equal(table.code, 0, table.output);
    assert.match(table.output, /Showing the 2 most recently created documents/, table.output);
    const missing = await cli(["data", "no_such_table"]);
    assert.equal(missing.code, 0, missing.output);
    assert.match(missing.output, /There are no documents in this table/, missing.output);
  });

  test("npx convex function-spec lists every function with its validators", { timeout: 60_000 }, async () => {
    const { code, output } = await cli(["function-spec"]);
    assert.equal(code, 0, output);
    const spec = JSON.parse(output.slice(output.indexOf("{")));
    assert.equal(spec.url, tenant.url);
    const add = spec.functions.find((f) => f.identifier === "notes.js:add");
    assert.ok(add, output);
    assert.equal(add.functionType, "Mutation");
    assert.deepEqual(add.visibility, { kind: "public" });
    assert.equal(JSON.parse(add.args).value.owner.fieldType.type, "string");
    assert.ok(spec.functions.some((f) => f.functionType === "Query"), output);
  });

  test("npx convex env list and env get: no environment variables", { timeout: 60_000 }, async () => {
    const list = await cli(["env", "list"]);
    assert.equal(list.code, 0, list.output);
    assert.match(list.output, /No environment variables set/, list.output);
    // The CLI reports a missing variable but exits 0.
    const get = await cli(["env", "get", "API_KEY"]);
    assert.match(get.output, /Environment variable "API_KEY" not found/, get.output);
  });

  test("system queries answer the tenant admin only", async () => {
    const call = (headers) =>
      callRaw(tenant.url, "query", "_system/cli/tables", { paginationOpts: { cursor: null, numItems: 10 } }, { headers });
    const anonymous = await call({});
    assert.equal(anonymous.body.status, "error", anonymous.text);
    assert.match(anonymous.body.errorMessage, /Could not find public function for '_system\/cli\/tables:default'/);
    const admin = await call({ authorization: `Convex ${tenant.adminKey}` });
    assert.equal(admin.body.status, "success", admin.text);
    assert.ok(admin.body.value.page.some((t) => t.name === "notes"), admin.text);
    const asMutation = await callRaw(tenant.url, "mutation", "_system/cli/tables", {}, { headers: { authorization: `Convex ${tenant.adminKey}` } });
    assert.equal(asMutation.body.status, "error", asMutation.text);
    assert.match(asMutation.body.errorMessage, /defined as query/, asMutation.text);
    const badArgs = await callRaw(tenant.url, "query", "_system/cli/tableData", { table: 7 }, { headers: { authorization: `Convex ${tenant.adminKey}` } });
    assert.equal(badArgs.body.status, "error", badArgs.text);
    assert.match(badArgs.body.errorMessage, /`table` must be a string/, badArgs.text);
  });
});

describe("CLI commands for features Nimbus does not have yet", () => {
  test("npx convex export fails at once, saying export is not supported", { timeout: 60_000 }, async () => {
    const { code, output } = await cli(["export", "--path", path.join(scratch, "export.zip")]);
    assert.notEqual(code, 0, output);
    assert.match(output, /Nimbus does not support snapshot export/, output);
    assert.ok(!fs.existsSync(path.join(scratch, "export.zip")));
  });

  test("npx convex import fails at once, saying import is not supported", { timeout: 60_000 }, async () => {
    const file = path.join(scratch, "notes.jsonl");
    fs.writeFileSync(file, '{"owner": "cli", "text": "imported"}\n');
    const { code, output } = await cli(["import", "--table", "notes", "--append", "-y", file]);
    assert.notEqual(code, 0, output);
    assert.match(output, /Nimbus does not support snapshot import/, output);
  });

});

describe("environment variables (issue 15)", () => {
  const value = async (kind, name) => {
    const res = await callRaw(tenant.url, kind, `env:${kind === "query" ? "get" : "read"}`, { name });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.status, "success", res.text);
    return res.body.value;
  };

  test("npx convex env set makes process.env.KEY visible in the next call, without a push", { timeout: 60_000 }, async () => {
    assert.equal(await value("query", "API_KEY"), null);
    const set = await cli(["env", "set", "API_KEY", "secret-value"]);
    assert.equal(set.code, 0, set.output);
    assert.match(set.output, /Successfully set API_KEY/, set.output);
    assert.equal(await value("query", "API_KEY"), "secret-value");
    assert.equal(await value("mutation", "API_KEY"), "secret-value");
    const fromAction = await callRaw(tenant.url, "action", "actions:envOf", { name: "API_KEY" });
    assert.equal(fromAction.body?.value, "secret-value", fromAction.text);

    // `NAME=value` syntax, and a value with spaces and an equals sign.
    const again = await cli(["env", "set", "API_KEY=second value = 2"]);
    assert.equal(again.code, 0, again.output);
    assert.equal(await value("query", "API_KEY"), "second value = 2");
    assert.equal(await value("mutation", "API_KEY"), "second value = 2");
  });

  test("a live query that reads process.env is re-run when a variable changes", { timeout: 60_000 }, async () => {
    const live = new ConvexClient(tenant.url, {
      webSocketConstructor: WebSocket,
      skipConvexDeploymentUrlCheck: true,
      unsavedChangesWarning: false,
      logger: false,
    });
    const seen = [];
    let wake = () => {};
    live.onUpdate("env:get", { name: "LIVE_KEY" }, (v) => {
      seen.push(v);
      wake();
    });
    const until = (want) =>
      withTimeout(
        new Promise((resolve) => {
          wake = () => seen.at(-1) === want && resolve();
          wake();
        }),
        20_000,
        `the subscription showing ${JSON.stringify(want)} (seen ${JSON.stringify(seen)})`,
      );
    try {
      await until(null);
      const set = await cli(["env", "set", "LIVE_KEY", "live-1"]);
      assert.equal(set.code, 0, set.output);
      await until("live-1");
      const removed = await cli(["env", "remove", "LIVE_KEY"]);
      assert.equal(removed.code, 0, removed.output);
      await until(null);
    } finally {
      await live.close();
    }
  });

  test("npx convex env list and env get show what is set", { timeout: 60_000 }, async () => {
    const set = await cli(["env", "set", "OTHER_KEY", "x1"]);
    assert.equal(set.code, 0, set.output);
    const list = await cli(["env", "list"]);
    assert.equal(list.code, 0, list.output);
    const lines = list.output.split("\n").map((l) => l.trim());
    assert.ok(lines.includes("OTHER_KEY=x1"), list.output);
    assert.ok(lines.some((l) => l.startsWith("API_KEY=")), list.output);
    const get = await cli(["env", "get", "OTHER_KEY"]);
    assert.equal(get.code, 0, get.output);
    assert.equal(get.output.trim(), "x1");
  });

  test("variables survive a push and a restart, and env remove unsets one", { timeout: 180_000 }, async () => {
    await deploy({ appDir: APP_DIR, url: tenant.url, adminKey: tenant.adminKey, server });
    assert.equal(await value("query", "OTHER_KEY"), "x1");
    await server.restart();
    assert.equal(await value("query", "OTHER_KEY"), "x1");
    assert.equal(await value("mutation", "API_KEY"), "second value = 2");
    const removed = await cli(["env", "remove", "OTHER_KEY"]);
    assert.equal(removed.code, 0, removed.output);
    assert.match(removed.output, /Successfully unset OTHER_KEY/, removed.output);
    assert.equal(await value("query", "OTHER_KEY"), null);
    const get = await cli(["env", "get", "OTHER_KEY"]);
    assert.match(get.output, /Environment variable "OTHER_KEY" not found/, get.output);
  });

  test("bad names, values over the limit and calls without the admin key are refused", { timeout: 60_000 }, async () => {
    const bad = await cli(["env", "set", "1BAD", "x"]);
    assert.notEqual(bad.code, 0, bad.output);
    assert.match(bad.output, /invalid environment variable name "1BAD"/, bad.output);
    const update = (body, headers = { authorization: `Convex ${tenant.adminKey}` }) =>
      httpRequest(`${tenant.url}/api/update_environment_variables`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
    const big = await update({ changes: [{ name: "BIG", value: "v".repeat(8 * 1024 + 1) }] });
    assert.equal(big.status, 400, big.text);
    assert.equal(big.body.code, "InvalidEnvironmentVariable", big.text);
    assert.match(big.body.message, /at most 8192 bytes/, big.text);
    // One bad change refuses the whole request: nothing of it is applied.
    const mixed = await update({ changes: [{ name: "GOOD", value: "1" }, { name: "bad-name", value: "2" }] });
    assert.equal(mixed.status, 400, mixed.text);
    assert.equal(await value("query", "GOOD"), null);
    const shape = await update({ changes: [{ name: "GOOD", value: 7 }] });
    assert.equal(shape.status, 400, shape.text);
    assert.equal(shape.body.code, "BadJsonInput", shape.text);
    const anonymous = await update({ changes: [{ name: "GOOD", value: "1" }] }, {});
    assert.equal(anonymous.status, 401, anonymous.text);
    assert.equal(await value("query", "GOOD"), null);
  });
});
