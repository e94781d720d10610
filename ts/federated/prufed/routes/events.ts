// GET /v1/fl/events: the JSON events of `fl server --json` as this client may see them (views.ts), as
// server-sent events (http-wire.ts openEventStream, the job server's conventions); the stream ends
// after `finished` (or at once when the federation is finished), when the server stops and when the
// token is revoked. The first event is `status`: the client's view of the round (GET rounds/current).
import type {FastifyPluginAsync} from "fastify";
import {openEventStream} from "../../http-common.js";
import {flRoutes} from "../http-protocol.js";
import type {FlServerEvent} from "../round-machine.js";
import {eventViewFor} from "../views.js";
import {errors, onlyMembers, security, viewerOf, type FlRoutesContext} from "./context.js";

export const eventRoutes: FastifyPluginAsync<FlRoutesContext> = async (app, ctx) => {
    const {machine} = ctx;
    app.get(flRoutes.events, {preHandler: onlyMembers(ctx), schema: {security, response: errors}}, async (request, reply) => {
        const viewer = viewerOf(request);
        const holder: {end: () => void} = {end: () => {}};
        const leave = ctx.sessions.enter(request.client!, () => holder.end());
        let unsubscribe: () => void = () => {};
        reply.hijack();
        const stream = openEventStream(reply.raw, () => {
            unsubscribe();
            ctx.closeStreams.delete(holder.end);
            leave();
        });
        holder.end = () => stream.end();
        const send = (e: FlServerEvent) => {
            const view = eventViewFor(e, viewer, ctx.dataDir);
            if (view)
                stream.send(e.event, view);
            if (e.event === "finished")
                stream.end();
        };
        ctx.closeStreams.add(holder.end);
        stream.send("status", {event: "status", ...machine.currentFor(viewer.id)});
        if (machine.federation.finished)
            return stream.end();
        unsubscribe = machine.subscribe(send);
    });
};
