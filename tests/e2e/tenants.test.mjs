// Multi-tenancy: the admin API, two tenants with the same tables that never see each other's
// data, foreign IDs, and tenant deletion (SQLite file gone, URL answers 404 TenantNotFound).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import {
  APP_DIR,
  NimbusServer,
  api,
  callRaw,
  client,
  deploy,
  expectFunctionError,
  expectRequestError,
  expectSuccess,
  httpRequest,
  sleep,
} from "./harness.mjs";

let server;
let acme;
let globex;

before(
  async () => {
    server = await NimbusServer.start();
  },
  { timeout: 120_000 },
);

after(async () => {
  await server?.cleanup();
});

describe("admin API", () => {
  test("requires the instance admin key", async () => {
    expectRequestError(assert, await server.admin("GET", "/admin/tenants", undefined, { key: null }), 401, "Unauthenticated");
    expectRequestError(assert, await server.admin("GET", "/admin/tenants", undefined, { key: "wrong" }), 401, "Unauthenticated");
    expectRequestError(assert, await server.admin("POST", "/admin/tenants", { name: "sneaky" }, { key: "wrong" }), 401, "Unauthenticated");
  });

  test("rejects bad tenant names", async () => {
    for (const name of ["Acme", "1acme", "acme_corp", "", "a".repeat(64), "-acme"]) {
      expectRequestError(assert, await server.admin("POST", "/admin/tenants", { name }), 400, "InvalidTenantName");
    }
  });

  test("rejects a body that is not JSON", async () => {
    const res = await httpRequest(`${server.url}/admin/tenants`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.adminKey}`, "content-type": "application/json" },
      body: "{name:",
    });
    expectRequestError(assert, res, 400, "BadJsonInput");
  });

  test("creates, lists and describes tenants", { timeout: 240_000 }, async () => {
    const res = await server.admin("POST", "/admin/tenants", { name: "acme" });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.body.name, "acme");
    assert.equal(typeof res.body.url, "string");
    assert.match(res.body.url, /acme/);
    assert.match(res.body.adminKey, /^acme\|.+/);
    acme = { ...res.body, url: server.tenantUrl("acme") };
    expectRequestError(assert, await server.admin("POST", "/admin/tenants", { name: "acme" }), 409, "TenantExists");

    globex = { ...(await server.createTenant("globex")), url: server.tenantUrl("globex") };
    assert.notEqual(globex.adminKey, acme.adminKey);

    const list = await server.admin("GET", "/admin/tenants");
    assert.equal(list.status, 200, list.text);
    const names = list.body.tenants.map((t) => t.name).sort();
    assert.deepEqual(names, ["acme", "globex"]);
    for (const t of list.body.tenants) {
      assert.equal(typeof t.url, "string");
      assert.notEqual(t.createdAt, undefined);
    }
    const one = await server.admin("GET", "/admin/tenants/acme");
    assert.equal(one.status, 200, one.text);
    assert.equal(one.body.name, "acme");
    expectRequestError(assert, await server.admin("GET", "/admin/tenants/nope"), 404, "TenantNotFound");
    expectRequestError(assert, await server.admin("DELETE", "/admin/tenants/nope"), 404, "TenantNotFound");

    await deploy({ appDir: APP_DIR, url: acme.url, adminKey: acme.adminKey, server });
    await deploy({ appDir: APP_DIR, url: globex.url, adminKey: globex.adminKey, server });
  });

  test("unknown routes and tenants", async () => {
    expectRequestError(assert, await httpRequest(`${server.url}/no/such/route`), 404, "NotFound");
    expectRequestError(assert, await callRaw(server.tenantUrl("nope"), "query", "limits:ping", {}), 404, "TenantNotFound");
  });

  test("a tenant admin key is refused on another tenant, a wrong one everywhere", async () => {
    const configHashes = async (tenantName, key) =>
      await httpRequest(`${server.tenantUrl(tenantName)}/api/get_config_hashes`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Convex ${key}` },
        body: JSON.stringify({ version: "1.48.0", adminKey: key }),
      });
    const own = await configHashes("acme", acme.adminKey);
    assert.equal(own.status, 200, own.text);
    expectRequestError(assert, await configHashes("globex", acme.adminKey), 403, "Forbidden");
    expectRequestError(assert, await configHashes("acme", `acme|${"f".repeat(32)}`), 401, "Unauthenticated");
  });
});

describe("isolation", () => {
  let acmeNote;
  let acmeItem;

  test("same table names, separate data", async () => {
    const a = client(acme.url);
    const g = client(globex.url);
    acmeNote = await a.mutation(api.notes.add, { owner: "shared-name", text: "acme secret" });
    await g.mutation(api.notes.add, { owner: "shared-name", text: "globex secret" });
    acmeItem = await a.mutation(api.items.insert, { group: "g", n: 1, name: "acme item" });
    assert.deepEqual((await a.query(api.notes.list, {})).map((n) => n.text), ["acme secret"]);
    assert.deepEqual((await g.query(api.notes.list, {})).map((n) => n.text), ["globex secret"]);
    assert.deepEqual((await g.query(api.notes.byOwner, { owner: "shared-name" })).map((n) => n.text), ["globex secret"]);
    assert.deepEqual(await g.query(api.items.all, {}), []);
    assert.equal((await a.query(api.items.all, {})).length, 1);
  });

  test("an ID of tenant A is not found or invalid in tenant B", async () => {
    const g = client(globex.url);
    assert.equal(await g.query(api.notes.getLoose, { id: acmeNote }), null);
    assert.equal(await g.query(api.items.getLoose, { id: acmeItem }), null);
    // Through v.id: either the validator rejects it, or the read finds nothing.
    const res = await callRaw(globex.url, "query", "notes:get", { id: acmeNote });
    assert.equal(res.status, 200, res.text);
    if (res.body.status === "error") {
      assert.equal(res.body.errorCode, "ArgumentValidationError", res.text);
    } else {
      assert.equal(res.body.value, null, `tenant B read tenant A's note: ${res.text}`);
    }
    // Writes through a foreign ID reach nothing.
    assert.equal(await g.mutation(api.notes.setText, { id: acmeNote, text: "pwned" }), false);
    assert.equal((await client(acme.url).query(api.notes.get, { id: acmeNote })).text, "acme secret");
  });

  test("tenants are also reachable by host name", async () => {
    const body = JSON.stringify({ path: "notes:list", format: "convex_encoded_json", args: [{}] });
    const res = await new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: "127.0.0.1",
          port: server.port,
          path: "/api/query",
          method: "POST",
          headers: { host: `acme.localhost:${server.port}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
          timeout: 30_000,
        },
        (response) => {
          let text = "";
          response.on("data", (chunk) => (text += chunk));
          response.on("end", () => resolve({ status: response.statusCode, text, body: JSON.parse(text) }));
        },
      );
      req.on("error", reject);
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.end(body);
    });
    assert.deepEqual(expectSuccess(assert, res).map((n) => n.text), ["acme secret"]);
  });
});

describe("deleting a tenant", () => {
  test("removes its SQLite files and makes its URL answer 404 TenantNotFound", { timeout: 120_000 }, async () => {
    const dbFile = server.tenantDbPath("acme");
    assert.ok(fs.existsSync(dbFile), `${dbFile} must exist before the delete`);
    await server.deleteTenant("acme");
    const files = [dbFile, `${dbFile}-wal`, `${dbFile}-shm`, `${dbFile}-journal`];
    const deadline = Date.now() + 10_000;
    while (files.some((f) => fs.existsSync(f)) && Date.now() < deadline) {
      await sleep(50);
    }
    for (const f of files) {
      assert.equal(fs.existsSync(f), false, `${f} must be gone after the delete`);
    }
    expectRequestError(assert, await callRaw(acme.url, "query", "notes:list", {}), 404, "TenantNotFound");
    expectRequestError(assert, await callRaw(acme.url, "mutation", "notes:add", { owner: "x", text: "y" }), 404, "TenantNotFound");
    expectRequestError(assert, await server.admin("GET", "/admin/tenants/acme"), 404, "TenantNotFound");
    expectRequestError(assert, await server.admin("DELETE", "/admin/tenants/acme"), 404, "TenantNotFound");
    const list = await server.admin("GET", "/admin/tenants");
    assert.deepEqual(list.body.tenants.map((t) => t.name), ["globex"]);
    // The other tenant is untouched.
    assert.deepEqual((await client(globex.url).query(api.notes.list, {})).map((n) => n.text), ["globex secret"]);
  });

  test("a tenant re-created with the same name starts empty, with a new key", { timeout: 240_000 }, async () => {
    const again = await server.createTenant("acme");
    assert.notEqual(again.adminKey, acme.adminKey);
    const oldKey = await deploy({ appDir: APP_DIR, url: acme.url, adminKey: acme.adminKey, server, expectSuccess: false });
    assert.notEqual(oldKey.code, 0, `the deleted tenant's key must not push:\n${oldKey.output}`);
    await deploy({ appDir: APP_DIR, url: acme.url, adminKey: again.adminKey, server });
    assert.deepEqual(await client(acme.url).query(api.notes.list, {}), []);
    expectFunctionError(assert, await callRaw(acme.url, "query", "notes:get", { id: "nope" }), "ArgumentValidationError");
  });

  test("deletion survives a restart", { timeout: 120_000 }, async () => {
    await server.deleteTenant("acme");
    await server.restart();
    expectRequestError(assert, await callRaw(acme.url, "query", "notes:list", {}), 404, "TenantNotFound");
    assert.deepEqual((await client(globex.url).query(api.notes.list, {})).map((n) => n.text), ["globex secret"]);
  });
});
