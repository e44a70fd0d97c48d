// What clients on another origin, and clients other than the npm one, need from a tenant
// (issue 17, first step):
// - CORS: preflights on tenant routes are answered, every tenant answer (errors included)
//   carries `Access-Control-Allow-Origin: *`, the instance admin API carries none, and a
//   sync socket opens whatever its `Origin`;
// - a real browser (Debian's Chromium, driven by playwright-core) on another origin calls a
//   tenant with ConvexHttpClient, ConvexClient and ConvexReactClient, and sees a live query
//   update after a mutation;
// - a mutation failing with a ConvexError over the socket is followed by a Transition: the
//   Rust and Python clients complete such a mutation only at the next Transition
//   (crates/nimbus/tests/rust_client.rs tries the Rust client itself);
// - tenant admin key rotation.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import {
  APP_DIR,
  E2E_DIR,
  NimbusServer,
  deploy,
  expectRequestError,
  freePort,
  httpRequest,
  withTimeout,
} from "./harness.mjs";
import { openSync } from "./rawsync.mjs";

const ORIGIN = "http://app.example:5173";
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

let server;
let tenant;

before(
  async () => {
    server = await NimbusServer.start();
    tenant = await server.tenantWithApp("web");
  },
  { timeout: 240_000 },
);

after(async () => {
  await server?.cleanup();
});

describe("CORS on tenant routes", () => {
  test("a preflight of the function API is answered 204 for any origin", async () => {
    for (const path of ["/api/query", "/api/mutation", "/api/action", "/api/run/counter/get", "/api/nothing/here"]) {
      const res = await httpRequest(`${tenant.url}${path}`, {
        method: "OPTIONS",
        headers: {
          origin: ORIGIN,
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type,convex-client,authorization",
        },
      });
      assert.equal(res.status, 204, `${path}: ${res.text}`);
      assert.equal(res.headers.get("access-control-allow-origin"), "*", path);
      assert.match(res.headers.get("access-control-allow-methods"), /\bPOST\b/, path);
      assert.equal(res.headers.get("access-control-allow-headers"), "content-type,convex-client,authorization", path);
      assert.ok(Number(res.headers.get("access-control-max-age")) > 0, path);
      assert.equal(res.headers.get("access-control-allow-credentials"), null, "credentials are never allowed");
    }
  });

  test("answers, errors included, carry Access-Control-Allow-Origin for a request with an Origin", async () => {
    const call = (url, body) =>
      httpRequest(url, {
        method: "POST",
        headers: { origin: ORIGIN, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const ok = await call(`${tenant.url}/api/query`, { path: "counter:get", args: [{ name: "cors" }], format: "convex_encoded_json" });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.headers.get("access-control-allow-origin"), "*");
    const missingFunction = await call(`${tenant.url}/api/query`, { path: "counter:nope", args: [{}], format: "convex_encoded_json" });
    // A function error is a 200 with `status: "error"`, as in Convex.
    assert.equal(missingFunction.body?.status, "error", missingFunction.text);
    assert.equal(missingFunction.headers.get("access-control-allow-origin"), "*", "a function error");
    const noTenant = await call(`${server.url}/t/no-such-tenant/api/query`, { path: "counter:get", args: [{}] });
    expectRequestError(assert, noTenant, 404, "TenantNotFound");
    assert.equal(noTenant.headers.get("access-control-allow-origin"), "*", "an unknown tenant's 404");
    // Without an Origin (not a browser) no CORS header is added.
    const plain = await httpRequest(`${tenant.url}/api/query`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ path: "counter:get", args: [{ name: "cors" }], format: "convex_encoded_json" }),
    });
    assert.equal(plain.status, 200);
    assert.equal(plain.headers.get("access-control-allow-origin"), null);
  });

  test("the instance admin API gets no CORS headers, and a bare OPTIONS is not a preflight", async () => {
    const preflight = await httpRequest(`${server.url}/admin/tenants`, {
      method: "OPTIONS",
      headers: { origin: ORIGIN, "access-control-request-method": "GET", "access-control-request-headers": "authorization" },
    });
    assert.equal(preflight.headers.get("access-control-allow-origin"), null, preflight.text);
    assert.notEqual(preflight.status, 204);
    const list = await httpRequest(`${server.url}/admin/tenants`, {
      headers: { origin: ORIGIN, authorization: `Bearer ${server.adminKey}` },
    });
    assert.equal(list.status, 200);
    assert.equal(list.headers.get("access-control-allow-origin"), null);
    const bare = await httpRequest(`${tenant.url}/api/query`, { method: "OPTIONS" });
    expectRequestError(assert, bare, 405, "MethodNotAllowed");
  });

  test("a sync socket opens from another origin", async () => {
    const socket = await openSync(tenant.url, { origin: ORIGIN });
    try {
      socket.connect();
      socket.send({
        type: "ModifyQuerySet",
        baseVersion: 0,
        newVersion: 1,
        modifications: [{ type: "Add", queryId: 0, udfPath: "counter:get", args: [{ name: "socket-origin" }] }],
      });
      const transition = await socket.message((m) => m.type === "Transition");
      assert.equal(transition.endVersion.querySet, 1);
      assert.deepEqual(
        transition.modifications.map((m) => [m.type, m.value]),
        [["QueryUpdated", null]],
      );
    } finally {
      socket.close();
    }
  });
});

describe("a mutation failing with a ConvexError over the socket", () => {
  test("is followed by a Transition even though nothing changed", async () => {
    const created = await httpRequest(`${tenant.url}/api/mutation`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ path: "notes:add", args: [{ owner: "tx", text: "kept" }], format: "convex_encoded_json" }),
    });
    assert.equal(created.status, 200, created.text);
    const noteId = created.body.value;
    const socket = await openSync(tenant.url);
    try {
      socket.connect();
      // With and without a subscription: neither may leave the caller waiting.
      for (const [requestId, subscribe] of [
        [0, false],
        [1, true],
      ]) {
        if (subscribe) {
          socket.send({
            type: "ModifyQuerySet",
            baseVersion: 0,
            newVersion: 1,
            modifications: [{ type: "Add", queryId: 0, udfPath: "counter:get", args: [{ name: "tx" }] }],
          });
          await socket.message((m) => m.type === "Transition" && m.endVersion.querySet === 1, "the subscription's Transition");
        }
        const before = socket.messages.length;
        socket.send({
          type: "Mutation",
          requestId,
          udfPath: "errors:writeThenConvexError",
          args: [{ owner: "tx", existing: noteId }],
        });
        const response = await socket.message((m) => m.type === "MutationResponse" && m.requestId === requestId);
        assert.equal(response.success, false);
        assert.equal(JSON.parse(JSON.stringify(response.errorData)).code, "ROLLBACK", JSON.stringify(response));
        const at = socket.messages.indexOf(response);
        assert.ok(at >= before);
        await socket.waitFor(
          () => socket.messages.slice(at + 1).some((m) => m.type === "Transition"),
          `a Transition after the failed mutation ${requestId} (the Rust client waits for one)`,
          5_000,
        );
        const transition = socket.messages.slice(at + 1).find((m) => m.type === "Transition");
        assert.deepEqual(transition.modifications, [], "nothing changed");
      }
      assert.equal(socket.closeInfo, null, "the socket stays open");
    } finally {
      socket.close();
    }
  });
});

describe("tenant admin key rotation", () => {
  test("the old key gets 401 at once and the new key pushes code", { timeout: 240_000 }, async () => {
    const rotated = await server.admin("POST", `/admin/tenants/${tenant.name}/rotate-key`);
    assert.equal(rotated.status, 200, rotated.text);
    const newKey = rotated.body.adminKey;
    assert.ok(newKey.startsWith(`${tenant.name}|`), newKey);
    assert.notEqual(newKey, tenant.adminKey);
    const withKey = (key) =>
      httpRequest(`${tenant.url}/api/get_config_hashes`, {
        method: "POST",
        headers: { authorization: `Convex ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ adminKey: key }),
      });
    expectRequestError(assert, await withKey(tenant.adminKey), 401, "Unauthenticated");
    const fresh = await withKey(newKey);
    assert.equal(fresh.status, 200, fresh.text);
    const old = await deploy({ appDir: APP_DIR, url: tenant.url, adminKey: tenant.adminKey, server, expectSuccess: false });
    assert.notEqual(old.code, 0, "a push with the old key fails");
    await deploy({ appDir: APP_DIR, url: tenant.url, adminKey: newKey, server });
    tenant = { ...tenant, adminKey: newKey };
  });

  test("rotating an unknown tenant is a 404, and the method must be POST", async () => {
    expectRequestError(assert, await server.admin("POST", "/admin/tenants/no-such/rotate-key"), 404, "TenantNotFound");
    expectRequestError(assert, await server.admin("GET", `/admin/tenants/${tenant.name}/rotate-key`), 405, "MethodNotAllowed");
  });
});

// ---------------------------------------------------------------------------------------------
// A real browser on another origin.

/** Bundles the page's script: the official clients, as a web app built with a bundler has them. */
async function bundlePageScript() {
  const { build } = await import("esbuild");
  const result = await build({
    stdin: {
      resolveDir: E2E_DIR,
      sourcefile: "page.js",
      contents: `
        import { ConvexHttpClient, ConvexClient } from "convex/browser";
        import { ConvexReactClient } from "convex/react";
        import { anyApi } from "convex/server";
        const api = anyApi;
        const within = (promise, ms, what) =>
          Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(what + ": timed out")), ms))]);
        // Resolves once \`watch\` (a callback subscription) has shown \`expected\`.
        function seen(subscribe, expected, what) {
          return within(new Promise((resolve) => {
            const stop = subscribe((value) => {
              if (value === expected) { stop(); resolve(value); }
            });
          }), 20000, what);
        }
        window.scenario = async (url) => {
          const name = "browser-" + Math.random().toString(36).slice(2);
          const out = {};
          const http = new ConvexHttpClient(url);
          out.first = await http.query(api.counter.get, { name });
          out.afterMutation = await http.mutation(api.counter.increment, { name });
          out.readBack = await http.query(api.counter.get, { name });

          const client = new ConvexClient(url);
          const react = new ConvexReactClient(url);
          const viaClient = seen((cb) => client.onUpdate(api.counter.get, { name }, cb), 2, "ConvexClient update");
          const watch = react.watchQuery(api.counter.get, { name });
          const viaReact = seen((cb) => watch.onUpdate(() => cb(watch.localQueryResult())), 2, "ConvexReactClient update");
          // Both have their first result before the mutation, so 2 arrives as an update.
          await seen((cb) => client.onUpdate(api.counter.get, { name }, cb), 1, "ConvexClient first result");
          await within(new Promise((resolve) => {
            const check = () => { if (watch.localQueryResult() === 1) { stop(); resolve(); } };
            const stop = watch.onUpdate(check);
            check();
          }), 20000, "ConvexReactClient first result");
          out.mutationOverSocket = await client.mutation(api.counter.increment, { name });
          out.liveClient = await viaClient;
          out.liveReact = await viaReact;
          out.reactMutation = await react.mutation(api.counter.increment, { name });
          await client.close();
          await react.close();
          return out;
        };
        window.pageReady = true;
      `,
    },
    bundle: true,
    format: "iife",
    platform: "browser",
    define: { "process.env.NODE_ENV": '"production"' },
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

/** Serves the page on its own port, so its origin differs from the tenant's. */
async function servePage(script) {
  const port = await freePort();
  const page = `<!doctype html><html><head><meta charset="utf-8"><title>web-clients</title></head>
<body><script src="/page.js"></script></body></html>`;
  const pageServer = http.createServer((req, res) => {
    if (req.url === "/page.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(script);
    } else {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(page);
    }
  });
  await new Promise((resolve) => pageServer.listen(port, "127.0.0.1", resolve));
  // `localhost` for the page and `127.0.0.1` for the API: two origins, as in production.
  return { url: `http://localhost:${port}/`, close: () => new Promise((resolve) => pageServer.close(resolve)) };
}

describe("a browser page on another origin", () => {
  test("ConvexHttpClient, ConvexClient and ConvexReactClient work, and a live query updates", { timeout: 180_000 }, async () => {
    assert.ok(
      fs.existsSync(CHROMIUM),
      `${CHROMIUM} is missing: scripts/test.sh installs Debian's chromium (apt-get install -y chromium), or set CHROMIUM_BIN`,
    );
    const { chromium } = await import("playwright-core");
    const page = await servePage(await bundlePageScript());
    // No background networking: this machine refuses outside connections, and Chromium would
    // keep trying (component updates, sync, Google lookups).
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
    try {
      const tab = await browser.newPage();
      const problems = [];
      tab.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
      tab.on("console", (message) => {
        if (message.type() === "error") problems.push(`console: ${message.text()}`);
      });
      await tab.goto(page.url);
      await tab.waitForFunction(() => window.pageReady === true, null, { timeout: 30_000 });
      const origin = await tab.evaluate(() => window.location.origin);
      assert.notEqual(origin, new URL(tenant.url).origin, "the page is on another origin");
      const out = await withTimeout(
        tab.evaluate((url) => window.scenario(url), tenant.url),
        120_000,
        "the page's scenario",
      );
      assert.deepEqual(
        out,
        {
          first: null,
          afterMutation: 1,
          readBack: 1,
          mutationOverSocket: 2,
          liveClient: 2,
          liveReact: 2,
          reactMutation: 3,
        },
        problems.join("\n"),
      );
      assert.deepEqual(problems.filter((p) => /CORS|Access-Control/i.test(p)), [], "no CORS error in the console");
    } finally {
      await browser.close();
      await page.close();
    }
  });
});
