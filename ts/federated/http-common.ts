// The HTTP pieces both federated services share (the PPC-GPT job server and the PruFed round
// server): the Fastify app with its OpenAPI document, bearer-token auth against the store, gzip
// request bodies whose size limit counts the decompressed bytes, and errors as the protocol's
// `{error, code}` naming the field at fault.
import fs from "node:fs";
import zlib from "node:zlib";
import Fastify, {type FastifyError, type FastifyInstance} from "fastify";
import swagger from "@fastify/swagger";
import {errorCodes} from "./protocol.js";
import type {JobStore, TokenRecord} from "./store.js";
import {StoreUnavailableError} from "./store-postgres.js";
import {authenticate} from "./tokens.js";

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

export interface ProtocolAppOptions {
    bodyLimit: number;
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
    const app = Fastify({
        logger: false,
        bodyLimit: o.bodyLimit,
        ...(o.tls ? {https: {cert: fs.readFileSync(o.tls.cert), key: fs.readFileSync(o.tls.key)}} : {}),
        // validation only: no coercion, no silently dropped properties (a leaked "answer" is a 400), no defaults
        ajv: {customOptions: {removeAdditional: false, useDefaults: false, coerceTypes: false, allErrors: false}},
    }) as unknown as FastifyInstance;
    await app.register(swagger, {
        openapi: {openapi: "3.0.3", info: o.api, components: {securitySchemes: {bearer: {type: "http", scheme: "bearer"}}}},
    });
    requireBearerToken(app, o.store, new Set([o.openapiRoute, ...o.publicRoutes ?? []]));
    acceptGzipBodies(app);
    sendProtocolErrors(app, o.log);
    app.get(o.openapiRoute, {schema: {hide: true}}, async () => app.swagger());
    return app;
}
