// Serving a stored file by its sha256: ETag, Range (one range; `a-`, `a-b`, `-n`), If-Range and
// If-None-Match, so an interrupted download resumes where it stopped and a client checks what it got.
import fs from "node:fs";
import type {FastifyReply, FastifyRequest} from "fastify";
import {errorCodes, headers} from "./protocol.js";

export interface ByteRange {
    start: number;
    /** Inclusive. */
    end: number;
}

/**
 * Parses a Range header against a file of `size` bytes: a range, "unsatisfiable", or undefined
 * when the header is absent, malformed or asks for several ranges (then the whole file is sent,
 * as RFC 9110 allows).
 */
export function parseRange(header: string | undefined, size: number): ByteRange | "unsatisfiable" | undefined {
    if (header === undefined)
        return undefined;
    const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
    if (!m || (m[1] === "" && m[2] === ""))
        return undefined;
    if (m[1] === "") {
        const suffix = Number(m[2]);
        if (suffix === 0 || size === 0)
            return "unsatisfiable";
        return {start: Math.max(0, size - suffix), end: size - 1};
    }
    const start = Number(m[1]);
    const end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== "" && Number(m[2]) < start)
        return undefined;
    if (start >= size)
        return "unsatisfiable";
    return {start, end};
}

/** Sends `file` (of `size` bytes, content hash `sha256`) honouring Range, If-Range and If-None-Match. */
export function sendStoredFile(request: FastifyRequest, reply: FastifyReply, file: string, sha256: string, size: number): FastifyReply {
    const etag = `"${sha256}"`;
    reply.header("etag", etag)
        .header("accept-ranges", "bytes")
        .header(headers.contentSha256, sha256)
        .header("cache-control", "private, max-age=0")
        .type("application/octet-stream");
    const ifNoneMatch = request.headers["if-none-match"];
    if (ifNoneMatch && ifNoneMatch.split(",").some((t) => t.trim() === etag || t.trim() === "*"))
        return reply.code(304).send();
    const ifRange = request.headers["if-range"] as string | undefined;
    // If-Range with another validator: the client's partial copy is stale, so it gets the whole file
    const range = ifRange === undefined || ifRange.trim() === etag ? parseRange(request.headers.range, size) : undefined;
    if (range === "unsatisfiable") {
        reply.header("content-range", `bytes */${size}`);
        return reply.code(416).type("application/json")
            .send({error: `range ${request.headers.range} is outside the file (${size} bytes)`, code: errorCodes.rangeNotSatisfiable});
    }
    const {start, end} = range ?? {start: 0, end: size - 1};
    if (range)
        reply.code(206).header("content-range", `bytes ${start}-${end}/${size}`);
    reply.header("content-length", String(Math.max(0, end - start + 1)));
    if (request.method === "HEAD" || size === 0)
        return reply.send();
    return reply.send(fs.createReadStream(file, {start, end, highWaterMark: 1 << 20}));
}
