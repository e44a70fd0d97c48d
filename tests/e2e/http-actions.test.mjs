// HTTP actions (issue 15): `convex/http.ts` routes served on `nimbus serve --site-listen`,
// for two tenants with the same routes and different data, by path prefix and by host
// name; GET and POST through ctx.runQuery/runMutation; a CORS preflight answered by the
// app's own OPTIONS route; path prefixes; 404s; a failing handler; a body over the limit;
// process.env.CONVEX_SITE_URL; and a malformed route failing the push.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { APP_DIR, NimbusServer, deploy, freePort, makeAppVariant, removeAppVariant } from "./harness.mjs";

let server;
let sitePort;
let siteUrl;
let a;
let b;
const variants = [];

before(
  async () => {
    sitePort = await freePort();
    siteUrl = `http://127.0.0.1:${sitePort}`;
    server = await NimbusServer.start({
      args: ["--site-listen", `127.0.0.1:${sitePort}`, "--site-max-request-bytes", "100000"],
    });
    a = await server.tenantWithApp("site-a");
    b = await server.tenantWithApp("site-b");
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
  for (const dir of variants) removeAppVariant(dir);
});

/** One request to the site port; `host` sets the Host header (host-name routing). */
function site(path, { method = "GET", body, headers = {}, host } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: sitePort, path, method, headers: { ...headers, ...(host ? { host } : {}) }, timeout: 30_000 },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          let json;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode, headers: res.headers, text, json });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const post = (path, value, options = {}) =>
  site(path, { method: "POST", body: JSON.stringify(value), headers: { "content-type": "application/json" }, ...options });

test("two tenants with the same routes answer GET and POST with their own data", { timeout: 60_000 }, async () => {
  for (const [tenant, n] of [["site-a", 2], ["site-b", 1]]) {
    for (let i = 0; i < n; i++) {
      const created = await post(`/t/${tenant}/notes`, { owner: "web", text: `${tenant} ${i}` });
      assert.equal(created.status, 201, created.text);
      assert.match(created.json.id, /^[0-9a-z]+$/, created.text);
      assert.equal(created.headers["access-control-allow-origin"], "*");
    }
  }
  const fromA = await site("/t/site-a/notes?owner=web");
  assert.equal(fromA.status, 200, fromA.text);
  assert.deepEqual(fromA.json, { owner: "web", count: 2, site: `${siteUrl}/t/site-a` });
  const fromB = await site("/t/site-b/notes?owner=web");
  assert.deepEqual(fromB.json, { owner: "web", count: 1, site: `${siteUrl}/t/site-b` });
  // By host name: the same tenants.
  const byHost = await site("/notes?owner=web", { host: `site-b.localhost:${sitePort}` });
  assert.equal(byHost.json?.count, 1, byHost.text);
  // HEAD is GET without the body.
  const head = await site("/t/site-a/notes?owner=web", { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.text, "");
  // The API tenants see the same notes the site wrote.
  assert.equal(await a.client.query("actions:countNotes", { owner: "web" }), 2);
  assert.equal(await b.client.query("actions:countNotes", { owner: "web" }), 1);
});

test("CORS preflights are answered by the app's OPTIONS route", { timeout: 60_000 }, async () => {
  const preflight = await site("/t/site-a/notes", {
    method: "OPTIONS",
    headers: { origin: "https://app.example", "access-control-request-method": "POST" },
  });
  assert.equal(preflight.status, 204, preflight.text);
  assert.equal(preflight.headers["access-control-allow-methods"], "GET, POST, OPTIONS");
  assert.equal(preflight.headers["access-control-max-age"], "86400");
});

test("path prefixes, missing routes and tenants, and a failing handler", { timeout: 60_000 }, async () => {
  const file = await site("/t/site-a/files/docs/readme.txt");
  assert.equal(file.status, 200, file.text);
  assert.equal(file.text, "file docs/readme.txt");
  const none = await site("/t/site-a/nope");
  assert.equal(none.status, 404);
  assert.equal(none.text, "No HttpAction routed for /nope");
  const wrongMethod = await site("/t/site-a/files/x", { method: "DELETE" });
  assert.equal(wrongMethod.status, 404);
  const missing = await site("/t/no-such-tenant/notes");
  assert.equal(missing.status, 404, missing.text);
  assert.equal(typeof missing.json?.code, "string", missing.text);
  const failing = await site("/t/site-a/fail");
  assert.equal(failing.status, 500, failing.text);
  assert.equal(failing.json.code, "UncaughtError");
  assert.match(failing.json.message, /the handler failed on purpose/);
});

test("a body over --site-max-request-bytes gets 413; one within reaches the handler whole", { timeout: 60_000 }, async () => {
  const within = await site("/t/site-a/size", { method: "POST", body: Buffer.alloc(90_000, 1) });
  assert.equal(within.status, 200, within.text);
  assert.equal(within.text, "90000");
  const over = await site("/t/site-a/size", { method: "POST", body: Buffer.alloc(200_000, 1) });
  assert.equal(over.status, 413, over.text);
  assert.equal(over.json.code, "RequestTooLarge");
});

test("a malformed http.ts route fails the push with the router's message", { timeout: 240_000 }, async () => {
  const dir = makeAppVariant(APP_DIR, "http-malformed", {
    "convex/http.ts": (src) => src.replace('path: "/size"', 'path: "size"'),
  });
  variants.push(dir);
  const out = await deploy({ appDir: dir, url: a.url, adminKey: a.adminKey, server, expectSuccess: false });
  assert.notEqual(out.code, 0, out.output);
  assert.match(out.output, /path 'size' does not start with a \//, out.output);
  // The routes in force are unchanged.
  assert.equal((await site("/t/site-a/size", { method: "POST", body: "abc" })).text, "3");
});
