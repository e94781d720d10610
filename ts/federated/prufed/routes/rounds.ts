// The open round as a client sees it: GET rounds/current (long-polled until this client has
// something to do) and GET rounds/{n}/adapter (its part of the global adapter, gzip).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import type {FastifyPluginAsync} from "fastify";
import {writeLoraAdapter} from "../../../train/adapter.js";
import {longPoll} from "../../http-common.js";
import {flRoutes} from "../http-protocol.js";
import type {CurrentRound} from "../round-machine.js";
import {clientId, errors, roundNumber, roundParams, security, waitQuery, waitUntil, type FlRoutesContext} from "./context.js";

const currentSchema = {
    type: "object", required: ["completed", "rounds", "finished", "aggregation"],
    properties: {
        round: {type: "integer"}, sampled: {type: "boolean"}, uploaded: {type: "boolean"}, deadline: {type: ["integer", "null"]},
        completed: {type: "integer"}, rounds: {type: "integer"}, finished: {type: "boolean"}, aggregation: {type: "string"},
        registered: {type: "boolean"}, secure_aggregation: {type: "boolean"},
        secure: {type: "object", required: ["phase", "phase_deadline", "threshold", "scale_bits", "joined"], properties: {
            phase: {type: "string"}, phase_deadline: {type: "number"}, threshold: {type: "integer"}, scale_bits: {type: "integer"}, joined: {type: "boolean"}}},
    },
} as const;

/** The client has something to do: train and upload (or send its keys), or stop (the federation finished). */
const ready = (c: CurrentRound) => c.finished || (Boolean(c.sampled) && !c.uploaded && (!c.secure || c.secure.phase === "keys"));

export const roundRoutes: FastifyPluginAsync<FlRoutesContext> = async (app, ctx) => {
    const {machine, sessions} = ctx;
    // long poll: ?wait=s answers as soon as this client has something to do (or the federation finished)
    app.get(flRoutes.current, {schema: {security, querystring: waitQuery, response: {200: currentSchema, ...errors}}}, async (request) => {
        const id = clientId(request);
        const until = waitUntil(request);
        if (until <= Date.now())
            return machine.currentFor(id);
        return longPoll(sessions, request, async (revoked) => {
            for (;;) {
                const c = machine.currentFor(id);
                if (ready(c) || Date.now() >= until || request.raw.destroyed || revoked.aborted)
                    return c;
                await machine.changed(until - Date.now());
            }
        });
    });

    app.get(flRoutes.adapter, {schema: {params: roundParams, security, response: errors}}, async (request, reply) => {
        const id = clientId(request);
        const file = path.join(ctx.incoming, `part-${crypto.randomBytes(6).toString("hex")}.gguf`);
        try {
            const round = machine.openRound(roundNumber(request), id);
            await writeLoraAdapter(file, machine.federation.assignment(id), [{key: "ppc_gpt.prufed.round", type: "uint32", value: round.round}]);
            const gz = zlib.gzipSync(await fs.promises.readFile(file), {level: 1});
            return reply.header("content-type", "application/octet-stream").header("content-encoding", "gzip")
                .header("x-ppc-round", String(round.round)).send(gz);
        } finally {
            await fs.promises.rm(file, {force: true});
        }
    });
};
