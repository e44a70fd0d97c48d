// The official CLI's everyday commands against a tenant (issue 17): `npx convex data`,
// `data <table> --limit 2`, `function-spec`, `env list` and `env get` read the tenant
// through `_system/cli/*` queries (answered natively, to the tenant admin only), and the
// commands for features Nimbus does not have yet (`export`, `import`, `env set`) fail at
// once with a message that says so, instead of retrying a 404 for half a minute.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { APP_DIR, CONVEX_CLI, NimbusServer, callRaw, withTimeout } from "./harness.mjs";

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

  test("npx convex env set fails at once, saying environment variables are not supported", { timeout: 60_000 }, async () => {
    const { code, output } = await cli(["env", "set", "API_KEY", "secret-value"]);
    assert.notEqual(code, 0, output);
    assert.match(output, /Nimbus does not support setting environment variables/, output);
  });
});
