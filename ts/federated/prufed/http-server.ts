// `ppc-gpt fl server`: the PruFed round state machine (rounds.ts, FederationServer) behind HTTP, on
// the issue-11 framework's conventions: Fastify with a JSON schema on every body, bearer tokens
// checked against the same SQLite store (`ppc-gpt server token create --data-dir D`), errors as
// {error, code}, gzip on the wire, OpenAPI at /v1/openapi.json. A client is its token's name.
// Every state change goes through one queue (the state machine is not re-entrant); a timer opens
// rounds when enough clients registered and closes them at quorum or deadline. All state lives in
// the data dir (state.json, rounds/, uploads/), so a server killed -9 resumes the open round.
// With --secure-aggregation every round is a secure round (secure-host.ts): clients send keys,
// sealed shares, masked matrices and unmasking shares instead of an upload; its journal in
// secagg/round-N/ lets a restarted server resume it too.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import {Readable, Transform} from "node:stream";
import {pipeline} from "node:stream/promises";
import type {FastifyInstance, FastifyReply, FastifyRequest} from "fastify";
import {writeLoraAdapter} from "../../train/adapter.js";
import {errorCodes, routes as fedRoutes} from "../protocol.js";
import {claimDataDir} from "../server.js";
import {SqliteJobStore} from "../store.js";
import {checkCleartextListen, createProtocolApp, HttpError, httpLimitDefaults, limitErrorCodes, longPoll, openEventStream, TokenSessions,
    type HttpLimits} from "../http-common.js";
import {makePrivateDir} from "../private-dir.js";
import {checkModelShapes, UploadRejected} from "./align.js";
import {flProtocol, flRoutes, metricsHeader, secaggProtocol, secaggVersionHeader, type SecureRoundStatus, type UnmaskBody} from "./http-protocol.js";
import {SecureRoundError, SecureRoundHost, secureRoundDir, type SecureHostEvent} from "./secure-host.js";
import {roundsSvg} from "./plot.js";
import {configDifferences, FederationServer, LateUpload, roundFile, type FederationConfig, type RoundSummary, type UploadMetrics} from "./rounds.js";
import {eventViewFor, roundViewFor, type Viewer} from "./views.js";

export {flRoutes, metricsHeader};

export type FlServerEvent =
    | {event: "registered"; client: string; layers: number[]; weight: number}
    | {event: "round_started"; round: number; sampled: string[]; deadline: number | null}
    | {event: "upload_accepted"; round: number; client: string; bytes: number}
    | {event: "upload_rejected"; round: number; client: string; code: string; error: string}
    | {event: "round_closed"; round: number; aggregated: boolean; clients: RoundSummary["clients"]; missing: string[]; note?: string; file: string;
        secure?: RoundSummary["secure"]}
    | {event: "finished"; rounds: number}
    | SecureHostEvent;

export interface FlServerOptions {
    dataDir: string;
    /** The federation (a new data dir); ignored when the data dir already holds one (it is resumed). */
    config: FederationConfig;
    host?: string;
    port?: number;
    tls?: {cert: string; key: string};
    /** Serve plain HTTP on an address off loopback (a warning is logged); without it, such a host needs tls. */
    insecure?: boolean;
    /** Body, timeout, stream and rate limits (http-common.ts httpLimitDefaults). */
    limits?: Partial<HttpLimits>;
    /** accuracy by round, one line per client depth, rewritten after every round */
    plot?: string;
    onEvent?: (e: FlServerEvent) => void;
    log?: (line: string) => void;
    /** Timer period of the round machine (ms, default 200). */
    tickMs?: number;
}

export interface FlServer {
    app: FastifyInstance;
    url: string;
    federation: FederationServer;
    /** The open secure round's phase (after a restart: the phase its journal was replayed to), or null. */
    securePhase(): string | null;
    /** Resolves when every round is closed. */
    done: Promise<void>;
    close(): Promise<void>;
}

const registerSchema = {
    type: "object", additionalProperties: false, required: ["original_layers", "weight", "r", "lora_alpha"],
    properties: {
        original_layers: {type: "array", minItems: 1, maxItems: 4096, items: {type: "integer", minimum: 0}},
        weight: {type: "number", exclusiveMinimum: 0},
        r: {type: "integer", minimum: 1, maximum: 4096},
        lora_alpha: {type: "number", exclusiveMinimum: 0},
        // Optional (curl users may leave it out): the model's layer matrices in base numbering -> [nIn, nOut].
        tensors: {type: "object", maxProperties: 65536,
            additionalProperties: {type: "array", minItems: 2, maxItems: 2, items: {type: "integer", minimum: 1}}},
    },
} as const;

const registeredSchema = {type: "object", required: ["id", "rejoined", "protocol", "secure_aggregation"], properties: {id: {type: "string"},
    rejoined: {type: "boolean"}, protocol: {type: "string"}, secure_aggregation: {type: "boolean"}, secagg_protocol: {type: "string"}}} as const;

/** `fl server` started on a data dir whose saved configuration differs from its flags: it names each difference. */
export class ConfigMismatch extends Error {
    override name = "ConfigMismatch";
}
const roundParams = {type: "object", required: ["n"], properties: {n: {type: "string", pattern: "^[0-9]{1,6}$"}}} as const;
const errorSchema = {type: "object", required: ["error", "code"], properties: {error: {type: "string"}, code: {type: "string"}}} as const;
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

/** Serialises async work: the round state machine sees one call at a time. */
class Queue {
    private tail: Promise<unknown> = Promise.resolve();
    run<T>(fn: () => Promise<T>): Promise<T> {
        const next = this.tail.then(fn, fn);
        this.tail = next.catch(() => undefined);
        return next;
    }
}

function metricsFromHeader(value: string | string[] | undefined): UploadMetrics {
    if (value === undefined)
        return {};
    let m: Record<string, unknown>;
    try {
        m = JSON.parse(Array.isArray(value) ? value[0] : value);
    } catch {
        throw new HttpError(400, errorCodes.invalidRequest, `${metricsHeader} must be a JSON object`);
    }
    if (!m || typeof m !== "object" || Array.isArray(m))
        throw new HttpError(400, errorCodes.invalidRequest, `${metricsHeader} must be a JSON object`);
    const out: UploadMetrics = {};
    const names: Record<string, keyof UploadMetrics> = {train_loss: "trainLoss", accuracy_before: "accuracyBefore", accuracy: "accuracy",
        bytes_down: "bytesDown", bytes_up: "bytesUp", seconds: "seconds"};
    for (const [k, v] of Object.entries(m)) {
        if (!(k in names))
            throw new HttpError(400, errorCodes.invalidRequest, `${metricsHeader}: unknown field "${k}" (allowed: ${Object.keys(names).join(", ")})`);
        if (typeof v !== "number" || !Number.isFinite(v))
            throw new HttpError(400, errorCodes.invalidRequest, `${metricsHeader}: ${k} must be a finite number`);
        out[names[k]] = v;
    }
    return out;
}

/**
 * Streams an upload body (decompressed by the gzip hook) to `file`, counting its bytes: past `limit`
 * it stops with 413, so that no upload is ever held whole in memory. Returns the bytes written.
 */
async function receiveToFile(body: unknown, file: string, limit: number): Promise<number> {
    if (!(body instanceof Readable))
        throw new HttpError(415, errorCodes.unsupportedMediaType, "the upload must be application/octet-stream (a LoRA GGUF, gzip on the wire)");
    let bytes = 0;
    const count = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
            bytes += chunk.length;
            callback(bytes > limit ? new HttpError(413, errorCodes.payloadTooLarge, `the upload is over ${limit} bytes (fl server --max-upload-mb)`) : null, chunk);
        },
    });
    await pipeline(body, count, fs.createWriteStream(file, {mode: 0o600}));
    return bytes;
}

/** Accuracy by round, one line per client depth (clients without an accuracy are left out). */
export function accuracyByDepthOf(history: readonly RoundSummary[]): {name: string; values: number[]}[] {
    const depths = [...new Set(history.flatMap((h) => h.clients.map((c) => c.layerMap.length)))].sort((a, b) => b - a);
    return depths.map((d) => ({
        name: `depth ${d}`,
        values: history.map((h) => {
            const acc = h.clients.filter((c) => c.layerMap.length === d && c.metrics.accuracy !== undefined).map((c) => c.metrics.accuracy!);
            return acc.length ? acc.reduce((s, x) => s + x, 0) / acc.length : NaN;
        }).filter((v) => !Number.isNaN(v)),
    }));
}

/** Start the PruFed HTTP server (rounds, uploads, secure aggregation, events). */
export async function startFlServer(options: FlServerOptions): Promise<FlServer> {
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    checkCleartextListen(options.host ?? "127.0.0.1", Boolean(options.tls), Boolean(options.insecure), log);
    const limits = {...httpLimitDefaults, ...options.limits};
    // every event goes to the caller (fl server --json prints them) and to the open event streams
    const streams = new Set<(e: FlServerEvent) => void>();
    // long polls wake on every state change (each comes with an event) instead of polling a timer
    let wake = new Set<() => void>();
    const changed = (ms: number) => new Promise<void>((resolve) => {
        const done = () => {
            clearTimeout(timer);
            wake.delete(done);
            resolve();
        };
        const timer = setTimeout(done, Math.max(0, Math.min(ms, 1000)));
        wake.add(done);
    });
    const emit = (e: FlServerEvent) => {
        options.onEvent?.(e);
        for (const send of streams)
            send(e);
        const waiting = wake;
        wake = new Set();
        for (const w of waiting)
            w();
    };
    const dataDir = path.resolve(options.dataDir);
    makePrivateDir(dataDir);
    // one server per data dir: a lock the kernel releases when a server dies (data-dir-lock.ts)
    const release = claimDataDir(dataDir);
    const store = SqliteJobStore.open(dataDir);
    const federation = fs.existsSync(path.join(dataDir, "state.json"))
        ? await FederationServer.open(dataDir)
        : await FederationServer.create(dataDir, options.config);
    // a resumed federation keeps its saved configuration: flags that say otherwise are refused, not silently overridden
    const differences = configDifferences(federation.config, options.config);
    if (differences.length) {
        store.close?.();
        release();
        throw new ConfigMismatch(`${dataDir} holds a federation started with another configuration; start it with the saved one ` +
            `(or use a new --data-dir): ${differences.join("; ")}`);
    }
    const config = federation.config;
    const incoming = path.join(dataDir, "incoming");
    await fs.promises.rm(incoming, {recursive: true, force: true});
    await fs.promises.mkdir(incoming, {recursive: true});
    const maxUpload = config.maxUploadBytes ?? 256 * 1024 * 1024;
    const queue = new Queue();
    const secure = config.secureAggregation === true;
    /** The open secure round's host (secure-host.ts), rebuilt from its journal after a restart. */
    let host: SecureRoundHost | undefined;
    // journals of rounds already closed (a server killed between closing and cleaning up)
    for (const d of fs.existsSync(path.join(dataDir, "secagg")) ? await fs.promises.readdir(path.join(dataDir, "secagg")) : [])
        if (d !== `round-${federation.current?.round}`)
            await fs.promises.rm(path.join(dataDir, "secagg", d), {recursive: true, force: true});
    const hostFor = async (): Promise<SecureRoundHost | undefined> => {
        const cur = federation.current;
        if (!secure || !cur)
            return undefined;
        if (host?.round !== cur.round)
            host = await SecureRoundHost.open({dataDir, round: cur.round, sampled: cur.sampled, previous: federation.globalAdapter,
                members: federation.clients.filter((c) => cur.sampled.includes(c.id)), threshold: config.secaggThreshold,
                keysDeadline: cur.deadline ?? Number.MAX_SAFE_INTEGER, phaseTimeoutMs: (config.secaggPhaseTimeout ?? 60) * 1000,
                method: config.aggregation, maskedMetrics: true});
        return host;
    };

    const app = await createProtocolApp({
        bodyLimit: maxUpload, uploadRoutes: [flRoutes.secaggMasked], limits, tls: options.tls, store, openapiRoute: fedRoutes.openapi, log,
        api: {title: "ppc-gpt PruFed server", version: "v1", description: "PruFed rounds over HTTP (docs/prufed.md)."},
    });
    // every secure-aggregation answer states the protocol version it speaks
    app.addHook("onSend", async (request, reply, payload) => {
        if (request.url.includes("/secagg/"))
            reply.header(secaggVersionHeader, secaggProtocol);
        return payload;
    });
    app.addContentTypeParser("application/octet-stream", {parseAs: "buffer"}, (_req, body, done) => done(null, body));
    // open event streams and long polls: capped per token, ended when the token is revoked
    const sessions = new TokenSessions(store, limits.maxStreamsPerToken);

    const clientId = (request: FastifyRequest) => request.client!.name;
    const viewerOf = (request: FastifyRequest): Viewer => ({id: clientId(request), admin: request.client!.admin});
    /** Round summaries, global adapters and events are for the federation's clients (and admin tokens) only. */
    const onlyMembers = async (request: FastifyRequest) => {
        const {id, admin} = viewerOf(request);
        if (!admin && !federation.clients.some((c) => c.id === id))
            throw new HttpError(403, limitErrorCodes.forbidden, `client ${id} is not registered in this federation (POST ${flRoutes.clients} first)`);
    };
    const security = [{bearer: []}];
    const errors = {400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema, 410: errorSchema, 413: errorSchema, 422: errorSchema};

    app.post(flRoutes.clients, {schema: {body: registerSchema, security, response: {201: registeredSchema, 200: registeredSchema, ...errors}}},
        async (request, reply) => {
            const b = request.body as {original_layers: number[]; weight: number; r: number; lora_alpha: number;
                tensors?: Record<string, number[]>};
            const id = clientId(request);
            const known = federation.clients.some((c) => c.id === id);
            await queue.run(async () => {
                try {
                    if (b.tensors)
                        checkModelShapes(federation.layout, b.original_layers, b.tensors, `client ${id}`);
                    await federation.register({id, layerMap: b.original_layers, weight: b.weight, r: b.r, loraAlpha: b.lora_alpha});
                } catch (err) {
                    throw new HttpError(err instanceof RangeError ? 422 : 409, err instanceof RangeError ? "invalid_declaration" : "conflict",
                        (err as Error).message);
                }
            });
            if (!known)
                emit({event: "registered", client: id, layers: b.original_layers, weight: b.weight});
            kick();
            return reply.code(known ? 200 : 201).send({id, rejoined: known, protocol: flProtocol, secure_aggregation: secure,
                ...(secure ? {secagg_protocol: secaggProtocol} : {})});
        });

    const currentFor = (id: string) => {
        const cur = federation.current;
        // a secure round: "uploaded" means the client sent its keys (it takes part, or was dropped); the
        // client has something to do only while the keys phase is open
        const h = cur && host?.round === cur.round ? host : undefined;
        const sec: SecureRoundStatus | undefined = cur && secure && h ? {phase: h.phase, phase_deadline: h.phaseDeadline, threshold: h.threshold,
            scale_bits: h.scaleBits, joined: h.hasAdvertised(id)} : undefined;
        return {
            completed: federation.completed, rounds: config.rounds, finished: federation.finished, aggregation: config.aggregation,
            registered: federation.clients.some((c) => c.id === id), secure_aggregation: secure,
            ...(cur ? {round: cur.round, sampled: cur.sampled.includes(id) && (!secure || sec !== undefined),
                uploaded: secure ? (sec ? sec.joined || sec.phase !== "keys" : false) : cur.accepted.some((a) => a.client === id),
                deadline: cur.deadline, ...(sec ? {secure: sec} : {})} : {}),
        };
    };
    // long poll: ?wait=s answers as soon as this client has something to do (or the federation finished)
    app.get(flRoutes.current, {schema: {security, querystring: {type: "object", additionalProperties: false,
        properties: {wait: {type: "string", pattern: "^[0-9]{1,3}$"}}}, response: {200: currentSchema, ...errors}}}, async (request) => {
        const id = clientId(request);
        const until = Date.now() + Math.min(60, Number((request.query as {wait?: string}).wait ?? 0)) * 1000;
        const ready = (c: ReturnType<typeof currentFor>) => c.finished || (c.sampled && !c.uploaded && (!c.secure || c.secure.phase === "keys"));
        if (until <= Date.now())
            return currentFor(id);
        return longPoll(sessions, request, async (revoked) => {
            for (;;) {
                const c = currentFor(id);
                if (ready(c) || Date.now() >= until || request.raw.destroyed || revoked.aborted)
                    return c;
                await changed(until - Date.now());
            }
        });
    });

    const openRound = (request: FastifyRequest, id: string) => {
        const n = Number((request.params as {n: string}).n);
        const cur = federation.current;
        if (!cur || cur.round !== n)
            throw new HttpError(410, "round_closed", `round ${n} is not open (${cur ? `round ${cur.round} is` : "no round is"})`);
        if (!cur.sampled.includes(id))
            throw new HttpError(403, "not_sampled", `client ${id} is not sampled in round ${n}`);
        return cur;
    };

    app.get(flRoutes.adapter, {schema: {params: roundParams, security, response: errors}}, async (request, reply) => {
        const id = clientId(request);
        const file = path.join(incoming, `part-${crypto.randomBytes(6).toString("hex")}.gguf`);
        try {
            const round = openRound(request, id);
            await writeLoraAdapter(file, federation.assignment(id), [{key: "ppc_gpt.prufed.round", type: "uint32", value: round.round}]);
            const gz = zlib.gzipSync(await fs.promises.readFile(file), {level: 1});
            return reply.header("content-type", "application/octet-stream").header("content-encoding", "gzip")
                .header("x-ppc-round", String(round.round)).send(gz);
        } finally {
            await fs.promises.rm(file, {force: true});
        }
    });

    // uploads go to disk as they arrive (never a whole adapter in memory), the limit counted on the decompressed bytes
    await app.register(async (scope) => {
        scope.removeContentTypeParser("application/octet-stream");
        scope.addContentTypeParser("application/octet-stream", (_req, payload, done) => done(null, payload));
        scope.put(flRoutes.upload, {schema: {params: roundParams, security, response: {201: {type: "object", required: ["round", "accepted"],
            properties: {round: {type: "integer"}, accepted: {type: "boolean"}}}, ...errors}}}, uploadHandler);
    });
    async function uploadHandler(request: FastifyRequest, reply: FastifyReply) {
        const id = clientId(request);
        const n = Number((request.params as {n: string}).n);
        const metrics = metricsFromHeader(request.headers[metricsHeader]);
        const file = path.join(incoming, `${id}-${n}-${crypto.randomBytes(6).toString("hex")}.gguf`);
        let bytes: number;
        try {
            bytes = await receiveToFile(request.body, file, maxUpload);
        } catch (err) {
            await fs.promises.rm(file, {force: true});
            throw err;
        }
        try {
            await queue.run(async () => {
                const cur = federation.current;
                if (secure)
                    throw new HttpError(409, "secure_round", "this federation uses secure aggregation: send keys, shares and masked input " +
                        "(/v1/fl/rounds/{n}/secagg/...), never a plain upload");
                if (!cur || cur.round !== n)
                    throw new HttpError(cur && n < cur.round || !cur ? 409 : 410, "round_closed",
                        `round ${n} is not open (${cur ? `round ${cur.round} is` : "no round is"}); the upload is not counted`);
                try {
                    await federation.submit(id, file, metrics);
                } catch (err) {
                    const e = err as Error;
                    const code = err instanceof UploadRejected ? err.reason : err instanceof LateUpload ? "late"
                        : /not sampled/.test(e.message) ? "not_sampled" : /already uploaded/.test(e.message) ? "duplicate" : "";
                    if (!code)
                        throw err;
                    emit({event: "upload_rejected", round: n, client: id, code, error: e.message});
                    log(`round ${n}: upload of ${id} rejected (${code}): ${e.message}`);
                    throw new HttpError(err instanceof UploadRejected ? (err.reason === "size" ? 413 : 422) : 409, code, e.message);
                }
            });
        } finally {
            await fs.promises.rm(file, {force: true});
        }
        emit({event: "upload_accepted", round: n, client: id, bytes});
        kick();
        return reply.code(201).send({round: n, accepted: true});
    }

    app.get(flRoutes.round, {preHandler: onlyMembers, schema: {params: roundParams, security, response: errors}}, async (request, reply) => {
        const n = Number((request.params as {n: string}).n);
        const file = roundFile(dataDir, n).replace(/\.gguf$/, ".json");
        if (n < 1 || n > federation.completed || !fs.existsSync(file))
            throw new HttpError(404, errorCodes.notFound, `round ${n} is not closed (last closed: ${federation.completed})`);
        const summary = JSON.parse(await fs.promises.readFile(file, "utf8")) as RoundSummary;
        return reply.type("application/json").send(roundViewFor(summary, viewerOf(request), dataDir));
    });
    app.get(flRoutes.global, {preHandler: onlyMembers, schema: {params: roundParams, security, response: errors}}, async (request, reply) => {
        const n = Number((request.params as {n: string}).n);
        if (n > federation.completed)
            throw new HttpError(404, errorCodes.notFound, `round ${n} is not closed (last closed: ${federation.completed})`);
        const gz = await compressedGlobal(n);
        return reply.header("content-type", "application/octet-stream").header("content-encoding", "gzip")
            .header("content-length", String((await fs.promises.stat(gz)).size)).send(fs.createReadStream(gz));
    });
    /** round-N.gguf.gz beside the round file: compressed once (a closed round's global never changes), then served as it is. */
    async function compressedGlobal(n: number): Promise<string> {
        const gz = `${roundFile(dataDir, n)}.gz`;
        if (!fs.existsSync(gz)) {
            const tmp = `${gz}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`;
            await pipeline(fs.createReadStream(roundFile(dataDir, n)), zlib.createGzip({level: 6}), fs.createWriteStream(tmp));
            await fs.promises.rename(tmp, gz);
        }
        return gz;
    }

    // secure rounds: one route pair per phase of secure-host.ts; every message goes through the queue
    const secureRound = async (request: FastifyRequest): Promise<{id: string; h: SecureRoundHost}> => {
        const id = clientId(request);
        if (!secure)
            throw new HttpError(409, "not_secure", "this federation does not use secure aggregation (fl server --secure-aggregation)");
        const version = request.headers[secaggVersionHeader];
        if (version !== secaggProtocol)
            throw new HttpError(400, "protocol_version", `${secaggVersionHeader} must be ${secaggProtocol} (got ${JSON.stringify(version ?? null)})`);
        const cur = openRound(request, id);
        // the host is made by the round machine (in its queue) when the round opens
        const h = host?.round === cur.round ? host : undefined;
        if (!h)
            throw new HttpError(410, "round_closed", "no secure round is open");
        return {id, h};
    };
    const secureErrors = async <T>(fn: () => Promise<T>): Promise<T> => {
        try {
            return await fn();
        } catch (err) {
            if (err instanceof SecureRoundError)
                throw new HttpError(err.code === "invalid" ? 422 : 409, err.code === "invalid" ? "invalid_message" : err.code, err.message);
            throw err;
        }
    };
    /** A phase's GET: answers as soon as the phase has come (long poll with ?wait=s), else {ready: false}. */
    const securePoll = (view: (h: SecureRoundHost, id: string) => object | undefined) => async (request: FastifyRequest) =>
        longPoll(sessions, request, async (revoked) => {
        const until = Date.now() + Math.min(60, Number((request.query as {wait?: string}).wait ?? 0)) * 1000;
        for (;;) {
            const {id, h} = await secureRound(request);
            const v = await secureErrors(async () => view(h, id));
            if (v)
                return {ready: true, ...v};
            if (Date.now() >= until || request.raw.destroyed || revoked.aborted)
                return {ready: false, phase: h.phase, phase_deadline: h.phaseDeadline};
            await changed(until - Date.now());
        }
    });
    const waitQuery = {type: "object", additionalProperties: false, properties: {wait: {type: "string", pattern: "^[0-9]{1,3}$"}}} as const;
    const b64Key = {type: "string", pattern: "^[A-Za-z0-9+/]{43}=$"} as const;
    const accepted = {201: {type: "object", required: ["round", "accepted"], properties: {round: {type: "integer"}, accepted: {type: "boolean"}}}, ...errors};
    const received = (h: SecureRoundHost, id: string, step: SecureRoundHost["phase"], bytes: number) => {
        emit(h.noteReceived(id, step, bytes));
        kick();
    };
    app.post(flRoutes.secaggKeys, {schema: {params: roundParams, security, body: {type: "object", additionalProperties: false, required: ["c_pub", "s_pub"],
        properties: {c_pub: b64Key, s_pub: b64Key}}, response: accepted}}, async (request, reply) => {
        const b = request.body as {c_pub: string; s_pub: string};
        const {id, h} = await secureRound(request);
        await queue.run(() => secureErrors(() => h.advertise(id, Buffer.from(b.c_pub, "base64"), Buffer.from(b.s_pub, "base64"))));
        received(h, id, "keys", 64);
        return reply.code(201).send({round: h.round, accepted: true});
    });
    app.get(flRoutes.secaggRoster, {schema: {params: roundParams, security, querystring: waitQuery, response: errors}},
        securePoll((h, id) => h.rosterView(id)));
    app.post(flRoutes.secaggShares, {schema: {params: roundParams, security, body: {type: "object", additionalProperties: false, required: ["boxes"],
        properties: {boxes: {type: "array", maxItems: 4096, items: {type: "object", additionalProperties: false, required: ["to", "box"],
            properties: {to: {type: "string", maxLength: 64}, box: {type: "string", maxLength: 65536, pattern: "^[A-Za-z0-9+/]*={0,2}$"}}}}}},
    response: accepted}}, async (request, reply) => {
        const b = request.body as {boxes: {to: string; box: string}[]};
        const {id, h} = await secureRound(request);
        const boxes = b.boxes.map((x) => ({to: x.to, box: Buffer.from(x.box, "base64")}));
        await queue.run(() => secureErrors(() => h.submitShares(id, boxes)));
        received(h, id, "shares", boxes.reduce((s, x) => s + x.box.length, 0));
        return reply.code(201).send({round: h.round, accepted: true});
    });
    app.get(flRoutes.secaggShares, {schema: {params: roundParams, security, querystring: waitQuery, response: errors}},
        securePoll((h, id) => h.sharesView(id)));
    app.put(flRoutes.secaggMasked, {schema: {params: roundParams, security, response: accepted}}, async (request, reply) => {
        const body = request.body as Buffer;
        if (!Buffer.isBuffer(body))
            throw new HttpError(415, errorCodes.unsupportedMediaType, "masked input is application/octet-stream (uint32 little-endian lanes in plan order)");
        const metrics = metricsFromHeader(request.headers[metricsHeader]);
        const {id, h} = await secureRound(request);
        await queue.run(() => secureErrors(() => h.submitMasked(id, body, metrics)));
        received(h, id, "masked", body.length);
        return reply.code(201).send({round: h.round, accepted: true});
    });
    app.get(flRoutes.secaggUnmask, {schema: {params: roundParams, security, querystring: waitQuery, response: errors}},
        securePoll((h, id) => h.unmaskView(id)));
    const share = {id: {type: "string", maxLength: 64}, x: {type: "integer", minimum: 1, maximum: 65535}, y: {type: "string", pattern: "^[0-9a-f]{1,131}$"}};
    // self-mask shares: one per survivor and layer it holds (null: its tensors outside any layer)
    const seedShares = {type: "array", maxItems: 65536, items: {type: "object", additionalProperties: false, required: ["id", "layer", "x", "y"],
        properties: {...share, layer: {type: ["integer", "null"], minimum: 0, maximum: 65535}}}} as const;
    const keyShares = {type: "array", maxItems: 4096, items: {type: "object", additionalProperties: false, required: ["id", "x", "y"], properties: share}} as const;
    app.post(flRoutes.secaggUnmask, {schema: {params: roundParams, security, body: {type: "object", additionalProperties: false, required: ["b", "s"],
        properties: {b: seedShares, s: keyShares}}, response: accepted}}, async (request, reply) => {
        const b = request.body as UnmaskBody;
        const {id, h} = await secureRound(request);
        await queue.run(() => secureErrors(() => h.submitUnmask(id, b.b, b.s)));
        received(h, id, "unmask", JSON.stringify(b).length);
        return reply.code(201).send({round: h.round, accepted: true});
    });

    // GET /v1/fl/events: the JSON events of `fl server --json` as this client may see them (views.ts), as
    // server-sent events (http-wire.ts openEventStream, the job server's conventions); the stream ends
    // after `finished` (or at once when the federation is finished), when the server stops and when the
    // token is revoked. The first event is `status`: the client's view of the round (GET rounds/current).
    const closeStreams = new Set<() => void>();
    app.get(flRoutes.events, {preHandler: onlyMembers, schema: {security, response: errors}}, async (request, reply) => {
        const viewer = viewerOf(request);
        const holder: {end: () => void} = {end: () => {}};
        const release = sessions.enter(request.client!, () => holder.end());
        reply.hijack();
        const stream = openEventStream(reply.raw, () => {
            streams.delete(send);
            closeStreams.delete(holder.end);
            release();
        });
        holder.end = () => stream.end();
        const send = (e: FlServerEvent) => {
            const view = eventViewFor(e, viewer, dataDir);
            if (view)
                stream.send(e.event, view);
            if (e.event === "finished")
                stream.end();
        };
        closeStreams.add(holder.end);
        stream.send("status", {event: "status", ...currentFor(viewer.id)});
        if (federation.finished)
            return stream.end();
        streams.add(send);
    });

    const writePlot = () => {
        if (!options.plot)
            return;
        const tmp = `${options.plot}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, roundsSvg(accuracyByDepthOf(federation.history), `PruFed ${config.aggregation}: held-out accuracy by round`));
        fs.renameSync(tmp, options.plot);
    };

    let ticking = false;
    // the round machine runs on a timer, and at once after a registration or an upload
    const kick = () => {
        if (ticking)
            return;
        ticking = true;
        tick().catch((err) => log(`round machine: ${(err as Error).stack ?? err}`)).finally(() => (ticking = false));
    };
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => (resolveDone = r));
    const needed = Math.max(config.clientsPerRound ?? 1, config.minClients ?? 1);
    const closed = (s: RoundSummary) => {
        emit({event: "round_closed", round: s.round, aggregated: s.aggregated, clients: s.clients, missing: s.missing, file: s.file,
            ...(s.note ? {note: s.note} : {}), ...(s.secure ? {secure: s.secure} : {})});
        writePlot();
        if (federation.finished) {
            emit({event: "finished", rounds: federation.completed});
            resolveDone();
        }
    };
    const tick = () => queue.run(async () => {
        let h: SecureRoundHost | undefined;
        try {
            h = await hostFor();
        } catch (err) {
            // a round the state machine refuses (fedavg over clients of different depths): closed unaggregated
            const note = `secure aggregation cannot run this round: ${(err as Error).message}`;
            log(`round ${federation.current!.round}: ${note}`);
            closed(await federation.closeRoundWith(federation.globalAdapter, [], [], note));
        }
        if (h) {
            const {events, outcome} = await h.advance();
            for (const e of events)
                emit(e);
            if (outcome) {
                if (outcome.record.aborted)
                    log(`round ${h.round}: secure aggregation not completed: ${outcome.record.aborted}`);
                const s = await federation.closeRoundWith(outcome.result?.adapter ?? federation.globalAdapter, outcome.result?.targets ?? [],
                    outcome.result?.contributors ?? [], outcome.record.aborted, {metrics: outcome.metrics, secure: outcome.record});
                host = undefined;
                await fs.promises.rm(secureRoundDir(dataDir, s.round), {recursive: true, force: true});
                closed(s);
            }
        } else if (federation.current && federation.readyToClose()) {
            closed(await federation.closeRound());
        }
        if (!federation.current && !federation.finished && federation.clients.length >= needed) {
            const r = await federation.startRound();
            await hostFor().catch(() => undefined); // a refused round is closed by the next tick
            emit({event: "round_started", round: r.round, sampled: r.sampled, deadline: r.deadline});
        }
    });
    if (federation.finished)
        resolveDone();
    const timer = setInterval(() => kick(), options.tickMs ?? 200);
    // a secure round left open by a killed server: its journal is replayed now (the round machine closes a refused one)
    await queue.run(async () => void await hostFor().catch(() => undefined));

    const address = await app.listen({host: options.host ?? "127.0.0.1", port: options.port ?? 8080});
    const url = address.replace("[::1]", "127.0.0.1");
    return {
        app, url, federation, done,
        securePhase: () => (host && host.round === federation.current?.round ? host.phase : null),
        async close() {
            clearInterval(timer);
            sessions.close();
            for (const finish of [...closeStreams])
                finish();
            await queue.run(async () => undefined);
            await app.close();
            store.close?.();
            release();
        },
    };
}
