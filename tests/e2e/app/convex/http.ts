import { httpRouter } from "convex/server";
import { httpAction } from "./_generated/server";
import { api, internal } from "./_generated/api";

// HTTP actions (issue 15), served on `nimbus serve --site-listen`.

declare const process: { env: Record<string, string | undefined> };

const http = httpRouter();

const cors = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
  "Access-Control-Allow-Headers": "Content-Type",
};

http.route({
  path: "/notes",
  method: "GET",
  handler: httpAction(async (ctx, request) => {
    const owner = new URL(request.url).searchParams.get("owner") ?? "site";
    const count = await ctx.runQuery(api.actions.countNotes, { owner });
    return Response.json({ owner, count, site: process.env.CONVEX_SITE_URL ?? null }, { headers: cors });
  }),
});

http.route({
  path: "/notes",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    const { owner, text } = await request.json();
    const id = await ctx.runMutation(internal.actions.addNote, { owner, text });
    return new Response(JSON.stringify({ id }), { status: 201, headers: { ...cors, "content-type": "application/json" } });
  }),
});

// A CORS preflight, as the Convex docs write one.
http.route({
  path: "/notes",
  method: "OPTIONS",
  handler: httpAction(async () => new Response(null, { status: 204, headers: { ...cors, "Access-Control-Max-Age": "86400" } })),
});

http.route({
  pathPrefix: "/files/",
  method: "GET",
  handler: httpAction(async (_ctx, request) => new Response(`file ${new URL(request.url).pathname.split("/files/")[1]}`)),
});

http.route({
  path: "/size",
  method: "POST",
  handler: httpAction(async (_ctx, request) => new Response(String((await request.arrayBuffer()).byteLength))),
});

http.route({
  path: "/fail",
  method: "GET",
  handler: httpAction(async () => {
    throw new Error("the handler failed on purpose");
  }),
});

// For engines.test.mjs, which compares HTTP actions on V8 and on QuickJS: a route that
// echoes the request as the handler sees it (GET, POST, PUT, PATCH and DELETE), and one
// whose response (status, headers, body) is chosen by `?kind=`.
const echo = httpAction(async (_ctx, request) => {
  const url = new URL(request.url);
  const text = await request.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON: `text` shows it.
  }
  return Response.json(
    {
      method: request.method,
      path: url.pathname,
      query: pairs(url.searchParams),
      headers: pairs(request.headers),
      text,
      json,
      echoEnv: process.env.ECHO_ENV ?? null,
    },
    { headers: { "x-echo": "yes" } },
  );
});
for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE"] as const) {
  http.route({ pathPrefix: "/echo/", method, handler: echo });
}

http.route({
  path: "/respond",
  method: "GET",
  handler: httpAction(async (_ctx, request) => {
    const kind = new URL(request.url).searchParams.get("kind");
    switch (kind) {
      case "text": {
        const headers = new Headers({ "content-type": "text/plain; charset=utf-8" });
        headers.append("x-multi", "one");
        headers.append("x-multi", "two");
        return new Response("short and stout \u2615", { status: 418, statusText: "I'm a teapot", headers });
      }
      case "json":
        return Response.json({ created: true, n: 1.5, list: [1, "two", null] }, { status: 201 });
      case "bytes":
        return new Response(new Uint8Array([0, 1, 2, 254, 255]), { headers: { "content-type": "application/octet-stream" } });
      case "empty":
        return new Response(null, { status: 204 });
      case "redirect":
        return Response.redirect("https://example.com/elsewhere", 307);
      default:
        return new Response(`unknown kind ${kind}`, { status: 400 });
    }
  }),
});

export default http;

/** Name and value pairs, in iteration order (forEach: the apps' tsconfig has no DOM.Iterable). */
function pairs(list: { forEach(fn: (value: string, name: string) => void): void }): [string, string][] {
  const out: [string, string][] = [];
  list.forEach((value, name) => out.push([name, value]));
  return out;
}
