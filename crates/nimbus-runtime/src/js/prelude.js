// The globals Convex bundles expect, installed once per tenant context before any tenant
// module loads (web.js adds the web platform's). Native entry point:
// __nimbus_native_syscall(op, argsJson) returns "o<result json>" or
// "e<{message, data?} json>".
(() => {
  "use strict";
  const g = globalThis;
  const native = g.__nimbus_native_syscall;
  delete g.__nimbus_native_syscall;

  // ---- syscalls ------------------------------------------------------------------
  function call(op, args, isAsync) {
    const answer = native(String(op), String(args), isAsync);
    if (answer[0] === "o") return answer.slice(1);
    const failure = JSON.parse(answer.slice(1));
    const error = new Error(failure.message);
    if (failure.data !== undefined) error.data = failure.data;
    throw error;
  }
  // In an action, async syscalls really are asynchronous: the native side records the
  // operation and returns its id; the host performs it between steps and settles the
  // promise through __nimbus_settle.
  const nativeOp = g.__nimbus_native_op;
  delete g.__nimbus_native_op;
  let actionMode = false;
  const pendingOps = new Map();
  function startOp(op, args, binary) {
    const answer = binary === undefined ? nativeOp(String(op), String(args)) : nativeOp(String(op), String(args), binary);
    if (answer[0] === "e") return Promise.reject(new Error(answer.slice(1)));
    const id = Number(answer.slice(1));
    return new Promise((resolve, reject) => pendingOps.set(id, { resolve, reject }));
  }
  g.__nimbus_settle = (id, ok, text, bytes) => {
    const pending = pendingOps.get(id);
    if (pending === undefined) return;
    pendingOps.delete(id);
    if (ok) {
      pending.resolve(bytes === undefined ? text : { text, bytes });
      return;
    }
    const failure = JSON.parse(text);
    const error = new Error(failure.message);
    if (failure.data !== undefined) error.data = failure.data;
    pending.reject(error);
  };
  g.Convex = Object.freeze({
    syscall: (op, args) => call(op, args, false),
    asyncSyscall: (op, args) => {
      if (actionMode) return startOp(op, args);
      try {
        return Promise.resolve(call(op, args, true));
      } catch (e) {
        return Promise.reject(e);
      }
    },
    jsSyscall: (op) => {
      throw new Error(`Unknown JS syscall ${op}: not supported by Nimbus`);
    },
  });

  // ---- console -------------------------------------------------------------------
  const MAX_LINES = 256;
  const MAX_LINE = 4096;
  let logs = [];
  let dropped = 0;
  function inspect(value, depth, seen) {
    switch (typeof value) {
      case "string": return depth === 0 ? `'${value}'` : `'${value}'`;
      case "number": return Object.is(value, -0) ? "-0" : String(value);
      case "bigint": return `${value}n`;
      case "boolean": return String(value);
      case "undefined": return "undefined";
      case "symbol": return value.toString();
      case "function": return `[Function: ${value.name || "(anonymous)"}]`;
    }
    if (value === null) return "null";
    if (value instanceof Error) return value.stack ? `${value.name}: ${value.message}\n${value.stack}` : `${value.name}: ${value.message}`;
    if (seen.includes(value)) return "[Circular]";
    if (depth > 2) return Array.isArray(value) ? "[Array]" : "[Object]";
    const next = seen.concat([value]);
    if (Array.isArray(value)) {
      if (value.length === 0) return "[]";
      return `[ ${value.map((v) => inspect(v, depth + 1, next)).join(", ")} ]`;
    }
    if (value instanceof ArrayBuffer) return `ArrayBuffer { byteLength: ${value.byteLength} }`;
    const keys = Object.keys(value);
    if (keys.length === 0) return "{}";
    return `{ ${keys.map((k) => `${/^[A-Za-z_$][\w$]*$/.test(k) ? k : `'${k}'`}: ${inspect(value[k], depth + 1, next)}`).join(", ")} }`;
  }
  function logLine(line) {
    if (logs.length >= MAX_LINES) dropped++;
    else logs.push(line.length > MAX_LINE ? line.slice(0, MAX_LINE) + " (truncated)" : line);
  }
  function log(level) {
    return (...args) => {
      if (logs.length >= MAX_LINES) {
        dropped++;
        return;
      }
      let line = `[${level}] ${args.map((a) => inspect(a, 0, [])).join(" ")}`;
      if (line.length > MAX_LINE) line = line.slice(0, MAX_LINE) + " (truncated)";
      logs.push(line);
    };
  }
  g.console = Object.freeze({
    log: log("LOG"), info: log("INFO"), warn: log("WARN"), error: log("ERROR"), debug: log("DEBUG"),
  });

  // ---- determinism ---------------------------------------------------------------
  let now = 0;
  let rng = [1, 2, 3, 4];
  function random() {
    // xoshiro128** over 32-bit words.
    const r = Math.imul(rotl(Math.imul(rng[1], 5), 7), 9) >>> 0;
    const t = rng[1] << 9;
    rng[2] ^= rng[0]; rng[3] ^= rng[1]; rng[1] ^= rng[2]; rng[0] ^= rng[3];
    rng[2] ^= t; rng[3] = rotl(rng[3], 11);
    return r / 4294967296;
  }
  function rotl(x, k) { return (x << k) | (x >>> (32 - k)); }
  Math.random = random;
  const RealDate = Date;
  // Queries and mutations see the time their call started; actions see the clock.
  const clock = () => (actionMode ? RealDate.now() : now);
  function NimbusDate(...args) {
    if (!new.target) return new RealDate(clock()).toString();
    return args.length === 0 ? new RealDate(clock()) : new RealDate(...args);
  }
  NimbusDate.prototype = RealDate.prototype;
  NimbusDate.now = clock;
  NimbusDate.UTC = RealDate.UTC;
  NimbusDate.parse = RealDate.parse;
  g.Date = NimbusDate;

  // ---- web-ish globals ----------------------------------------------------------
  class TextEncoder {
    get encoding() { return "utf-8"; }
    encode(input = "") {
      const s = String(input);
      const out = [];
      for (let i = 0; i < s.length; i++) {
        let c = s.codePointAt(i);
        if (c > 0xffff) i++;
        if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
        if (c < 0x80) out.push(c);
        else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
        else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      }
      return new Uint8Array(out);
    }
  }
  class TextDecoder {
    get encoding() { return "utf-8"; }
    decode(input) {
      if (input === undefined) return "";
      const b = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
      let s = "";
      for (let i = 0; i < b.length;) {
        const c = b[i++];
        let cp = 0xfffd;
        if (c < 0x80) cp = c;
        else if (c >= 0xc0 && c < 0xe0 && i < b.length) cp = ((c & 31) << 6) | (b[i++] & 63);
        else if (c >= 0xe0 && c < 0xf0 && i + 1 < b.length) { cp = ((c & 15) << 12) | ((b[i] & 63) << 6) | (b[i + 1] & 63); i += 2; }
        else if (c >= 0xf0 && i + 2 < b.length) { cp = ((c & 7) << 18) | ((b[i] & 63) << 12) | ((b[i + 1] & 63) << 6) | (b[i + 2] & 63); i += 3; }
        s += String.fromCodePoint(cp);
      }
      return s;
    }
  }
  g.TextEncoder = TextEncoder;
  g.TextDecoder = TextDecoder;
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  g.btoa = (input) => {
    const s = String(input);
    let out = "";
    for (let i = 0; i < s.length; i += 3) {
      const a = s.charCodeAt(i), b = s.charCodeAt(i + 1), c = s.charCodeAt(i + 2);
      if (a > 255 || b > 255 || c > 255) throw new Error("btoa: string contains characters outside of Latin1");
      const n = (a << 16) | ((b || 0) << 8) | (c || 0);
      out += B64[n >> 18] + B64[(n >> 12) & 63] + (i + 1 < s.length ? B64[(n >> 6) & 63] : "=") + (i + 2 < s.length ? B64[n & 63] : "=");
    }
    return out;
  };
  g.atob = (input) => {
    const s = String(input).replace(/[\s=]/g, "");
    let out = "", buffer = 0, bits = 0;
    for (const ch of s) {
      const v = B64.indexOf(ch);
      if (v < 0) throw new Error("atob: invalid base64");
      buffer = (buffer << 6) | v; bits += 6;
      if (bits >= 8) { bits -= 8; out += String.fromCharCode((buffer >> bits) & 255); }
    }
    return out;
  };
  // The web globals (web.js) are built on these; web.js removes the handle.
  // ---- invocation ----------------------------------------------------------------
  let outcome = null;
  function failure(e) {
    const sym = Symbol.for("ConvexError");
    if (e !== null && typeof e === "object" && (e[sym] === true || e.name === "ConvexError") && "data" in e) {
      const data = typeof e.data === "string" ? e.data : JSON.stringify(e.data ?? null);
      return { kind: "convexError", message: `Uncaught ConvexError: ${e.message}`, data };
    }
    if (e instanceof Error) {
      // V8's `stack` starts with the error's own "Name: message" (its toString at creation);
      // QuickJS's holds only the frames. Convex answers "Uncaught Name: message" and then the
      // frames, so V8's copy of the header goes, or every nested rethrow would repeat it.
      let frames = e.stack ? String(e.stack) : "";
      let header = null;
      try { header = String(e); } catch { /* a toString that throws: keep the stack whole */ }
      if (header !== null && frames.startsWith(header)) frames = frames.slice(header.length);
      const lines = frames.split("\n").filter((l) => l.trim()).slice(0, 20);
      const stack = lines.length > 0 ? `\n${lines.join("\n")}` : "";
      return { kind: "uncaught", message: `Uncaught ${e.name}: ${e.message}${stack}` };
    }
    return { kind: "uncaught", message: `Uncaught ${inspect(e, 0, [])}` };
  }
  g.__nimbus_begin = (seedHi, seedLo, nowMs, isAction) => {
    now = nowMs;
    actionMode = isAction === true;
    rng = [seedHi >>> 0 || 1, seedLo >>> 0 || 2, (seedHi ^ 0x9e3779b9) >>> 0, (seedLo ^ 0x85ebca6b) >>> 0];
    logs = [];
    dropped = 0;
    outcome = null;
  };
  g.__nimbus_settled = () => (outcome !== null ? "settled" : "waiting");
  g.__nimbus_finish = () => {
    if (dropped > 0) logs.push(`[WARN] ${dropped} more log lines were dropped (limit ${MAX_LINES} per call)`);
    return JSON.stringify({ outcome, logs });
  };
  // The web globals (web.js) are built on these; web.js removes the handle.
  g.__nimbus_web = {
    startOp, isAction: () => actionMode, random, inspect, log: (line) => logLine(line),
    // Makes `promise`'s value (or failure) the outcome of the running entry point.
    settleOutcome: (promise) => promise.then((o) => { outcome = o; }, (e) => { outcome = failure(e); }),
  };
  const KINDS = { query: "isQuery", mutation: "isMutation", action: "isAction" };
  // Module namespaces by path. A context serves one push of one tenant, so a module never
  // changes under it; skipping the dynamic import() saves its resolution and promise
  // ticks on every call.
  const namespaces = new Map();
  g.__nimbus_invoke = (modulePath, exportName, kind, argsJson, requestId) => {
    (async () => {
      let ns = namespaces.get(modulePath);
      if (ns === undefined) {
        ns = await import(modulePath);
        namespaces.set(modulePath, ns);
      }
      const f = ns[exportName];
      if (f === undefined || f === null) return { kind: "notFound" };
      const actual = Object.keys(KINDS).find((k) => f[KINDS[k]] === true);
      if (actual === undefined) return { kind: "notFound" };
      if (actual !== kind) return { kind: "wrongKind", actual };
      let value;
      if (kind === "query") value = await f.invokeQuery(argsJson);
      else if (kind === "mutation") value = await f.invokeMutation(argsJson);
      else value = await f.invokeAction(requestId, argsJson);
      return { kind: "ok", value: value === undefined ? "null" : String(value) };
    })().then((o) => { outcome = o; }, (e) => { outcome = failure(e); });
  };
  g.__nimbus_analyze = (pathsJson, cronsPath, authPath) => {
    const paths = JSON.parse(pathsJson);
    (async () => {
      const functions = [];
      for (const path of paths) {
        let ns;
        try {
          ns = await import(path);
        } catch (e) {
          return { kind: "moduleError", module: path, message: failure(e).message };
        }
        for (const name of Object.keys(ns)) {
          const f = ns[name];
          if (f === null || (typeof f !== "object" && typeof f !== "function")) continue;
          const kinds = Object.keys(KINDS).filter((k) => f[KINDS[k]] === true);
          if (kinds.length !== 1) continue;
          if (f.isPublic === true && f.isInternal === true) continue;
          const returns = typeof f.exportReturns === "function" ? f.exportReturns() : "null";
          functions.push({
            module: path, name, kind: kinds[0],
            visibility: f.isInternal === true ? "internal" : "public",
            args: typeof f.exportArgs === "function" ? f.exportArgs() : '{"type":"any"}',
            returns: returns === "null" || returns === undefined ? null : returns,
          });
        }
      }
      let crons = null;
      if (cronsPath !== "") {
        const ns = await import(cronsPath);
        if (ns.default && ns.default.isCrons === true) crons = ns.default.export();
      }
      // auth.config.js exports a plain object; `undefined` fields (an unset
      // process.env variable) drop out here and are reported as missing.
      let auth = null;
      if (authPath !== "") {
        const ns = await import(authPath);
        auth = JSON.stringify(ns.default === undefined ? null : ns.default);
      }
      return { kind: "ok", value: JSON.stringify({ functions, crons, auth }) };
    })().then((o) => { outcome = o; }, (e) => { outcome = failure(e); });
  };
  g.__nimbus_schema = (path) => {
    (async () => {
      const ns = await import(path);
      if (!ns.default || typeof ns.default.export !== "function") {
        return { kind: "uncaught", message: "schema.js must `export default defineSchema(...)`" };
      }
      return { kind: "ok", value: ns.default.export() };
    })().then((o) => { outcome = o; }, (e) => { outcome = failure(e); });
  };
})();
