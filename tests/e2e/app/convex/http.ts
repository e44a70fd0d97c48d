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

export default http;
