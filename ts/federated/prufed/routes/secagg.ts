// Secure rounds (fl server --secure-aggregation): one route pair per phase of secure-host.ts —
// keys, sealed shares, masked input, unmasking shares — each POST/PUT a client's message (checked
// and recorded in the round machine's queue), each GET the phase's answer, long-polled. Every
// request states the secure-aggregation protocol version, and every answer carries it.
import type {FastifyPluginAsync, FastifyRequest} from "fastify";
import {answerWithHeader, HttpError, longPoll} from "../../http-common.js";
import {errorCodes} from "../../protocol.js";
import {flRoutes, metricsHeader, secaggProtocol, secaggVersionHeader, type UnmaskBody} from "../http-protocol.js";
import type {RoundMachine} from "../round-machine.js";
import {SecureRoundError, type SecureRoundHost} from "../secure-host.js";
import {metricsFromHeader} from "./uploads.js";
import {accepted, clientId, errors, roundNumber, roundParams, security, waitQuery, waitUntil, type FlRoutesContext} from "./context.js";

const b64Key = {type: "string", pattern: "^[A-Za-z0-9+/]{43}=$"} as const;
const keysBody = {type: "object", additionalProperties: false, required: ["c_pub", "s_pub"], properties: {c_pub: b64Key, s_pub: b64Key}} as const;
const sharesBody = {type: "object", additionalProperties: false, required: ["boxes"],
    properties: {boxes: {type: "array", maxItems: 4096, items: {type: "object", additionalProperties: false, required: ["to", "box"],
        properties: {to: {type: "string", maxLength: 64}, box: {type: "string", maxLength: 65536, pattern: "^[A-Za-z0-9+/]*={0,2}$"}}}}}} as const;
const share = {id: {type: "string", maxLength: 64}, x: {type: "integer", minimum: 1, maximum: 65535}, y: {type: "string", pattern: "^[0-9a-f]{1,131}$"}};
// self-mask shares: one per survivor and layer it holds (null: its tensors outside any layer)
const seedShares = {type: "array", maxItems: 65536, items: {type: "object", additionalProperties: false, required: ["id", "layer", "x", "y"],
    properties: {...share, layer: {type: ["integer", "null"], minimum: 0, maximum: 65535}}}} as const;
const keyShares = {type: "array", maxItems: 4096, items: {type: "object", additionalProperties: false, required: ["id", "x", "y"], properties: share}} as const;
const unmaskBody = {type: "object", additionalProperties: false, required: ["b", "s"], properties: {b: seedShares, s: keyShares}} as const;

/** The caller and the open secure round's host: 409 without secure aggregation, 400 for another protocol version, 410/403 as openRound. */
function secureRoundOf(machine: RoundMachine, request: FastifyRequest): {id: string; h: SecureRoundHost} {
    const id = clientId(request);
    if (!machine.secure)
        throw new HttpError(409, "not_secure", "this federation does not use secure aggregation (fl server --secure-aggregation)");
    const version = request.headers[secaggVersionHeader];
    if (version !== secaggProtocol)
        throw new HttpError(400, "protocol_version", `${secaggVersionHeader} must be ${secaggProtocol} (got ${JSON.stringify(version ?? null)})`);
    const cur = machine.openRound(roundNumber(request), id);
    // the host is made by the round machine (in its queue) when the round opens
    const h = machine.secureHost(cur.round);
    if (!h)
        throw new HttpError(410, "round_closed", "no secure round is open");
    return {id, h};
}

/** A secure host's refusal as the protocol's error: 422 for an invalid message, 409 with its code otherwise. */
async function secureErrors<T>(fn: () => Promise<T>): Promise<T> {
    try {
        return await fn();
    } catch (err) {
        if (err instanceof SecureRoundError)
            throw new HttpError(err.code === "invalid" ? 422 : 409, err.code === "invalid" ? "invalid_message" : err.code, err.message);
        throw err;
    }
}

export const secaggRoutes: FastifyPluginAsync<FlRoutesContext> = async (app, ctx) => {
    const {machine, sessions} = ctx;
    answerWithHeader(app, secaggVersionHeader, secaggProtocol);
    /** A phase's GET: answers as soon as the phase has come (long poll with ?wait=s), else {ready: false}. */
    const securePoll = (view: (h: SecureRoundHost, id: string) => object | undefined) => async (request: FastifyRequest) =>
        longPoll(sessions, request, async (revoked) => {
            const until = waitUntil(request);
            for (;;) {
                const {id, h} = secureRoundOf(machine, request);
                const v = await secureErrors(async () => view(h, id));
                if (v)
                    return {ready: true, ...v};
                if (Date.now() >= until || request.raw.destroyed || revoked.aborted)
                    return {ready: false, phase: h.phase, phase_deadline: h.phaseDeadline};
                await machine.changed(until - Date.now());
            }
        });
    /** A phase's POST/PUT: the message goes to the host in the queue; the round machine moves on at once. */
    const receive = async (request: FastifyRequest, step: SecureRoundHost["phase"], bytes: number,
        submit: (h: SecureRoundHost, id: string) => Promise<unknown>) => {
        const {id, h} = secureRoundOf(machine, request);
        await machine.run(() => secureErrors(() => submit(h, id)));
        machine.emit(h.noteReceived(id, step, bytes));
        machine.kick();
        return {round: h.round, accepted: true};
    };
    const poll = () => ({schema: {params: roundParams, security, querystring: waitQuery, response: errors}});

    app.post(flRoutes.secaggKeys, {schema: {params: roundParams, security, body: keysBody, response: accepted}}, async (request, reply) => {
        const b = request.body as {c_pub: string; s_pub: string};
        return reply.code(201).send(await receive(request, "keys", 64,
            (h, id) => h.advertise(id, Buffer.from(b.c_pub, "base64"), Buffer.from(b.s_pub, "base64"))));
    });
    app.get(flRoutes.secaggRoster, poll(), securePoll((h, id) => h.rosterView(id)));
    app.post(flRoutes.secaggShares, {schema: {params: roundParams, security, body: sharesBody, response: accepted}}, async (request, reply) => {
        const boxes = (request.body as {boxes: {to: string; box: string}[]}).boxes.map((x) => ({to: x.to, box: Buffer.from(x.box, "base64")}));
        return reply.code(201).send(await receive(request, "shares", boxes.reduce((s, x) => s + x.box.length, 0), (h, id) => h.submitShares(id, boxes)));
    });
    app.get(flRoutes.secaggShares, poll(), securePoll((h, id) => h.sharesView(id)));
    app.put(flRoutes.secaggMasked, {schema: {params: roundParams, security, response: accepted}}, async (request, reply) => {
        const body = request.body as Buffer;
        if (!Buffer.isBuffer(body))
            throw new HttpError(415, errorCodes.unsupportedMediaType, "masked input is application/octet-stream (uint32 little-endian lanes in plan order)");
        const metrics = metricsFromHeader(request.headers[metricsHeader]);
        return reply.code(201).send(await receive(request, "masked", body.length, (h, id) => h.submitMasked(id, body, metrics)));
    });
    app.get(flRoutes.secaggUnmask, poll(), securePoll((h, id) => h.unmaskView(id)));
    app.post(flRoutes.secaggUnmask, {schema: {params: roundParams, security, body: unmaskBody, response: accepted}}, async (request, reply) => {
        const b = request.body as UnmaskBody;
        return reply.code(201).send(await receive(request, "unmask", JSON.stringify(b).length, (h, id) => h.submitUnmask(id, b.b, b.s)));
    });
};
