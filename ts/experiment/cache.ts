// Content-addressed caching of experiment work: a stage or a cell is keyed by the hash of
// everything it depends on, runs in its own folder, and is done when its result JSON exists (the
// result is written last, atomically), so a killed run resumes and equal work is shared by cells.
import {createHash} from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {writeFileDurableSync} from "../durable-file.js";

/** Canonical JSON: object keys sorted, so equal configs hash equally. */
export function canonicalJson(v: unknown): string {
    if (Array.isArray(v))
        return `[${v.map(canonicalJson).join(",")}]`;
    if (v && typeof v === "object")
        return `{${Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined)
            .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(",")}}`;
    return JSON.stringify(v ?? null);
}

export function hashKey(v: unknown): string {
    return createHash("sha256").update(canonicalJson(v)).digest("hex").slice(0, 16);
}

/** Writes JSON atomically and durably (durable-file.ts); non-finite numbers become null. */
export function writeJsonAtomic(file: string, value: unknown): void {
    writeFileDurableSync(file, JSON.stringify(value, (_, x) => (typeof x === "number" && !Number.isFinite(x) ? null : x), 2) + "\n");
}

/** A file's identity in cache keys: its absolute path, size and modification time (a changed file is new work). */
export function fileIdentity(file: string): string {
    const st = fs.statSync(file);
    return `${path.resolve(file)}:${st.size}:${st.mtimeMs}`;
}

export function readJson<T>(file: string): T | undefined {
    if (!fs.existsSync(file))
        return undefined;
    return JSON.parse(fs.readFileSync(file, "utf8")) as T;
}

/** Stage results under `<root>/stages/<name>-<hash>/`. */
export class StageCache {
    /** Stages run (not found in the cache) by this process. */
    ran = 0;
    reused = 0;

    constructor(readonly root: string) {
        fs.mkdirSync(path.join(root, "stages"), {recursive: true});
    }

    folder(name: string, key: unknown): string {
        return path.join(this.root, "stages", `${name}-${hashKey(key)}`);
    }

    /**
     * Runs `fn(dir)` once per (name, key): its result is stored as result.json in `dir` and
     * returned as it is on every later call, in this process or a resumed one.
     */
    async stage<T>(name: string, key: unknown, fn: (dir: string) => Promise<T>): Promise<T & {dir: string}> {
        const dir = this.folder(name, key);
        const done = readJson<T>(path.join(dir, "result.json"));
        if (done !== undefined) {
            this.reused++;
            return {...done, dir};
        }
        // a folder without result.json is an interrupted attempt: start it over
        fs.rmSync(dir, {recursive: true, force: true});
        fs.mkdirSync(dir, {recursive: true});
        fs.writeFileSync(path.join(dir, "key.json"), JSON.stringify({name, key}, null, 2));
        const result = await fn(dir);
        writeJsonAtomic(path.join(dir, "result.json"), result);
        this.ran++;
        return {...result, dir};
    }
}
