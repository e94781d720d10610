// PUT rounds/{n}/upload: a client's trained adapter for the open round. It goes to disk as it
// arrives (never a whole adapter in memory), the limit counted on the decompressed bytes, and is
// checked and counted by the federation in the round machine's queue.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {Readable, Transform} from "node:stream";
import {pipeline} from "node:stream/promises";
import type {FastifyPluginAsync, FastifyReply, FastifyRequest} from "fastify";
import {errorCodes} from "../../protocol.js";
import {HttpError} from "../../http-common.js";
import {UploadRejected} from "../align.js";
import {flRoutes, metricsHeader} from "../http-protocol.js";
import {LateUpload, type UploadMetrics} from "../rounds.js";
import {accepted, clientId, roundNumber, roundParams, security, type FlRoutesContext} from "./context.js";

/** The metrics header of an upload or a masked input: a JSON object of known, finite numbers. */
export function metricsFromHeader(value: string | string[] | undefined): UploadMetrics {
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

/** A refusal of the federation as the upload's error: its code, and an upload_rejected event; undefined for other errors. */
function rejection(err: unknown): {status: number; code: string} | undefined {
    const message = (err as Error).message;
    const code = err instanceof UploadRejected ? err.reason : err instanceof LateUpload ? "late"
        : /not sampled/.test(message) ? "not_sampled" : /already uploaded/.test(message) ? "duplicate" : "";
    if (!code)
        return undefined;
    return {status: err instanceof UploadRejected ? (err.reason === "size" ? 413 : 422) : 409, code};
}

function uploadHandler(ctx: FlRoutesContext) {
    const {machine} = ctx;
    /** Counts the received file in the open round (in the queue): 409/410 when no round `n` is open, the federation's refusals as errors. */
    const submit = (id: string, n: number, file: string, metrics: UploadMetrics) => machine.run(async () => {
        const cur = machine.federation.current;
        if (machine.secure)
            throw new HttpError(409, "secure_round", "this federation uses secure aggregation: send keys, shares and masked input " +
                "(/v1/fl/rounds/{n}/secagg/...), never a plain upload");
        if (!cur || cur.round !== n)
            throw new HttpError(cur && n < cur.round || !cur ? 409 : 410, "round_closed",
                `round ${n} is not open (${cur ? `round ${cur.round} is` : "no round is"}); the upload is not counted`);
        try {
            await machine.federation.submit(id, file, metrics);
        } catch (err) {
            const refused = rejection(err);
            if (!refused)
                throw err;
            const message = (err as Error).message;
            machine.emit({event: "upload_rejected", round: n, client: id, code: refused.code, error: message});
            ctx.log(`round ${n}: upload of ${id} rejected (${refused.code}): ${message}`);
            throw new HttpError(refused.status, refused.code, message);
        }
    });
    return async (request: FastifyRequest, reply: FastifyReply) => {
        const id = clientId(request);
        const n = roundNumber(request);
        const metrics = metricsFromHeader(request.headers[metricsHeader]);
        const file = path.join(ctx.incoming, `${id}-${n}-${crypto.randomBytes(6).toString("hex")}.gguf`);
        let bytes: number;
        try {
            bytes = await receiveToFile(request.body, file, ctx.maxUpload);
            await submit(id, n, file, metrics);
        } finally {
            await fs.promises.rm(file, {force: true});
        }
        machine.emit({event: "upload_accepted", round: n, client: id, bytes});
        machine.kick();
        return reply.code(201).send({round: n, accepted: true});
    };
}

export const uploadRoutes: FastifyPluginAsync<FlRoutesContext> = async (app, ctx) => {
    // this scope reads octet-stream bodies as a stream (the root app buffers them, for the masked input)
    app.removeContentTypeParser("application/octet-stream");
    app.addContentTypeParser("application/octet-stream", (_req, payload, done) => done(null, payload));
    app.put(flRoutes.upload, {schema: {params: roundParams, security, response: accepted}}, uploadHandler(ctx));
};
