// A raw client of the Convex sync protocol (docs/http-api.md, spec §6) for end-to-end tests
// that need to send what the official clients never send: huge or malformed messages, floods
// of subscriptions, removes of unknown queries, connections from another source address.
//
// `openSync(tenantUrl)` opens `<tenantUrl>/api/1.48.0/sync` and resolves to a socket object
// that records every message the server sends (parsed JSON) and the close; waits are bounded.
// A refused upgrade (e.g. 429) rejects with an error carrying `status` and `body`.
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { withTimeout } from "./harness.mjs";

export const SYNC_PATH = "/api/1.48.0/sync";
const WAIT_MS = 30_000;

/** The `StateVersion` a new socket starts at (spec §6.2). */
export const ZERO_VERSION = { querySet: 0, identity: 0, ts: "AAAAAAAAAAA=" };

/**
 * A `ws` WebSocket class whose connections leave from `localAddress` (e.g. "127.0.0.2"), so
 * the server sees another client address. Usable as `webSocketConstructor` of ConvexClient.
 */
export function webSocketFrom(localAddress) {
  return class extends WebSocket {
    constructor(address, protocols, options) {
      super(address, protocols, { ...options, localAddress });
    }
  };
}

/** The `Connect` message (spec §6.3); `sessionId` defaults to a fresh UUID. */
export function connectMessage({ sessionId = randomUUID(), connectionCount = 0 } = {}) {
  return { type: "Connect", sessionId, connectionCount, lastCloseReason: null, clientTs: Date.now() };
}

/**
 * Opens a sync socket to a tenant URL (`http://127.0.0.1:<port>/t/<name>`).
 * Options: `localAddress` (source address), `origin` (the `Origin` header a browser page
 * would send), `waitMs` (default for every wait, 30 s),
 * `maxPayload` (largest incoming message, default 64 MiB).
 */
export async function openSync(tenantUrl, { localAddress, origin, waitMs = WAIT_MS, maxPayload = 64 << 20 } = {}) {
  const url = tenantUrl.replace(/^http/, "ws") + SYNC_PATH;
  const ws = new WebSocket(url, { localAddress, origin, maxPayload });
  const messages = [];
  let closed = null;
  const waiters = [];
  const wake = () => {
    for (const w of [...waiters]) {
      if (w.check()) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  ws.on("message", (data, isBinary) => {
    let parsed;
    try {
      parsed = JSON.parse(data.toString());
    } catch {
      parsed = { type: "(not JSON)", binary: isBinary, text: data.toString().slice(0, 200) };
    }
    messages.push(parsed);
    wake();
  });
  ws.on("close", (code, reason) => {
    closed = { code, reason: reason.toString() };
    wake();
  });
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("unexpected-response", (_req, res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          let body;
          try {
            body = JSON.parse(text);
          } catch {
            body = undefined;
          }
          const error = new Error(`upgrade refused: HTTP ${res.statusCode} ${text}`);
          Object.assign(error, { status: res.statusCode, headers: res.headers, body, text });
          reject(error);
        });
        res.on("error", reject);
      });
      ws.once("error", reject);
    }),
    waitMs,
    `opening ${url}`,
  ).catch((error) => {
    ws.terminate();
    throw error;
  });
  // Errors after the upgrade (e.g. a send on a socket the server closed) show up as the close.
  ws.on("error", () => {});

  const waitFor = (check, what, ms = waitMs) =>
    check() ? Promise.resolve() : withTimeout(new Promise((resolve) => waiters.push({ check, resolve })), ms, what);

  return {
    ws,
    /** Every message received so far, in order. */
    messages,
    /** `{code, reason}` once the socket closed, else null. */
    get closeInfo() {
      return closed;
    },
    get isOpen() {
      return closed === null && ws.readyState === WebSocket.OPEN;
    },
    /** Sends a message (an object as JSON, a string as is); a no-op once the socket is closed. */
    send(message) {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(typeof message === "string" ? message : JSON.stringify(message));
      }
    },
    /** Sends `Connect` (see connectMessage for the options). */
    connect(options) {
      this.send(connectMessage(options));
    },
    /** Waits until `check()` holds (re-checked on every message and on the close). */
    waitFor,
    /** Waits for the first message matching `pred` and returns it. */
    async message(pred, what = "a matching message", ms = waitMs) {
      await waitFor(() => messages.some(pred), what, ms);
      return messages.find(pred);
    },
    /** Waits for the server (or the network) to close the socket; returns `{code, reason}`. */
    async closed(ms = waitMs) {
      await waitFor(() => closed !== null, "the socket to close", ms);
      return closed;
    },
    /** Closes the socket from this side (immediately, without a closing handshake). */
    close() {
      ws.terminate();
    },
  };
}
