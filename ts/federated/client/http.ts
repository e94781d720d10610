// HTTP client of the federated protocol (docs/federated.md) on Node's fetch: typed by protocol.ts,
// errors carrying the server's {error, code}, byte counters for what went each way, server-sent
// events with reconnection, and resumable model downloads (Range + If-Range, sha256 checked).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import {
    headers as protocolHeaders, routes, terminalJobStates, tokenEnvVar,
    type ApiError, type JobList, type JobProgress, type JobSpec, type JobStatus, type ServerInfo, type SubmitJobRequest,
    type SubmitJobResponse,
} from "../protocol.js";
import {checkServerName, cleartextUrlProblem, EventStreamError, jobIdPattern, readEventStream, sha256Pattern} from "../http-wire.js";
import {commitFile} from "../../durable-file.js";

/** A non-2xx answer from the server (or a failure to reach it). */
export class FederatedError extends Error {
    override name = "FederatedError";
    constructor(message: string, readonly status?: number, readonly code?: string) {
        super(message);
    }
}

/** Bytes that crossed the wire (request and response bodies, as sent: compressed when gzipped). */
export interface TrafficCounters {
    sentBytes: number;
    receivedBytes: number;
    requests: number;
}

export interface FederatedClientOptions {
    /** Server base URL, e.g. http://127.0.0.1:8080 (a trailing /v1 is accepted). */
    server: string;
    token: string;
    /** Counters to add to (shared between clients of one run); default: fresh ones. */
    traffic?: TrafficCounters;
    /** Per-request timeout for ordinary requests (ms, default 60 s). */
    timeoutMs?: number;
    /** Allow plain http:// to a host off loopback. */
    insecure?: boolean;
}

/** Reads the token: PPC_GPT_TOKEN, else the first line of `tokenFile`. Never a command-line value. */
export function readToken(tokenFile?: string): string {
    if (tokenFile !== undefined) {
        let text: string;
        try {
            text = fs.readFileSync(tokenFile, "utf8");
        } catch (err) {
            throw new FederatedError(`--token-file ${tokenFile}: cannot read (${(err as Error).message})`);
        }
        const token = text.split(/\r?\n/)[0].trim();
        if (!token)
            throw new FederatedError(`--token-file ${tokenFile}: the first line is empty`);
        return token;
    }
    const env = process.env[tokenEnvVar]?.trim();
    if (!env)
        throw new FederatedError(`no token: set ${tokenEnvVar} or give --token-file FILE (ppc-gpt server token create prints one)`);
    return env;
}

/**
 * Normalises a server URL to its origin + optional prefix, without a trailing /v1. Plain http:// to
 * a host off loopback is refused unless `insecure` (the token and the data would cross in cleartext).
 */
export function serverBase(url: string, o: {insecure?: boolean} = {}): string {
    let u: URL;
    try {
        u = new URL(url);
    } catch {
        throw new FederatedError(`--server ${JSON.stringify(url)} is not a URL (e.g. http://127.0.0.1:8080)`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:")
        throw new FederatedError(`--server ${url}: only http:// and https:// are supported`);
    const cleartext = cleartextUrlProblem(u, Boolean(o.insecure));
    if (cleartext)
        throw new FederatedError(cleartext);
    return (u.origin + u.pathname).replace(/\/+$/, "").replace(/\/v1$/, "");
}

/** A name the server chose, checked before it goes into a path (http-wire.ts checkServerName), as a FederatedError. */
function serverName(value: unknown, pattern: RegExp, what: string): string {
    try {
        return checkServerName(value, pattern, what);
    } catch (err) {
        throw new FederatedError((err as Error).message);
    }
}

const sleep = (ms: number, signal?: AbortSignal) => new Promise<void>((resolve, reject) => {
    if (signal?.aborted)
        return reject(signal.reason);
    const t = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
    }, ms);
    const onAbort = () => {
        clearTimeout(t);
        reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, {once: true});
});

export interface DownloadResult {
    path: string;
    sha256: string;
    size: number;
    /** Bytes already on disk from an interrupted download, kept through a Range request. */
    resumedFrom: number;
    /** Bytes received by this call. */
    downloaded: number;
}

export interface DownloadOptions {
    /** Expected sha256 (else the ETag's). */
    sha256?: string;
    onProgress?: (done: number, total: number) => void;
    signal?: AbortSignal;
}

export interface WaitOptions {
    onStatus?: (s: JobStatus) => void;
    onProgress?: (p: JobProgress) => void;
    signal?: AbortSignal;
    /** Poll interval when events are unavailable (ms, default 1000). */
    pollMs?: number;
    /** Give up on server-sent events and poll (default false). */
    poll?: boolean;
}

/** The client half of protocol v1. */
export class FederatedClient {
    readonly base: string;
    readonly traffic: TrafficCounters;
    private readonly token: string;
    private readonly timeoutMs: number;

    constructor(o: FederatedClientOptions) {
        this.base = serverBase(o.server, {insecure: o.insecure});
        this.token = o.token;
        this.traffic = o.traffic ?? {sentBytes: 0, receivedBytes: 0, requests: 0};
        this.timeoutMs = o.timeoutMs ?? 60_000;
    }

    private async request(method: string, route: string, o: {
        body?: Buffer; headers?: Record<string, string>; auth?: boolean; signal?: AbortSignal; timeout?: boolean;
    } = {}): Promise<Response> {
        const hdrs: Record<string, string> = {...o.headers};
        if (o.auth !== false)
            hdrs.authorization = `Bearer ${this.token}`;
        const signals = [o.signal, o.timeout === false ? undefined : AbortSignal.timeout(this.timeoutMs)].filter(Boolean) as AbortSignal[];
        let res: Response;
        try {
            res = await fetch(this.base + route, {
                method, headers: hdrs, body: o.body, signal: signals.length ? AbortSignal.any(signals) : undefined,
            });
        } catch (err) {
            if (o.signal?.aborted)
                throw err;
            const cause = (err as {cause?: {code?: string; message?: string}}).cause;
            throw new FederatedError(`${method} ${this.base}${route}: cannot reach the server (${cause?.code ?? cause?.message ?? (err as Error).message})`);
        }
        this.traffic.requests++;
        this.traffic.sentBytes += o.body?.length ?? 0;
        return res;
    }

    /** Reads a JSON body (counting its bytes); a non-2xx status becomes a FederatedError. */
    private async json<T>(res: Response, what: string): Promise<T> {
        const buf = Buffer.from(await res.arrayBuffer());
        this.traffic.receivedBytes += buf.length;
        if (!res.ok) {
            let e: Partial<ApiError> = {};
            try {
                e = JSON.parse(buf.toString("utf8"));
            } catch {
                // not JSON
            }
            throw new FederatedError(`${what}: ${res.status} ${e.error ?? res.statusText}${e.code ? ` (${e.code})` : ""}`, res.status, e.code);
        }
        try {
            return JSON.parse(buf.toString("utf8")) as T;
        } catch {
            throw new FederatedError(`${what}: the server's answer is not JSON`, res.status);
        }
    }

    async info(): Promise<ServerInfo> {
        return this.json<ServerInfo>(await this.request("GET", routes.info, {auth: false}), "GET /v1/info");
    }

    async jobs(): Promise<JobStatus[]> {
        return (await this.json<JobList>(await this.request("GET", routes.jobs), "GET /v1/jobs")).jobs;
    }

    async status(id: string, signal?: AbortSignal): Promise<JobStatus> {
        return this.json<JobStatus>(await this.request("GET", routes.job(id), {signal}), `job ${id}`);
    }

    async cancel(id: string): Promise<void> {
        const res = await this.request("DELETE", routes.job(id));
        if (res.status !== 204)
            await this.json(res, `DELETE job ${id}`);
        else
            await res.arrayBuffer();
    }

    /**
     * Submits perturbed items (gzip-compressed) with an idempotency key: the same key and body always
     * name the same job, so a retried or resumed submission never makes a second one.
     */
    async submit(body: SubmitJobRequest, idempotencyKey: string): Promise<SubmitJobResponse & {bytes: number}> {
        const raw = Buffer.from(JSON.stringify(body), "utf8");
        const gz = zlib.gzipSync(raw, {level: 6});
        const res = await this.request("POST", routes.jobs, {
            body: gz, timeout: false,  // a large upload may take longer than an ordinary request
            headers: {"content-type": "application/json", "content-encoding": "gzip", [protocolHeaders.idempotencyKey]: idempotencyKey},
        });
        const r = await this.json<SubmitJobResponse>(res, "POST /v1/jobs");
        return {...r, id: serverName(r.id, jobIdPattern, "the job id"), bytes: gz.length};
    }

    /**
     * Follows a job to a terminal state: server-sent events, reconnecting after a dropped stream
     * (the first event of every stream is the current status), and polling when the server or a
     * proxy does not stream.
     */
    async wait(id: string, o: WaitOptions = {}): Promise<JobStatus> {
        let failures = 0;
        let usePoll = Boolean(o.poll);
        for (;;) {
            if (!usePoll) {
                try {
                    const last = await this.followEvents(id, o);
                    if (last && terminalJobStates.includes(last.status))
                        return last;
                    failures = 0;
                } catch (err) {
                    if (o.signal?.aborted)
                        throw err;
                    if (err instanceof FederatedError && err.status !== undefined && err.status !== 404 && err.status !== 401 && err.status < 500) {
                        usePoll = true;  // events not offered here: poll instead
                    } else if (err instanceof FederatedError && (err.status === 404 || err.status === 401)) {
                        throw err;
                    } else if (++failures > 3) {
                        usePoll = true;
                    }
                }
                await sleep(Math.min(5000, 250 * 2 ** failures), o.signal);
                continue;
            }
            let s: JobStatus;
            try {
                s = await this.status(id, o.signal);
                failures = 0;
            } catch (err) {
                if (o.signal?.aborted || (err instanceof FederatedError && err.status !== undefined && err.status < 500))
                    throw err;
                if (++failures > 30)
                    throw err;
                await sleep(1000, o.signal);
                continue;
            }
            o.onStatus?.(s);
            if (s.progress)
                o.onProgress?.(s.progress);
            if (terminalJobStates.includes(s.status))
                return s;
            await sleep(o.pollMs ?? 1000, o.signal);
        }
    }

    /** Reads one event stream to its end; returns the last status seen. */
    private async followEvents(id: string, o: WaitOptions): Promise<JobStatus | undefined> {
        const res = await this.request("GET", routes.jobEvents(id), {headers: {accept: "text/event-stream"}, signal: o.signal, timeout: false});
        if (!res.ok || !(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
            if (res.ok) {
                await res.body?.cancel();
                throw new FederatedError(`job ${id} events: not an event stream`, 415);
            }
            await this.json(res, `job ${id} events`);
        }
        let last: JobStatus | undefined;
        try {
            // a stream silent for 3 pings is dropped (and reconnected by wait); an over-long line is refused
            await readEventStream(res.body!, {
                onBytes: (n) => (this.traffic.receivedBytes += n),
                onEvent: (event, payload) => {
                    if (event === "status") {
                        last = JSON.parse(payload) as JobStatus;
                        o.onStatus?.(last);
                        if (last.progress)
                            o.onProgress?.(last.progress);
                        return terminalJobStates.includes(last.status);
                    }
                    if (event === "progress")
                        o.onProgress?.(JSON.parse(payload) as JobProgress);
                    return false;
                },
            });
        } catch (err) {
            if (err instanceof EventStreamError)
                throw new FederatedError(`job ${id} events: ${err.message}`);
            throw err;
        }
        return last;
    }

    /**
     * Downloads a file route to `out`: bytes go to `<out>.part` as they arrive; an interrupted
     * download resumes with `Range: bytes=<have>-` and `If-Range: <etag>` (a changed file restarts
     * from 0); the sha256 of the whole file is checked before it is renamed into place.
     */
    async download(route: string, out: string, o: DownloadOptions = {}): Promise<DownloadResult> {
        const part = `${out}.part`, meta = `${out}.part.json`;
        fs.mkdirSync(path.dirname(path.resolve(out)), {recursive: true});
        let have = 0, etag: string | undefined;
        try {
            const m = JSON.parse(fs.readFileSync(meta, "utf8")) as {etag?: string; sha256?: string};
            if (m.etag && (!o.sha256 || !m.sha256 || m.sha256 === o.sha256) && fs.existsSync(part)) {
                have = fs.statSync(part).size;
                etag = m.etag;
            }
        } catch {
            // no resumable state
        }
        if (!etag)
            fs.rmSync(part, {force: true});
        const hdrs: Record<string, string> = {};
        if (etag && have > 0) {
            hdrs.range = `bytes=${have}-`;
            hdrs["if-range"] = etag;
        }
        const res = await this.request("GET", route, {headers: hdrs, signal: o.signal, timeout: false});
        if (res.status === 416 && have > 0) {
            // Our partial file is not a prefix of the current one (or is complete): start over.
            await res.arrayBuffer();
            fs.rmSync(part, {force: true});
            fs.rmSync(meta, {force: true});
            return this.download(route, out, o);
        }
        if (res.status !== 200 && res.status !== 206)
            await this.json(res, `GET ${route}`);
        const newEtag = res.headers.get("etag") ?? undefined;
        const expected = o.sha256 ?? newEtag?.replace(/^W\//, "").replace(/"/g, "");
        let resumedFrom = 0;
        if (res.status === 206) {
            const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get("content-range") ?? "");
            if (!range || Number(range[1]) !== have) {
                await res.body?.cancel();
                throw new FederatedError(`GET ${route}: the server answered range ${res.headers.get("content-range")} to bytes=${have}-`);
            }
            resumedFrom = have;
        } else {
            have = 0;
        }
        fs.writeFileSync(meta, JSON.stringify({etag: newEtag, sha256: expected}));
        const total = res.status === 206 ? Number(/\/(\d+)$/.exec(res.headers.get("content-range")!)![1])
            : Number(res.headers.get("content-length") ?? 0);
        const fd = fs.openSync(part, res.status === 206 ? "a" : "w");
        let downloaded = 0;
        try {
            const reader = res.body!.getReader();
            for (;;) {
                const {value, done} = await reader.read();
                if (done)
                    break;
                fs.writeSync(fd, value);
                downloaded += value.length;
                this.traffic.receivedBytes += value.length;
                o.onProgress?.(have + downloaded, total);
            }
            fs.fsyncSync(fd);
        } finally {
            fs.closeSync(fd);
        }
        const size = fs.statSync(part).size;
        if (total && size !== total)
            throw new FederatedError(`GET ${route}: the download ended at ${size} of ${total} bytes; run again to resume`);
        const hash = crypto.createHash("sha256");
        for await (const chunk of fs.createReadStream(part, {highWaterMark: 1 << 22}))
            hash.update(chunk as Buffer);
        const sha256 = hash.digest("hex");
        if (expected && sha256 !== expected) {
            fs.rmSync(part, {force: true});
            fs.rmSync(meta, {force: true});
            throw new FederatedError(`GET ${route}: sha256 ${sha256} does not match the expected ${expected}; the partial file was removed, run again`);
        }
        await commitFile(part, out); // fsynced above
        fs.rmSync(meta, {force: true});
        return {path: out, sha256, size, resumedFrom, downloaded};
    }

    /** The server's perturbation kit, cached by sha256 under `cacheDir` (downloaded once). */
    async perturbationKit(cacheDir: string, expected: {sha256: string; size: number}, o: DownloadOptions = {}):
        Promise<{path: string; sha256: string; cached: boolean}> {
        const file = path.join(cacheDir, `kit-${serverName(expected.sha256, sha256Pattern, "the perturbation kit's sha256")}.gguf`);
        if (fs.existsSync(file) && fs.statSync(file).size === expected.size)
            return {path: file, sha256: expected.sha256, cached: true};
        const r = await this.download(routes.perturbationKit, file, {...o, sha256: expected.sha256});
        return {path: r.path, sha256: r.sha256, cached: false};
    }

    /** The job's model (succeeded jobs only), resumable, sha256 checked against the job's. */
    async downloadModel(id: string, out: string, o: DownloadOptions = {}): Promise<DownloadResult> {
        if (o.sha256 !== undefined)
            serverName(o.sha256, sha256Pattern, "the model's sha256");
        return this.download(routes.jobModel(id), out, o);
    }
}

export type {JobSpec, JobStatus, ServerInfo};
