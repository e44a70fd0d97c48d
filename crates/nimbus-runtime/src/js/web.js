// Web platform globals: URL, URLSearchParams, Headers, Request, Response, fetch, timers,
// AbortController, crypto. Evaluated right after prelude.js, whose internals arrive in
// globalThis.__nimbus_web. What needs exactness or secrecy is native: URL parsing (the
// `url` crate), digests and random bytes. In queries and mutations, fetch and timers throw,
// as in Convex; everything else works everywhere.
(() => {
  "use strict";
  const g = globalThis;
  const { startOp, isAction, random, inspect, log, settleOutcome } = g.__nimbus_web;
  delete g.__nimbus_web;
  const natives = {
    urlParse: g.__nimbus_url_parse, urlSet: g.__nimbus_url_set,
    digest: g.__nimbus_digest, randomHex: g.__nimbus_random_hex,
  };
  for (const name of ["__nimbus_url_parse", "__nimbus_url_set", "__nimbus_digest", "__nimbus_random_hex"]) delete g[name];
  function native(answer, ErrorType = TypeError) {
    if (answer[0] === "o") return answer.slice(1);
    throw new ErrorType(answer.slice(1));
  }
  const S = Symbol("nimbus.internal");
  const define = (name, value) => Object.defineProperty(g, name, { value, writable: true, configurable: true, enumerable: false });

  // ---- bytes ---------------------------------------------------------------------
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  // One character per byte: how binary data crosses to the host.
  function binaryString(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return s;
  }
  function hexBytes(hex) {
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }
  function viewBytes(source, what) {
    if (source instanceof ArrayBuffer) return new Uint8Array(source);
    if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    throw new TypeError(`${what} must be an ArrayBuffer or an ArrayBufferView`);
  }

  class DOMException extends Error {
    constructor(message = "", name = "Error") {
      super(message);
      Object.defineProperty(this, "name", { value: name, configurable: true, writable: true });
    }
  }
  define("DOMException", DOMException);

  // ---- events and aborting -------------------------------------------------------
  class Event {
    constructor(type, init = {}) {
      this.type = String(type);
      this.bubbles = Boolean(init.bubbles);
      this.cancelable = Boolean(init.cancelable);
      this.defaultPrevented = false;
      this.target = null;
      this.currentTarget = null;
      this.timeStamp = Date.now();
    }
    preventDefault() { if (this.cancelable) this.defaultPrevented = true; }
    stopPropagation() {}
    stopImmediatePropagation() {}
  }
  class EventTarget {
    constructor() { this[S] = { listeners: new Map() }; }
    addEventListener(type, listener, options) {
      if (listener === null || listener === undefined) return;
      const list = this[S].listeners.get(type) ?? [];
      if (list.some((l) => l.listener === listener)) return;
      list.push({ listener, once: typeof options === "object" && options !== null && options.once === true });
      this[S].listeners.set(type, list);
    }
    removeEventListener(type, listener) {
      const list = this[S].listeners.get(type);
      if (list) this[S].listeners.set(type, list.filter((l) => l.listener !== listener));
    }
    dispatchEvent(event) {
      event.target = this;
      event.currentTarget = this;
      const handler = this[`on${event.type}`];
      const list = (this[S].listeners.get(event.type) ?? []).slice();
      const run = (f) => {
        try {
          if (typeof f === "function") f.call(this, event);
          else if (f && typeof f.handleEvent === "function") f.handleEvent(event);
        } catch (e) {
          log(`[ERROR] Uncaught exception in a ${event.type} listener: ${inspect(e, 0, [])}`);
        }
      };
      if (typeof handler === "function") run(handler);
      for (const l of list) {
        if (l.once) this.removeEventListener(event.type, l.listener);
        run(l.listener);
      }
      return !event.defaultPrevented;
    }
  }
  define("Event", Event);
  define("EventTarget", EventTarget);

  const CREATE = Symbol("nimbus.create");
  class AbortSignal extends EventTarget {
    constructor(key) {
      if (key !== CREATE) throw new TypeError("Illegal constructor");
      super();
      this[S].aborted = false;
      this[S].reason = undefined;
      this.onabort = null;
    }
    get aborted() { return this[S].aborted; }
    get reason() { return this[S].reason; }
    throwIfAborted() { if (this.aborted) throw this.reason; }
    static abort(reason) {
      const signal = new AbortSignal(CREATE);
      abortSignal(signal, reason);
      return signal;
    }
    static timeout(ms) {
      const signal = new AbortSignal(CREATE);
      g.setTimeout(() => abortSignal(signal, new DOMException("The operation timed out.", "TimeoutError")), ms);
      return signal;
    }
    static any(signals) {
      const signal = new AbortSignal(CREATE);
      for (const s of signals) {
        if (s.aborted) { abortSignal(signal, s.reason); return signal; }
        s.addEventListener("abort", () => abortSignal(signal, s.reason), { once: true });
      }
      return signal;
    }
  }
  function abortSignal(signal, reason) {
    if (signal[S].aborted) return;
    signal[S].aborted = true;
    signal[S].reason = reason === undefined ? new DOMException("This operation was aborted", "AbortError") : reason;
    signal.dispatchEvent(new Event("abort"));
  }
  class AbortController {
    constructor() { this[S] = new AbortSignal(CREATE); }
    get signal() { return this[S]; }
    abort(reason) { abortSignal(this[S], reason); }
  }
  define("AbortSignal", AbortSignal);
  define("AbortController", AbortController);

  // ---- timers (actions only) -----------------------------------------------------
  let nextTimer = 1;
  const timers = new Map();
  function onlyInActions(name) {
    if (!isAction()) throw new Error(`Can't use ${name} in queries and mutations. Please consider using an action.`);
  }
  function schedule(callback, ms, args, repeat) {
    const handle = nextTimer++;
    const delay = Math.max(0, Math.min(Number(ms) || 0, 2147483647));
    const arm = () => {
      startOp("nimbus/sleep", JSON.stringify({ ms: delay })).then(() => {
        if (!timers.has(handle)) return;
        if (!repeat) timers.delete(handle);
        try {
          if (typeof callback === "function") callback(...args);
        } catch (e) {
          log(`[ERROR] Uncaught exception in a timer callback: ${inspect(e, 0, [])}`);
        }
        if (repeat && timers.has(handle)) arm();
      }, (e) => {
        timers.delete(handle);
        log(`[ERROR] A timer failed: ${e.message}`);
      });
    };
    timers.set(handle, true);
    arm();
    return handle;
  }
  define("setTimeout", (callback, ms, ...args) => { onlyInActions("setTimeout"); return schedule(callback, ms, args, false); });
  define("setInterval", (callback, ms, ...args) => { onlyInActions("setInterval"); return schedule(callback, Math.max(Number(ms) || 0, 1), args, true); });
  define("clearTimeout", (handle) => { timers.delete(handle); });
  define("clearInterval", (handle) => { timers.delete(handle); });
  define("queueMicrotask", (f) => { Promise.resolve().then(f); });
  define("performance", Object.freeze({ now: () => Date.now(), timeOrigin: 0 }));

  // ---- URL -----------------------------------------------------------------------
  const FORM_UNRESERVED = /[!'()~]/g;
  function formEncode(s) {
    return encodeURIComponent(s).replace(FORM_UNRESERVED, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).replace(/%20/g, "+");
  }
  function formDecode(s) {
    const text = s.replace(/\+/g, " ");
    try { return decodeURIComponent(text); } catch { return text; }
  }
  class URLSearchParams {
    constructor(init = "") {
      // `update` writes the list back to the URL that owns it (see paramsOf).
      this[S] = { list: [], update: () => {} };
      if (init instanceof URLSearchParams) this[S].list = init[S].list.map(([k, v]) => [k, v]);
      else if (typeof init === "object" && init !== null && typeof init[Symbol.iterator] === "function") {
        for (const pair of init) {
          const entry = Array.from(pair);
          if (entry.length !== 2) throw new TypeError("Each query pair must be an iterable [name, value] tuple");
          this[S].list.push([String(entry[0]), String(entry[1])]);
        }
      } else if (typeof init === "object" && init !== null) {
        for (const key of Object.keys(init)) this[S].list.push([key, String(init[key])]);
      } else this[S].list = parseQuery(String(init));
    }
    get size() { return this[S].list.length; }
    append(name, value) { this[S].list.push([String(name), String(value)]); this[S].update(); }
    delete(name, value) {
      this[S].list = this[S].list.filter(([k, v]) => !(k === String(name) && (value === undefined || v === String(value))));
      this[S].update();
    }
    get(name) { const found = this[S].list.find(([k]) => k === String(name)); return found ? found[1] : null; }
    getAll(name) { return this[S].list.filter(([k]) => k === String(name)).map(([, v]) => v); }
    has(name, value) { return this[S].list.some(([k, v]) => k === String(name) && (value === undefined || v === String(value))); }
    set(name, value) {
      const key = String(name);
      const i = this[S].list.findIndex(([k]) => k === key);
      if (i < 0) this[S].list.push([key, String(value)]);
      else {
        this[S].list[i][1] = String(value);
        this[S].list = this[S].list.filter(([k], j) => j <= i || k !== key);
      }
      this[S].update();
    }
    sort() { this[S].list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)); this[S].update(); }
    forEach(f, thisArg) { for (const [k, v] of this[S].list) f.call(thisArg, v, k, this); }
    *entries() { for (const [k, v] of this[S].list) yield [k, v]; }
    *keys() { for (const [k] of this[S].list) yield k; }
    *values() { for (const [, v] of this[S].list) yield v; }
    [Symbol.iterator]() { return this.entries(); }
    toString() { return this[S].list.map(([k, v]) => `${formEncode(k)}=${formEncode(v)}`).join("&"); }
  }
  function parseQuery(query) {
    const text = query.startsWith("?") ? query.slice(1) : query;
    if (text === "") return [];
    return text.split("&").filter((p) => p !== "").map((part) => {
      const eq = part.indexOf("=");
      return eq < 0 ? [formDecode(part), ""] : [formDecode(part.slice(0, eq)), formDecode(part.slice(eq + 1))];
    });
  }
  function paramsOf(url) {
    const params = new URLSearchParams(url[S].parts.search);
    params[S].update = () => {
      const search = params.toString();
      url[S].parts = JSON.parse(native(natives.urlSet(url[S].parts.href, "search", search)));
    };
    return params;
  }
  class URL {
    constructor(input, base) {
      const parts = JSON.parse(native(natives.urlParse(String(input), base === undefined ? "" : String(base))));
      this[S] = { parts, params: null };
      this[S].params = paramsOf(this);
    }
    static canParse(input, base) { try { new URL(input, base); return true; } catch { return false; } }
    static parse(input, base) { try { return new URL(input, base); } catch { return null; } }
    get searchParams() { return this[S].params; }
    get origin() { return this[S].parts.origin; }
    toString() { return this[S].parts.href; }
    toJSON() { return this[S].parts.href; }
  }
  for (const field of ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash"]) {
    Object.defineProperty(URL.prototype, field, {
      get() { return this[S].parts[field]; },
      set(value) {
        this[S].parts = JSON.parse(native(natives.urlSet(this[S].parts.href, field, String(value))));
        if (field === "search" || field === "href") this[S].params[S].list = parseQuery(this[S].parts.search);
      },
      enumerable: true, configurable: true,
    });
  }
  define("URL", URL);
  define("URLSearchParams", URLSearchParams);

  // ---- Headers -------------------------------------------------------------------
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  function headerName(name) {
    const n = String(name);
    if (!TOKEN.test(n)) throw new TypeError(`Invalid header name: ${JSON.stringify(n)}`);
    return n.toLowerCase();
  }
  function headerValue(value) {
    const v = String(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
    if (/[\0\r\n]/.test(v)) throw new TypeError(`Invalid header value: ${JSON.stringify(v)}`);
    return v;
  }
  class Headers {
    constructor(init) {
      this[S] = new Map();
      if (init === undefined || init === null) return;
      if (init instanceof Headers) {
        for (const [k, values] of init[S]) this[S].set(k, values.slice());
      } else if (typeof init[Symbol.iterator] === "function") {
        for (const pair of init) {
          const entry = Array.from(pair);
          if (entry.length !== 2) throw new TypeError("Each header pair must be an iterable [name, value] tuple");
          this.append(entry[0], entry[1]);
        }
      } else if (typeof init === "object") {
        for (const key of Object.keys(init)) this.append(key, init[key]);
      } else throw new TypeError("Headers must be an object, an array of pairs or a Headers");
    }
    append(name, value) {
      const key = headerName(name);
      const values = this[S].get(key) ?? [];
      values.push(headerValue(value));
      this[S].set(key, values);
    }
    set(name, value) { this[S].set(headerName(name), [headerValue(value)]); }
    get(name) {
      const values = this[S].get(headerName(name));
      return values === undefined ? null : values.join(", ");
    }
    getSetCookie() { return (this[S].get("set-cookie") ?? []).slice(); }
    has(name) { return this[S].has(headerName(name)); }
    delete(name) { this[S].delete(headerName(name)); }
    *entries() {
      for (const key of [...this[S].keys()].sort()) {
        if (key === "set-cookie") for (const v of this[S].get(key)) yield [key, v];
        else yield [key, this[S].get(key).join(", ")];
      }
    }
    *keys() { for (const [k] of this.entries()) yield k; }
    *values() { for (const [, v] of this.entries()) yield v; }
    forEach(f, thisArg) { for (const [k, v] of this.entries()) f.call(thisArg, v, k, this); }
    [Symbol.iterator]() { return this.entries(); }
  }
  define("Headers", Headers);

  // ---- bodies --------------------------------------------------------------------
  // Turns a body init into bytes and the content type it implies.
  function extractBody(body) {
    if (body === undefined || body === null) return { bytes: null, type: null };
    if (typeof body === "string") return { bytes: encoder.encode(body), type: "text/plain;charset=UTF-8" };
    if (body instanceof URLSearchParams) return { bytes: encoder.encode(body.toString()), type: "application/x-www-form-urlencoded;charset=UTF-8" };
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return { bytes: viewBytes(body, "body").slice(), type: null };
    if (typeof body === "object" && typeof body.getReader === "function") {
      throw new TypeError("Streaming bodies (ReadableStream) are not supported by Nimbus; pass a string, an ArrayBuffer or a typed array");
    }
    return { bytes: encoder.encode(String(body)), type: "text/plain;charset=UTF-8" };
  }
  const BodyMixin = {
    get bodyUsed() { return this[S].used; },
    get body() { return null; },
    async arrayBuffer() { return takeBody(this).buffer; },
    async bytes() { return takeBody(this); },
    async text() { return decoder.decode(takeBody(this)); },
    async json() { return JSON.parse(decoder.decode(takeBody(this))); },
    async blob() { throw new TypeError("Blob bodies are not supported by Nimbus; use arrayBuffer() or text()"); },
    async formData() { throw new TypeError("FormData bodies are not supported by Nimbus; use text() or json()"); },
  };
  function takeBody(message) {
    if (message[S].used) throw new TypeError("Body is unusable: the body has already been read");
    message[S].used = true;
    const bytes = message[S].bytes;
    return bytes === null ? new Uint8Array(0) : bytes.slice();
  }
  function mixBody(cls) {
    for (const key of Object.getOwnPropertyNames(BodyMixin)) {
      Object.defineProperty(cls.prototype, key, Object.getOwnPropertyDescriptor(BodyMixin, key));
    }
  }

  // ---- Request / Response --------------------------------------------------------
  const METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"];
  class Request {
    constructor(input, init = {}) {
      const from = input instanceof Request ? input : null;
      const url = from ? from.url : new URL(String(input)).href;
      let method = init.method !== undefined ? String(init.method) : from ? from.method : "GET";
      if (METHODS.includes(method.toUpperCase())) method = method.toUpperCase();
      if (!TOKEN.test(method)) throw new TypeError(`Invalid method: ${JSON.stringify(method)}`);
      const headers = new Headers(init.headers !== undefined ? init.headers : from ? from.headers : undefined);
      let bytes = from ? from[S].bytes : null;
      if (init.body !== undefined && init.body !== null) {
        if (method === "GET" || method === "HEAD") throw new TypeError("Request with GET/HEAD method cannot have body.");
        const body = extractBody(init.body);
        bytes = body.bytes;
        if (body.type !== null && !headers.has("content-type")) headers.set("content-type", body.type);
      }
      const redirect = init.redirect ?? (from ? from.redirect : "follow");
      if (!["follow", "manual", "error"].includes(redirect)) throw new TypeError(`Invalid redirect mode: ${redirect}`);
      this[S] = { url, method, headers, bytes, used: false, redirect, signal: init.signal ?? (from ? from.signal : null) ?? new AbortController().signal };
    }
    get url() { return this[S].url; }
    get method() { return this[S].method; }
    get headers() { return this[S].headers; }
    get redirect() { return this[S].redirect; }
    get signal() { return this[S].signal; }
    clone() {
      if (this[S].used) throw new TypeError("Request.clone: the body has already been read");
      return new Request(this);
    }
  }
  mixBody(Request);
  define("Request", Request);

  class Response {
    constructor(body = null, init = {}) {
      const status = init.status === undefined ? 200 : Number(init.status);
      if (!Number.isInteger(status) || status < 200 || status > 599) throw new RangeError(`Response status must be an integer from 200 to 599, got ${init.status}`);
      const headers = new Headers(init.headers);
      const extracted = extractBody(body);
      if (extracted.bytes !== null && [204, 205, 304].includes(status)) throw new TypeError(`Response with status ${status} cannot have a body`);
      if (extracted.type !== null && !headers.has("content-type")) headers.set("content-type", extracted.type);
      this[S] = { status, statusText: init.statusText === undefined ? "" : String(init.statusText), headers, bytes: extracted.bytes, used: false, url: "", redirected: false, type: "default" };
    }
    get status() { return this[S].status; }
    get statusText() { return this[S].statusText; }
    get ok() { return this[S].status >= 200 && this[S].status < 300; }
    get headers() { return this[S].headers; }
    get url() { return this[S].url; }
    get redirected() { return this[S].redirected; }
    get type() { return this[S].type; }
    clone() {
      if (this[S].used) throw new TypeError("Response.clone: the body has already been read");
      const copy = Object.create(Response.prototype);
      copy[S] = { ...this[S], headers: new Headers(this[S].headers) };
      return copy;
    }
    static json(data, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(data), { ...init, headers });
    }
    static error() {
      const response = Object.create(Response.prototype);
      response[S] = { status: 0, statusText: "", headers: new Headers(), bytes: null, used: false, url: "", redirected: false, type: "error" };
      return response;
    }
    static redirect(url, status = 302) {
      if (![301, 302, 303, 307, 308].includes(status)) throw new RangeError(`Invalid redirect status ${status}`);
      return new Response(null, { status, headers: { location: new URL(String(url)).href } });
    }
  }
  mixBody(Response);
  define("Response", Response);

  // ---- fetch (actions only) ------------------------------------------------------
  async function fetch(input, init) {
    onlyInActions("fetch()");
    const request = new Request(input, init);
    const signal = request.signal;
    signal.throwIfAborted();
    const meta = JSON.stringify({ url: request.url, method: request.method, headers: [...request.headers], redirect: request.redirect });
    const bytes = request[S].bytes;
    const operation = startOp("nimbus/fetch", meta, bytes === null ? undefined : binaryString(bytes));
    const answer = await new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      operation.then((value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      }, (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(new TypeError(`fetch failed: ${error.message}`));
      });
    });
    const info = JSON.parse(answer.text);
    const response = Object.create(Response.prototype);
    response[S] = {
      status: info.status, statusText: info.statusText, headers: new Headers(info.headers),
      bytes: new Uint8Array(answer.bytes), used: false, url: info.url, redirected: info.redirected, type: "basic",
    };
    return response;
  }
  define("fetch", fetch);

  // ---- HTTP actions --------------------------------------------------------------
  // Entry point of an HTTP action: routes the request with `http.js`'s default export (an
  // httpRouter) and makes the handler's Response the outcome: status, headers and the
  // body as a binary string.
  define("__nimbus_http", (metaJson, body) => {
    settleOutcome((async () => {
      const meta = JSON.parse(metaJson);
      const router = (await import("http.js")).default;
      if (router === null || typeof router !== "object" || router.isRouter !== true) {
        return { kind: "uncaught", message: "convex/http.js must `export default` an httpRouter()" };
      }
      const hasBody = meta.method !== "GET" && meta.method !== "HEAD";
      const request = new Request(meta.url, { method: meta.method, headers: meta.headers, body: hasBody ? new Uint8Array(body) : undefined });
      const match = router.lookup(meta.pathname, meta.method);
      const response = match === null
        ? new Response(`No HttpAction routed for ${meta.pathname}`, { status: 404 })
        : await match[0].invokeHttpAction(request);
      if (!(response instanceof Response)) {
        return { kind: "uncaught", message: `The HTTP action for ${meta.method} ${meta.pathname} did not return a Response` };
      }
      const bytes = response[S].bytes;
      return { kind: "ok", value: JSON.stringify({ status: response.status, headers: [...response.headers], body: bytes === null ? "" : binaryString(bytes) }) };
    })());
  });

  // ---- crypto --------------------------------------------------------------------
  // Queries and mutations draw from their seeded generator (results are reproducible, as
  // Convex makes them); actions draw from the operating system's.
  function randomBytes(n) {
    if (isAction()) return hexBytes(native(natives.randomHex(n), DOMException));
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(random() * 256);
    return out;
  }
  const subtle = Object.freeze({
    async digest(algorithm, data) {
      const name = typeof algorithm === "string" ? algorithm : algorithm && algorithm.name;
      const bytes = viewBytes(data, "data");
      return hexBytes(native(natives.digest(String(name), binaryString(bytes)), DOMException)).buffer;
    },
  });
  define("crypto", Object.freeze({
    getRandomValues(array) {
      if (!ArrayBuffer.isView(array) || array instanceof Float32Array || array instanceof Float64Array || array instanceof DataView) {
        throw new TypeError("getRandomValues takes an integer typed array");
      }
      new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(randomBytes(array.byteLength));
      return array;
    },
    randomUUID() {
      const h = randomBytes(16);
      h[6] = (h[6] & 0x0f) | 0x40; h[8] = (h[8] & 0x3f) | 0x80;
      const x = Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
      return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
    },
    subtle,
  }));
})();
