// A tiny OpenID Connect issuer for end-to-end tests of JWT authentication.
//
// `OidcIssuer.start()` serves a discovery document and a JWKS on 127.0.0.1, and signs tokens
// with its own RSA (RS256) and P-256 (ES256) keys. It also forges the tokens a server must
// refuse: unsigned (`alg: "none"`), tampered, and HS256 keyed with the RSA public key
// ("algorithm confusion"). `issuer.requests` counts requests per path, so tests can check
// that the server caches the JWKS and refreshes it within bounds.
import crypto from "node:crypto";
import http from "node:http";

const DISCOVERY_PATH = "/.well-known/openid-configuration";
const JWKS_PATH = "/jwks";

/** The key type and `generateKeyPairSync` options of each signing algorithm. */
const KEY_TYPES = {
  RS256: { prefix: "rsa", type: "rsa", options: { modulusLength: 2048 } },
  ES256: { prefix: "ec", type: "ec", options: { namedCurve: "P-256" } },
};

/** base64url without padding, as JOSE requires (RFC 7515 §2). */
function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

function encodeJson(value) {
  return b64url(JSON.stringify(value));
}

/** The parsed payload of a compact JWS; no signature check. */
export function decodePayload(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"));
}

export class OidcIssuer {
  constructor(server, url) {
    this.server = server;
    this.url = url;
    /** Requests served, by path: `{ "/jwks": 3 }`. */
    this.requests = {};
    /** Every key ever made: `{ kid, alg, privateKey, publicKey, published }`. */
    this.keys = [];
    /** The kid that signs new tokens, by alg. */
    this.current = {};
    this.counters = { RS256: 0, ES256: 0 };
    this.rotate("RS256");
    this.rotate("ES256");
  }

  /** Starts the issuer on a free port of `host` and resolves once it listens. */
  static async start({ host = "127.0.0.1" } = {}) {
    const server = http.createServer();
    // Port 0 lets the kernel pick a free port: no race between choosing and binding it.
    await new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const issuer = new OidcIssuer(server, `http://${host}:${server.address().port}`);
    server.on("request", (req, res) => issuer.handle(req, res));
    return issuer;
  }

  handle(req, res) {
    const path = new URL(req.url, this.url).pathname;
    this.requests[path] = (this.requests[path] ?? 0) + 1;
    if (req.method === "GET" && path === DISCOVERY_PATH) {
      return sendJson(res, 200, this.discovery());
    }
    if (req.method === "GET" && path === JWKS_PATH) {
      return sendJson(res, 200, this.jwks());
    }
    sendJson(res, 404, { error: "not found" });
  }

  /** The OIDC discovery document: only the fields a relying party needs to find the keys. */
  discovery() {
    return {
      issuer: this.url,
      jwks_uri: this.url + JWKS_PATH,
      authorization_endpoint: this.url + "/authorize",
      response_types_supported: ["id_token"],
      subject_types_supported: ["public"],
      id_token_signing_alg_values_supported: ["RS256", "ES256"],
    };
  }

  /** The published public keys as a JWK Set. */
  jwks() {
    const keys = this.keys
      .filter((key) => key.published)
      .map((key) => ({ ...key.publicKey.export({ format: "jwk" }), kid: key.kid, alg: key.alg, use: "sig" }));
    return { keys };
  }

  /**
   * Makes a new key for `alg`, publishes it and signs new tokens of `alg` with it; returns its
   * kid. With `retireOld`, earlier keys of `alg` leave the JWKS (their tokens must then fail).
   */
  rotate(alg = "RS256", { retireOld = false } = {}) {
    const kind = KEY_TYPES[alg];
    if (!kind) {
      throw new Error(`unsupported alg ${alg}`);
    }
    if (retireOld) {
      for (const key of this.keys) {
        if (key.alg === alg) {
          key.published = false;
        }
      }
    }
    const kid = `${kind.prefix}-${++this.counters[alg]}`;
    const { privateKey, publicKey } = crypto.generateKeyPairSync(kind.type, kind.options);
    this.keys.push({ kid, alg, privateKey, publicKey, published: true });
    this.current[alg] = kid;
    return kid;
  }

  /** The key with `kid`, or the current key of `alg`. */
  key({ alg = "RS256", kid } = {}) {
    const wanted = kid ?? this.current[alg];
    const key = this.keys.find((k) => k.kid === wanted);
    if (!key) {
      throw new Error(`no key ${wanted}`);
    }
    return key;
  }

  /** The default claims, overridden by `claims`; a claim set to `undefined` is removed. */
  payload(claims = {}, { expiresIn = 3600, audience = "convex" } = {}) {
    const now = Math.floor(Date.now() / 1000);
    const payload = { iss: this.url, sub: "user-1", aud: audience, iat: now, exp: now + expiresIn, ...claims };
    for (const [name, value] of Object.entries(payload)) {
      if (value === undefined) {
        delete payload[name];
      }
    }
    return payload;
  }

  /** A JWT signed with the current key of `alg` (or the key `kid`). */
  sign(claims = {}, { alg = "RS256", kid, header = {}, expiresIn = 3600, audience = "convex" } = {}) {
    const key = this.key({ alg, kid });
    const head = { alg, typ: "JWT", kid: key.kid, ...header };
    const data = `${encodeJson(head)}.${encodeJson(this.payload(claims, { expiresIn, audience }))}`;
    // JOSE wants ECDSA signatures as raw r||s (64 bytes for P-256), not Node's default DER.
    const signer = key.alg === "ES256" ? { key: key.privateKey, dsaEncoding: "ieee-p1363" } : key.privateKey;
    const signature = crypto.sign("sha256", Buffer.from(data), signer);
    return `${data}.${b64url(signature)}`;
  }

  /** An `alg: "none"` token with an empty signature part. */
  unsigned(claims = {}) {
    return `${encodeJson({ alg: "none", typ: "JWT" })}.${encodeJson(this.payload(claims))}.`;
  }

  /** `token` with `sub` changed to "attacker" but its original signature kept. */
  tamper(token) {
    const [head, , signature] = token.split(".");
    const payload = { ...decodePayload(token), sub: "attacker" };
    return `${head}.${encodeJson(payload)}.${signature}`;
  }

  /**
   * The "algorithm confusion" attack: HS256 keyed with the RSA public key's PEM text. A
   * verifier that lets the token's header pick the algorithm would accept it.
   */
  hs256WithPublicKey(claims = {}) {
    const key = this.key({ alg: "RS256" });
    const data = `${encodeJson({ alg: "HS256", typ: "JWT", kid: key.kid })}.${encodeJson(this.payload(claims))}`;
    const secret = key.publicKey.export({ type: "spki", format: "pem" });
    const signature = crypto.createHmac("sha256", secret).update(data).digest();
    return `${data}.${b64url(signature)}`;
  }

  /** Stops the server; open keep-alive sockets are cut so this returns promptly. */
  async close() {
    const closed = new Promise((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}
