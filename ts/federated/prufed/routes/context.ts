// What the PruFed server's route plugins share (routes/*.ts, registered by startFlServer in
// http-server.ts): the round machine, the token sessions and the data dir's paths, passed to each
// plugin as its options; and the pieces of every route: who asks, its round number, the schemas of
// its parameters and errors, the members-only check.
import type {FastifyRequest} from "fastify";
import {HttpError, limitErrorCodes, type TokenSessions} from "../../http-common.js";
import {flRoutes} from "../http-protocol.js";
import type {RoundMachine} from "../round-machine.js";
import type {Viewer} from "../views.js";

export interface FlRoutesContext {
    machine: RoundMachine;
    /** Open event streams and long polls: capped per token, ended when the token is revoked. */
    sessions: TokenSessions;
    dataDir: string;
    /** Uploads and parts being written (emptied at every start). */
    incoming: string;
    /** Largest upload, decompressed (bytes). */
    maxUpload: number;
    /** The end of each open event stream: all are ended when the server stops (they would otherwise hold it open). */
    closeStreams: Set<() => void>;
    log(line: string): void;
}

/** The caller's client id: its token's name. */
export const clientId = (request: FastifyRequest) => request.client!.name;

export const viewerOf = (request: FastifyRequest): Viewer => ({id: clientId(request), admin: request.client!.admin});

/** The round number of a /rounds/:n route (the schema allows digits only). */
export const roundNumber = (request: FastifyRequest) => Number((request.params as {n: string}).n);

/** The ?wait=s of a long poll, as the deadline it sets (at most 60 s from now). */
export const waitUntil = (request: FastifyRequest) => Date.now() + Math.min(60, Number((request.query as {wait?: string}).wait ?? 0)) * 1000;

/** A preHandler: round summaries, global adapters and events are for the federation's clients (and admin tokens) only. */
export function onlyMembers(ctx: FlRoutesContext) {
    return async (request: FastifyRequest) => {
        const {id, admin} = viewerOf(request);
        if (!admin && !ctx.machine.federation.clients.some((c) => c.id === id))
            throw new HttpError(403, limitErrorCodes.forbidden, `client ${id} is not registered in this federation (POST ${flRoutes.clients} first)`);
    };
}

export const roundParams = {type: "object", required: ["n"], properties: {n: {type: "string", pattern: "^[0-9]{1,6}$"}}} as const;
export const waitQuery = {type: "object", additionalProperties: false, properties: {wait: {type: "string", pattern: "^[0-9]{1,3}$"}}} as const;
const errorSchema = {type: "object", required: ["error", "code"], properties: {error: {type: "string"}, code: {type: "string"}}} as const;
export const security = [{bearer: []}];
export const errors = {400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema, 410: errorSchema, 413: errorSchema,
    422: errorSchema};
/** The 201 of a part a client sends (an upload, a secure phase's message), with the errors. */
export const accepted = {201: {type: "object", required: ["round", "accepted"], properties: {round: {type: "integer"}, accepted: {type: "boolean"}}},
    ...errors};
