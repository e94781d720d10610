// On-disk cache of neighbour indexes, keyed by the model's hash. A cache file is a small binary
// container: magic, a JSON header (what it holds, array layouts, sha256 of the payload), then
// the arrays. Files are written atomically; a file that fails any check is ignored and rebuilt.
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {writeFileDurableSync} from "../durable-file.js";

const MAGIC = Buffer.from("PPCIDX01", "latin1");

/** PPC_GPT_CACHE_DIR, else $XDG_CACHE_HOME/ppc-gpt, else ~/.cache/ppc-gpt. */
export function defaultCacheDir(): string {
    if (process.env.PPC_GPT_CACHE_DIR)
        return path.resolve(process.env.PPC_GPT_CACHE_DIR);
    const xdg = process.env.XDG_CACHE_HOME;
    if (xdg && path.isAbsolute(xdg))
        return path.join(xdg, "ppc-gpt");
    return path.join(os.homedir(), ".cache", "ppc-gpt");
}

export type CacheArray = Int32Array | Float64Array;

interface ArrayEntry {
    name: string;
    kind: "i32" | "f64";
    length: number;
    offset: number;
}

/** Writes `meta` and named arrays to `file` atomically and durably (durable-file.ts). */
export function writeCacheFile(file: string, meta: Record<string, unknown>, arrays: Record<string, CacheArray>): void {
    fs.mkdirSync(path.dirname(file), {recursive: true});
    const entries: ArrayEntry[] = [];
    let offset = 0;
    const parts: Buffer[] = [];
    for (const [name, a] of Object.entries(arrays)) {
        const kind = a instanceof Int32Array ? "i32" : "f64";
        const bytes = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
        entries.push({name, kind, length: a.length, offset});
        parts.push(bytes);
        offset += bytes.length;
        const pad = (8 - (offset % 8)) % 8;
        if (pad) {
            parts.push(Buffer.alloc(pad));
            offset += pad;
        }
    }
    const payload = Buffer.concat(parts);
    const header = Buffer.from(JSON.stringify({
        meta, arrays: entries, payloadBytes: payload.length,
        sha256: crypto.createHash("sha256").update(payload).digest("hex"),
    }), "utf8");
    const headerLen = Buffer.alloc(4);
    headerLen.writeUInt32LE(header.length);
    const pad = Buffer.alloc((8 - ((MAGIC.length + 4 + header.length) % 8)) % 8, 0x20);
    writeFileDurableSync(file, Buffer.concat([MAGIC, headerLen, header, pad, payload]));
}

/** Reads a cache file; undefined when it is missing, or with `problem` set when it is unusable. */
export function readCacheFile(file: string): {meta: Record<string, unknown>; arrays: Record<string, CacheArray>} | {problem: string} | undefined {
    let buf: Buffer;
    try {
        buf = fs.readFileSync(file);
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT")
            return undefined;
        return {problem: `cannot read: ${(err as Error).message}`};
    }
    if (buf.length < MAGIC.length + 4 || !buf.subarray(0, MAGIC.length).equals(MAGIC))
        return {problem: "not a ppc-gpt index file"};
    const headerLen = buf.readUInt32LE(MAGIC.length);
    const headerEnd = MAGIC.length + 4 + headerLen;
    if (headerEnd > buf.length)
        return {problem: "truncated header"};
    let header: {meta: Record<string, unknown>; arrays: ArrayEntry[]; payloadBytes: number; sha256: string};
    try {
        header = JSON.parse(buf.subarray(MAGIC.length + 4, headerEnd).toString("utf8"));
    } catch {
        return {problem: "corrupt header"};
    }
    const start = headerEnd + (8 - (headerEnd % 8)) % 8;
    if (buf.length !== start + header.payloadBytes)
        return {problem: `size ${buf.length} does not match the header (${start + header.payloadBytes})`};
    const payload = buf.subarray(start);
    if (crypto.createHash("sha256").update(payload).digest("hex") !== header.sha256)
        return {problem: "checksum mismatch"};
    const arrays: Record<string, CacheArray> = {};
    for (const e of header.arrays) {
        const size = e.kind === "i32" ? 4 : 8;
        if (e.offset < 0 || e.offset + e.length * size > payload.length)
            return {problem: `array ${e.name} is out of bounds`};
        // Copy into a fresh, aligned buffer.
        const bytes = payload.subarray(e.offset, e.offset + e.length * size);
        const copy = new ArrayBuffer(bytes.length);
        new Uint8Array(copy).set(bytes);
        arrays[e.name] = e.kind === "i32" ? new Int32Array(copy) : new Float64Array(copy);
    }
    return {meta: header.meta, arrays};
}
