// The HTTP pieces both federated services share (the PPC-GPT job server and the PruFed round
// server): the Fastify app with its OpenAPI document, bearer-token auth against the store, gzip
// request bodies whose size limit counts the decompressed bytes, errors as the protocol's
// `{error, code}` naming the field at fault (with no absolute path or URL in them), and the limits
// both servers apply: a small body limit on JSON routes, request and connection timeouts, a cap on
// open event streams and long polls per token (ended when the token is revoked), a rate limit per
// token on write routes. The wire pieces a client shares (SSE, cleartext rule) are in http-wire.ts.
import fs from "node:fs";
import zlib from "node:zlib";
import Fastify, {type FastifyError, type FastifyInstance, type FastifyRequest} from "fastify";
import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import {errorCodes} from "./protocol.js";
import type {JobStore, TokenRecord} from "./store.js";
import {StoreUnavailableError} from "./store-postgres.js";
import {authenticate} from "./tokens.js";
import {CleartextRefused, cleartextListenProblem, httpLimitDefaults, insecureListenWarning, sanitizeMessage, type HttpLimits} from "./http-wire.js";

export {CleartextRefused, httpLimitDefaults, openEventStream, type EventStreamWriter, type HttpLimits} from "./http-wire.js";

/** Error codes of the limits (docs/federated.md "Limits"). */
export const limitErrorCodes = {
    /** More open event streams and long polls of one token than --max-streams-per-token. */
    tooManyStreams: "too_many_streams",
    /** More write requests of one token per minute than --write-rate. */
    rateLimited: "rate_limited",
    /** A registered client (or admin token) is needed to read this. */
    forbidden: "forbidden",
    /** The token was revoked while its stream or long poll was open. */
    revoked: "token_revoked",
} as const;

declare module "fastify" {
    interface FastifyRequest {
        client?: TokenRecord;
    }
}

export class HttpError extends Error {
    constructor(readonly statusCode: number, readonly code: string, message: string) {
        super(message);
    }
}

/** Turns a Fastify/ajv error into the protocol's `{error, code}` with a message naming the field. */
export function errorBody(err: FastifyError): {status: number; body: {error: string; code: string}} {
    const {status, body} = rawErrorBody(err);
    return {status, body: {error: sanitizeMessage(body.error), code: body.code}};
}

function rawErrorBody(err: FastifyError): {status: number; body: {error: string; code: string}} {
    if (err instanceof HttpError)
        return {status: err.statusCode, body: {error: err.message, code: err.code}};
    if ((err as Error) instanceof StoreUnavailableError)
        return {status: 503, body: {error: "the job store is unavailable; retry shortly", code: "store_unavailable"}};
    if (err.validation && err.validation.length > 0) {
        const v = err.validation[0] as {instancePath?: string; message?: string; keyword?: string; params?: Record<string, unknown>};
        const where = (v.instancePath ?? "").replace(/^\//, "") || (err.validationContext === "body" ? "body" : String(err.validationContext));
        const what = v.keyword === "additionalProperties"
            ? `must not have the property "${String(v.params?.additionalProperty)}"`
            : v.keyword === "required" ? `must have the property "${String(v.params?.missingProperty)}"` : v.message ?? "is invalid";
        const context = err.validationContext && err.validationContext !== "body" ? `${err.validationContext}: ` : "";
        return {status: 400, body: {error: `${context}${where} ${what}`, code: errorCodes.invalidRequest}};
    }
    switch (err.code) {
        case "FST_ERR_CTP_BODY_TOO_LARGE":
            return {status: 413, body: {error: err.message, code: errorCodes.payloadTooLarge}};
        case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
            return {status: 415, body: {error: "the body must be application/json", code: errorCodes.unsupportedMediaType}};
        case "FST_ERR_CTP_EMPTY_JSON_BODY":
            return {status: 400, body: {error: "the body is empty", code: errorCodes.invalidRequest}};
        case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
            return {status: 400, body: {error: "the body does not match its Content-Length", code: errorCodes.invalidRequest}};
    }
    if (err.code === "Z_DATA_ERROR" || err.code === "Z_BUF_ERROR" || /incorrect header check|unexpected end of file/.test(err.message))
        return {status: 400, body: {error: `the gzip body cannot be decompressed: ${err.message}`, code: errorCodes.invalidRequest}};
    if (err instanceof SyntaxError || (err.statusCode === 400 && /JSON/.test(err.message)))
        return {status: 400, body: {error: `the body is not valid JSON: ${err.message}`, code: errorCodes.invalidRequest}};
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    return {status, body: {error: status === 500 ? "internal server error" : err.message, code: status === 500 ? errorCodes.internal : "bad_request"}};
}

/** Every route but `publicRoutes` needs a live bearer token; its record becomes `request.client`. */
export function requireBearerToken(app: FastifyInstance, store: JobStore, publicRoutes: ReadonlySet<string>): void {
    app.addHook("onRequest", async (request) => {
        if (publicRoutes.has(request.routeOptions.url ?? ""))
            return;
        const client = await authenticate(store, request.headers.authorization);
        if (!client)
            throw new HttpError(401, errorCodes.unauthorized, "missing, invalid or revoked bearer token");
        request.client = client;
    });
}

/** `Content-Encoding: gzip` bodies are decompressed as a stream, so Fastify's body limit counts decompressed bytes. */
export function acceptGzipBodies(app: FastifyInstance): void {
    app.addHook("preParsing", async (request, _reply, payload) => {
        const encoding = (request.headers["content-encoding"] ?? "identity").toLowerCase().trim();
        if (encoding === "identity")
            return payload;
        if (encoding !== "gzip")
            throw new HttpError(415, errorCodes.unsupportedMediaType, `Content-Encoding ${encoding} is not supported (use gzip or none)`);
        const gunzip = zlib.createGunzip() as zlib.Gunzip & {receivedEncodedLength: number};
        gunzip.receivedEncodedLength = 0;
        payload.on("data", (chunk: Buffer) => {
            gunzip.receivedEncodedLength += chunk.length;
        });
        payload.on("error", (err) => gunzip.destroy(err));
        payload.pipe(gunzip);
        return gunzip;
    });
}

/** Errors as `{error, code}`; unexpected ones are logged and answered 500 without details. */
export function sendProtocolErrors(app: FastifyInstance, log: (line: string) => void): void {
    app.setErrorHandler((err: FastifyError, request, reply) => {
        const {status, body} = errorBody(err);
        if (status === 500)
            log(`${request.method} ${request.url}: ${err.stack ?? err.message}`);
        if (status === 413)
            reply.header("connection", "close");
        return reply.code(status).type("application/json").send(body);
    });
    app.setNotFoundHandler((request, reply) =>
        reply.code(404).send({error: `no route ${request.method} ${request.url.split("?")[0]}`, code: errorCodes.notFound}));
}

/**
 * The open event streams and long polls of each token: at most `maxPerToken` at once (429
 * too_many_streams), and each ended when its token is revoked (checked every `checkMs`).
 */
export class TokenSessions {
    private readonly open = new Map<string, {hash: string; enders: Set<() => void>}>();
    private readonly timer: NodeJS.Timeout;
    private sweeping = false;

    constructor(private readonly store: JobStore, private readonly maxPerToken: number, checkMs = 1000) {
        this.timer = setInterval(() => void this.sweep(), checkMs);
        this.timer.unref();
    }

    /** Registers one stream or long poll of `client`; `end` is called if its token is revoked. Returns its release. */
    enter(client: TokenRecord, end: () => void): () => void {
        const entry = this.open.get(client.id) ?? {hash: client.token_sha256, enders: new Set<() => void>()};
        if (entry.enders.size >= this.maxPerToken)
            throw new HttpError(429, limitErrorCodes.tooManyStreams,
                `this token already has ${entry.enders.size} open event stream(s) or long poll(s) (the most: ${this.maxPerToken}); close one first`);
        entry.enders.add(end);
        this.open.set(client.id, entry);
        let released = false;
        return () => {
            if (released)
                return;
            released = true;
            entry.enders.delete(end);
            if (entry.enders.size === 0 && this.open.get(client.id) === entry)
                this.open.delete(client.id);
        };
    }

    private async sweep(): Promise<void> {
        if (this.sweeping || this.open.size === 0)
            return;
        this.sweeping = true;
        try {
            for (const [id, entry] of [...this.open]) {
                const live = await Promise.resolve(this.store.tokenByHash(entry.hash)).catch(() => true);
                if (!live) {
                    this.open.delete(id);
                    for (const end of [...entry.enders])
                        end();
                }
            }
        } finally {
            this.sweeping = false;
        }
    }

    close(): void {
        clearInterval(this.timer);
    }
}

/**
 * A long poll of `client` under `sessions`: `wait(signal)` runs until it returns an answer; a
 * revoked token ends it with 401 token_revoked.
 */
export async function longPoll<T>(sessions: TokenSessions, request: FastifyRequest, wait: (revoked: AbortSignal) => Promise<T>): Promise<T> {
    const revoked = new AbortController();
    const release = sessions.enter(request.client!, () => revoked.abort());
    try {
        const answer = await wait(revoked.signal);
        if (revoked.signal.aborted)
            throw new HttpError(401, limitErrorCodes.revoked, "the token was revoked");
        return answer;
    } finally {
        release();
    }
}

/** Throws the refusal to serve plain HTTP off loopback without --insecure; logs the warning when --insecure allows it. */
/**
 * Every answer of `scope`'s routes, errors included, carries the header `name: value` (a
 * sub-protocol's version, e.g. secure aggregation's): an onSend hook scoped to the plugin.
 */
export function answerWithHeader(scope: FastifyInstance, name: string, value: string): void {
    scope.addHook("onSend", async (_request, reply, payload) => {
        reply.header(name, value);
        return payload;
    });
}

export function checkCleartextListen(host: string, tls: boolean, insecure: boolean, log: (line: string) => void): void {
    const problem = cleartextListenProblem(host, tls, insecure);
    if (problem)
        throw new CleartextRefused(problem);
    if (!tls && cleartextListenProblem(host, false, false))
        log(insecureListenWarning(host));
}

export interface ProtocolAppOptions {
    /** Largest body of the upload routes (`uploadRoutes`), after gzip decompression. */
    bodyLimit: number;
    /** Routes that take `bodyLimit`; every other route takes `limits.jsonBodyBytes`. */
    uploadRoutes?: readonly string[];
    limits?: Partial<HttpLimits>;
    tls?: {cert: string; key: string};
    /** OpenAPI info of the service. */
    api: {title: string; version: string; description: string};
    store: JobStore;
    /** Where the OpenAPI document is served (without a token). */
    openapiRoute: string;
    /** Other routes answered without a token. */
    publicRoutes?: readonly string[];
    log: (line: string) => void;
}

/** A Fastify app speaking the protocol's conventions: validation only, its OpenAPI document, auth, gzip bodies, `{error, code}`. */
export async function createProtocolApp(o: ProtocolAppOptions): Promise<FastifyInstance> {
    const limits = {...httpLimitDefaults, ...o.limits};
    const uploads = new Set(o.uploadRoutes ?? []);
    const app = Fastify({
        logger: false,
        bodyLimit: limits.jsonBodyBytes,
        requestTimeout: limits.requestTimeoutMs,
        connectionTimeout: limits.connectionTimeoutMs,
        ...(o.tls ? {https: {cert: fs.readFileSync(o.tls.cert), key: fs.readFileSync(o.tls.key)}} : {}),
        // validation only: no coercion, no silently dropped properties (a leaked "answer" is a 400), no defaults
        ajv: {customOptions: {removeAdditional: false, useDefaults: false, coerceTypes: false, allErrors: false}},
    }) as unknown as FastifyInstance;
    await app.register(swagger, {
        openapi: {openapi: "3.0.3", info: o.api, components: {securitySchemes: {bearer: {type: "http", scheme: "bearer"}}}},
    });
    // only the item and adapter uploads take the large limit
    app.addHook("onRoute", (route) => {
        if (uploads.has(route.url) && route.bodyLimit === undefined)
            route.bodyLimit = o.bodyLimit;
    });
    requireBearerToken(app, o.store, new Set([o.openapiRoute, ...o.publicRoutes ?? []]));
    await limitWrites(app, limits.writesPerMinute);
    acceptGzipBodies(app);
    sendProtocolErrors(app, o.log);
    app.get(o.openapiRoute, {schema: {hide: true}}, async () => app.swagger());
    return app;
}

/** Write requests (POST, PUT, DELETE) per token and minute: 429 rate_limited past `perMinute`. */
async function limitWrites(app: FastifyInstance, perMinute: number): Promise<void> {
    await app.register(rateLimit, {
        max: perMinute, timeWindow: 60_000,
        allowList: (request) => request.method === "GET" || request.method === "HEAD" || request.method === "OPTIONS",
        // after the auth hook: a token's writes count together whichever address they come from
        keyGenerator: (request) => request.client?.id ?? request.ip,
        errorResponseBuilder: (_request, context) => new HttpError(429, limitErrorCodes.rateLimited,
            `more than ${context.max} write requests in a minute from this token; retry in ${Math.ceil(context.ttl / 1000)} s`),
    });
}
