// User authentication with JWTs (issue 17): providers from `auth.config.ts`, tokens from a
// local OpenID Connect issuer (oidc.mjs: discovery, JWKS, RS256 and ES256) and a custom JWT
// issuer, `ctx.auth.getUserIdentity()` over HTTP and over the socket with the official npm
// clients, the tokens that must be refused, key rotation without a restart, and two users
// of one query each seeing their own result.
//
// The issuers listen on 127.0.0.1, which the server fetches from only because it is started
// with `--egress-allow 127.0.0.1`; without it the same push and tokens are refused.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import WebSocket from "ws";
import {
  APP_DIR,
  NimbusServer,
  api,
  callRaw,
  deploy,
  expectRequestError,
  makeAppVariant,
  removeAppVariant,
  withTimeout,
} from "./harness.mjs";
import { OidcIssuer } from "./oidc.mjs";
import { openSync } from "./rawsync.mjs";

const WHOAMI = `import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** The caller's identity, or null. */
export const me = query({
  args: {},
  handler: async (ctx) => await ctx.auth.getUserIdentity(),
});

/** The caller's own notes (by subject), or null when anonymous. */
export const myNotes = query({
  args: {},
  handler: async (ctx) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) return null;
    const notes = await ctx.db.query("notes").collect();
    return notes.filter((n) => n.owner === identity.subject).map((n) => n.text);
  },
});

/** Adds a note owned by the caller; refuses anonymous callers. */
export const addMine = mutation({
  args: { text: v.string() },
  handler: async (ctx, { text }) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) throw new Error("not signed in");
    await ctx.db.insert("notes", { owner: identity.subject, text });
    return identity.subject;
  },
});
`;

function authConfig(providers) {
  return `export default { providers: ${JSON.stringify(providers, null, 2)} };\n`;
}

let server;
let oidc; // an OpenID Connect provider
let custom; // the key server of a customJwt provider
let other; // another tenant's provider
let tenant;
let otherTenant;
const variants = [];

async function tenantWithProviders(name, providers) {
  const created = await server.createTenant(name);
  const dir = makeAppVariant(APP_DIR, `auth-${name}`, {
    "convex/whoami.ts": WHOAMI,
    "convex/auth.config.ts": authConfig(providers),
  });
  variants.push(dir);
  const url = server.tenantUrl(name);
  const pushed = await deploy({ appDir: dir, url, adminKey: created.adminKey, server });
  return { ...created, url, dir, pushed };
}

before(
  async () => {
    [oidc, custom, other] = await Promise.all([OidcIssuer.start(), OidcIssuer.start(), OidcIssuer.start()]);
    server = await NimbusServer.start({ args: ["--egress-allow", "127.0.0.1"] });
    tenant = await tenantWithProviders("auth", [
      { domain: oidc.url, applicationID: "convex" },
      { type: "customJwt", issuer: custom.url, jwks: `${custom.url}/jwks`, algorithm: "ES256", applicationID: "custom-app" },
    ]);
    otherTenant = await tenantWithProviders("auth-other", [{ domain: other.url, applicationID: "convex" }]);
  },
  { timeout: 300_000 },
);

after(async () => {
  await server?.cleanup();
  await Promise.all([oidc, custom, other].map((issuer) => issuer?.close()));
  for (const dir of variants) removeAppVariant(dir);
});

/** `whoami:me` over HTTP with `Authorization: Bearer <token>` (raw, to see refusals). */
function meOverHttp(url, token) {
  const headers = token === undefined ? {} : { authorization: `Bearer ${token}` };
  return callRaw(url, "query", "whoami:me", {}, { headers });
}

describe("identity over HTTP", () => {
  test("a push whose auth.config.ts is wrong fails, naming the provider and the field", { timeout: 120_000 }, async () => {
    const dir = makeAppVariant(APP_DIR, "auth-bad", {
      "convex/auth.config.ts": "export default { providers: [{ domain: process.env.AUTH_DOMAIN, applicationID: 'convex' }] };\n",
    });
    variants.push(dir);
    const pushed = await deploy({ appDir: dir, url: tenant.url, adminKey: tenant.adminKey, server, expectSuccess: false });
    assert.notEqual(pushed.code, 0, pushed.output);
    assert.match(pushed.output, /auth\.config\.ts: provider 0: `domain` is missing/, pushed.output);
    // The tenant keeps its providers: tokens still work.
    assert.equal((await meOverHttp(tenant.url, oidc.sign())).status, 200);
  });

  test("an OIDC token (RS256 and ES256) gives the caller's identity, with Convex's field names", async () => {
    for (const alg of ["RS256", "ES256"]) {
      const token = oidc.sign({ email: "ada@example.com", email_verified: true, given_name: "Ada", org: { role: "owner" } }, { alg });
      const http = new ConvexHttpClient(tenant.url, { logger: false });
      http.setAuth(token);
      const me = await http.query(api.whoami.me, {});
      assert.equal(me.tokenIdentifier, `${oidc.url}|user-1`, alg);
      assert.equal(me.subject, "user-1");
      assert.equal(me.issuer, oidc.url);
      assert.equal(me.email, "ada@example.com");
      assert.equal(me.emailVerified, true);
      assert.equal(me.givenName, "Ada");
      assert.equal(me["org.role"], "owner");
      assert.equal(me.given_name, undefined);
    }
  });

  test("a customJwt token (ES256, its audience) works; anonymous calls see null", async () => {
    const res = await meOverHttp(tenant.url, custom.sign({ sub: "svc-7" }, { alg: "ES256", audience: "custom-app" }));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.value.tokenIdentifier, `${custom.url}|svc-7`);
    const anonymous = await meOverHttp(tenant.url);
    assert.equal(anonymous.body.value, null);
  });

  test("refused tokens get 401 InvalidAuthToken saying why", async () => {
    const past = Math.floor(Date.now() / 1000) - 3600;
    const cases = [
      ["expired", oidc.sign({ exp: past }), /expired/],
      ["tampered", oidc.tamper(oidc.sign()), /signature is invalid/],
      ["wrong audience", oidc.sign({}, { audience: "someone-else" }), /audience/],
      ["wrong issuer", oidc.sign({ iss: "https://evil.example" }), /no auth provider .* issuer/],
      ["alg none", oidc.unsigned(), /"none" is not accepted/],
      ["HS256 keyed with the public key", oidc.hs256WithPublicKey(), /"HS256" is not accepted/],
      ["customJwt with the wrong algorithm", custom.sign({}, { alg: "RS256", audience: "custom-app" }), /no auth provider .*RS256/],
      ["customJwt without its audience", custom.sign({}, { alg: "ES256", audience: "convex" }), /audience/],
      ["another tenant's provider", other.sign(), /no auth provider .* issuer/],
      ["not a JWT", "hello", /not a JWT/],
      ["no subject", oidc.sign({ sub: undefined }), /`sub`/],
    ];
    for (const [what, token, reason] of cases) {
      const res = await meOverHttp(tenant.url, token);
      expectRequestError(assert, res, 401, "InvalidAuthToken");
      assert.match(res.body.message, reason, `${what}: ${res.body.message}`);
      assert.ok(!res.text.includes(token) || token === "hello", `${what}: the answer echoes the token`);
    }
    // The other tenant accepts its own provider's tokens, not this tenant's.
    assert.equal((await meOverHttp(otherTenant.url, other.sign())).status, 200);
    expectRequestError(assert, await meOverHttp(otherTenant.url, oidc.sign()), 401, "InvalidAuthToken");
  });

  test("a mutation runs as the caller; a query's cached result is never another user's", async () => {
    for (const [user, text] of [["alice", "a1"], ["bob", "b1"], ["alice", "a2"]]) {
      const res = await callRaw(tenant.url, "mutation", "whoami:addMine", { text }, {
        headers: { authorization: `Bearer ${oidc.sign({ sub: user })}` },
      });
      assert.equal(res.body.value, user, res.text);
    }
    // Repeated, so the second round comes from the query cache when it may.
    for (let round = 0; round < 2; round++) {
      const notes = async (user) =>
        (await callRaw(tenant.url, "query", "whoami:myNotes", {}, {
          headers: user === null ? {} : { authorization: `Bearer ${oidc.sign({ sub: user })}` },
        })).body.value;
      assert.deepEqual(await notes("alice"), ["a1", "a2"]);
      assert.deepEqual(await notes("bob"), ["b1"]);
      assert.equal(await notes(null), null);
    }
  });

  test("the issuer rotates its key: tokens with the new kid work without a restart, keys are cached", async () => {
    const before = oidc.requests["/jwks"] ?? 0;
    for (let i = 0; i < 5; i++) {
      assert.equal((await meOverHttp(tenant.url, oidc.sign())).status, 200);
    }
    assert.equal(oidc.requests["/jwks"] ?? 0, before, "five tokens with a known key fetch no keys");
    const kid = oidc.rotate("RS256", { retireOld: true });
    const res = await meOverHttp(tenant.url, oidc.sign({ sub: "after-rotation" }));
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.value.subject, "after-rotation");
    assert.equal(oidc.requests["/jwks"], before + 1, `one fetch for the new key ${kid}`);
    // Made-up key IDs do not make the server refetch for each token.
    for (let i = 0; i < 5; i++) {
      const forged = oidc.sign({}, { header: { kid: `made-up-${i}` } });
      expectRequestError(assert, await meOverHttp(tenant.url, forged), 401, "InvalidAuthToken");
    }
    assert.ok(oidc.requests["/jwks"] <= before + 2, `at most one more fetch: ${oidc.requests["/jwks"]}`);
  });
});

describe("identity over the socket (npm ConvexClient)", () => {
  function socketClient() {
    return new ConvexClient(tenant.url, { webSocketConstructor: WebSocket, logger: false });
  }

  /** Resolves with the first value of `query` that `pred` accepts. */
  function nextValue(client, query, args, pred, what) {
    return withTimeout(
      new Promise((resolve) => {
        const stop = client.onUpdate(query, args, (value) => {
          if (pred(value)) {
            stop();
            resolve(value);
          }
        });
      }),
      30_000,
      what,
    );
  }

  test("two users subscribed to the same queries each see their own results, and live updates", { timeout: 90_000 }, async () => {
    const alice = socketClient();
    const bob = socketClient();
    try {
      alice.setAuth(async () => oidc.sign({ sub: "alice" }));
      bob.setAuth(async () => oidc.sign({ sub: "bob" }));
      const aliceMe = await nextValue(alice, api.whoami.me, {}, (v) => v !== null, "alice's identity");
      const bobMe = await nextValue(bob, api.whoami.me, {}, (v) => v !== null, "bob's identity");
      assert.equal(aliceMe.subject, "alice");
      assert.equal(bobMe.subject, "bob");
      const bobSees = nextValue(bob, api.whoami.myNotes, {}, (v) => Array.isArray(v) && v.includes("b2"), "bob's new note");
      const aliceSees = nextValue(alice, api.whoami.myNotes, {}, (v) => Array.isArray(v) && v.includes("a3"), "alice's new note");
      assert.equal(await alice.mutation(api.whoami.addMine, { text: "a3" }), "alice");
      assert.equal(await bob.mutation(api.whoami.addMine, { text: "b2" }), "bob");
      assert.deepEqual(await aliceSees, ["a1", "a2", "a3"]);
      assert.deepEqual(await bobSees, ["b1", "b2"]);
    } finally {
      await alice.close();
      await bob.close();
    }
  });

  test("an expired token gets AuthError; the client fetches a fresh one and goes on", { timeout: 90_000 }, async () => {
    const client = socketClient();
    const calls = [];
    const changes = [];
    try {
      client.setAuth(
        async ({ forceRefreshToken }) => {
          calls.push(forceRefreshToken);
          const past = Math.floor(Date.now() / 1000) - 3600;
          return calls.length === 1 ? oidc.sign({ sub: "late", exp: past }) : oidc.sign({ sub: "late" });
        },
        (isAuthenticated) => changes.push(isAuthenticated),
      );
      const me = await nextValue(client, api.whoami.me, {}, (v) => v !== null, "the identity after a refresh");
      assert.equal(me.subject, "late");
      assert.ok(calls.length >= 2, `fetchToken calls: ${JSON.stringify(calls)}`);
      assert.equal(calls.at(-1), true, "the fresh token was asked for with forceRefreshToken");
      assert.equal(changes.at(-1), true, `onChange: ${JSON.stringify(changes)}`);
    } finally {
      await client.close();
    }
  });

  test("raw protocol: the identity changes mid-session, and subscriptions re-run as the new user", { timeout: 60_000 }, async () => {
    const socket = await openSync(tenant.url);
    try {
      socket.connect();
      socket.send({ type: "Authenticate", tokenType: "User", value: oidc.sign({ sub: "first" }), baseVersion: 0 });
      await socket.message((m) => m.type === "Transition" && m.endVersion.identity === 1, "first identity");
      socket.send({
        type: "ModifyQuerySet",
        baseVersion: 0,
        newVersion: 1,
        modifications: [{ type: "Add", queryId: 0, udfPath: "whoami:me", args: [{}] }],
      });
      const first = await socket.message((m) => m.type === "Transition" && m.endVersion.querySet === 1, "the query's result");
      assert.equal(first.modifications[0].value.subject, "first");
      socket.send({ type: "Authenticate", tokenType: "User", value: oidc.sign({ sub: "second" }), baseVersion: 1 });
      const second = await socket.message((m) => m.type === "Transition" && m.endVersion.identity === 2, "second identity");
      const updated = second.modifications.find((m) => m.queryId === 0);
      assert.equal(updated?.value?.subject, "second", JSON.stringify(second));
      socket.send({ type: "Authenticate", tokenType: "None", baseVersion: 2 });
      const anonymous = await socket.message((m) => m.type === "Transition" && m.endVersion.identity === 3, "anonymous");
      assert.equal(anonymous.modifications.find((m) => m.queryId === 0)?.value, null, JSON.stringify(anonymous));
    } finally {
      socket.close();
    }
  });

  test("raw protocol: a token that expires mid-session gets AuthError (authUpdateAttempted: false) and a close", { timeout: 60_000 }, async () => {
    const socket = await openSync(tenant.url);
    try {
      socket.connect();
      // Accepted within the 60 s clock skew, expired a few seconds later.
      const exp = Math.floor(Date.now() / 1000) - 55;
      socket.send({ type: "Authenticate", tokenType: "User", value: oidc.sign({ sub: "short", exp }), baseVersion: 0 });
      const accepted = await socket.message((m) => m.type === "Transition" && m.endVersion.identity === 1, "the identity accepted");
      assert.equal(accepted.startVersion.identity, 0);
      const error = await socket.message((m) => m.type === "AuthError", "AuthError when the token expires", 30_000);
      assert.equal(error.authUpdateAttempted, false, JSON.stringify(error));
      assert.equal(error.baseVersion, 0, "the version of the Authenticate it refers to");
      assert.match(error.error, /expired/);
      await socket.closed(10_000);
    } finally {
      socket.close();
    }
  });

  test("a refused token is reported to onChange(false) and the client stays anonymous", { timeout: 90_000 }, async () => {
    const client = socketClient();
    const changes = [];
    try {
      client.setAuth(async () => oidc.unsigned(), (isAuthenticated) => changes.push(isAuthenticated));
      await withTimeout(
        (async () => {
          while (!changes.includes(false)) await new Promise((r) => setTimeout(r, 50));
        })(),
        30_000,
        "onChange(false)",
      );
      assert.ok(!changes.includes(true), JSON.stringify(changes));
    } finally {
      await client.close();
    }
  });
});

describe("a provider that is down", () => {
  test("tokens naming it are refused, and the server asks it at most once per 10 s", { timeout: 240_000 }, async () => {
    let requests = 0;
    const down = http.createServer((_req, res) => {
      requests += 1;
      res.writeHead(503, { "content-type": "text/plain" });
      res.end("down for maintenance");
    });
    await new Promise((resolve) => down.listen(0, "127.0.0.1", resolve));
    const downUrl = `http://127.0.0.1:${down.address().port}`;
    try {
      const downTenant = await tenantWithProviders("auth-down", [{ domain: downUrl, applicationID: "convex" }]);
      for (let i = 0; i < 10; i++) {
        const res = await meOverHttp(downTenant.url, oidc.sign({ iss: downUrl }));
        expectRequestError(assert, res, 401, "InvalidAuthToken");
        assert.match(res.body.message, /could not be fetched: .*HTTP 503/, res.body.message);
      }
      assert.equal(requests, 1, "ten tokens, one request to the provider");
    } finally {
      await new Promise((resolve) => down.close(resolve));
    }
  });
});

describe("the egress policy", () => {
  test("without --egress-allow, a provider on 127.0.0.1 is not fetched from", { timeout: 240_000 }, async () => {
    const strict = await NimbusServer.start();
    try {
      const created = await strict.createTenant("strict");
      const url = strict.tenantUrl("strict");
      await deploy({ appDir: tenant.dir, url, adminKey: created.adminKey, server: strict });
      const res = await meOverHttp(url, oidc.sign());
      expectRequestError(assert, res, 401, "InvalidAuthToken");
      assert.match(res.body.message, /127\.0\.0\.1 is not a public address.*--egress-allow 127\.0\.0\.1/, res.body.message);
    } finally {
      await strict.cleanup();
    }
  });
});
