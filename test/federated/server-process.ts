// Test plumbing for the federated server: the real `ppc-gpt server` as a child process on a free
// loopback port, tokens made with the real `server token` verb, and small HTTP helpers.
import {spawn, type ChildProcess} from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import type {ExecutionContext} from "ava";
import {SqliteJobStore} from "../../ts/federated/store.js";
import type {JobItem, JobSpec, JobStatus} from "../../ts/federated/protocol.js";
import {cliPath, runCli} from "../helpers.js";

export interface ServerProcess {
    url: string;
    child: ChildProcess;
    stderr: () => string;
    /** kill -9, and wait for the exit. */
    kill9(): Promise<void>;
    /** SIGTERM, and wait for the exit. */
    stop(): Promise<void>;
}

/** Starts `ppc-gpt server --port 0 --json` with these extra arguments; resolves with its URL. */
export async function startServer(t: ExecutionContext, dataDir: string, args: string[]): Promise<ServerProcess> {
    const child = spawn(process.execPath, [cliPath, "server", "--data-dir", dataDir, "--port", "0", "--json", ...args],
        {stdio: ["ignore", "pipe", "pipe"]});
    let stderr = "";
    child.stderr!.on("data", (d) => stderr += d);
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    t.teardown(async () => {
        if (child.exitCode === null && child.signalCode === null) {
            child.kill("SIGKILL");
            await exited;
        }
    });
    const url = await new Promise<string>((resolve, reject) => {
        const lines = readline.createInterface({input: child.stdout!});
        lines.once("line", (line) => {
            try {
                resolve(JSON.parse(line).url);
            } catch {
                reject(new Error(`server printed ${line}\n${stderr}`));
            }
        });
        child.once("exit", (code) => reject(new Error(`server exited with ${code} before listening:\n${stderr}`)));
    });
    return {
        url, child, stderr: () => stderr,
        async kill9() {
            child.kill("SIGKILL");
            await exited;
        },
        async stop() {
            child.kill("SIGTERM");
            await exited;
        },
    };
}

export async function makeToken(dataDir: string, name: string): Promise<string> {
    const r = await runCli(["server", "token", "create", "--name", name, "--data-dir", dataDir]);
    if (r.code !== 0)
        throw new Error(`token create failed: ${r.stderr}`);
    return r.stdout.trim();
}

export function auth(token: string): Record<string, string> {
    return {authorization: `Bearer ${token}`};
}

export async function submit(url: string, token: string, body: {spec?: JobSpec; items: JobItem[]} | string,
    extra: Record<string, string> = {}): Promise<{status: number; json: any; headers: Headers}> {
    const res = await fetch(`${url}/v1/jobs`, {method: "POST", headers: {"content-type": "application/json", ...auth(token), ...extra},
        body: typeof body === "string" ? body : JSON.stringify(body)});
    const text = await res.text();
    return {status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers};
}

export async function getJson(url: string, token: string | undefined, route: string): Promise<{status: number; json: any}> {
    const res = await fetch(`${url}${route}`, {headers: token ? auth(token) : {}});
    const text = await res.text();
    return {status: res.status, json: text ? JSON.parse(text) : undefined};
}

/** Polls the job until `done(status)` holds (or it reaches a terminal state). */
export async function waitJob(url: string, token: string, id: string, done: (s: JobStatus) => boolean = () => false,
    timeoutMs = 150_000): Promise<JobStatus> {
    const until = Date.now() + timeoutMs;
    for (;;) {
        const r = await getJson(url, token, `/v1/jobs/${id}`);
        if (r.status !== 200)
            throw new Error(`GET job ${id}: ${r.status} ${JSON.stringify(r.json)}`);
        const s = r.json as JobStatus;
        if (done(s) || ["succeeded", "failed", "cancelled"].includes(s.status))
            return s;
        if (Date.now() > until)
            throw new Error(`job ${id} still ${s.status} (${s.stage}) after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 100));
    }
}

/** Perturbed-looking items with random ids (what a client would send). */
export function items(n: number): JobItem[] {
    const topics = ["plants need sunlight", "copper conducts electricity", "bees make honey", "ice melts when warm", "magnets attract iron",
        "the moon orbits earth"];
    return Array.from({length: n}, (_, i) => ({
        id: crypto.randomBytes(6).toString("base64url"),
        question: `Which statement fits best: ${topics[i % topics.length]} (${i})?`,
        choices: [{label: "A", text: "it is true"}, {label: "B", text: "it is false"}, {label: "C", text: "it depends"}],
    }));
}

/** What the data dir holds: job rows, artifact files, job work folders. */
export function storedState(dataDir: string): {jobs: number; artifacts: string[]; workDirs: string[]} {
    const store = SqliteJobStore.open(dataDir);
    const jobs = store.allJobIds().size;
    store.close();
    const artDir = path.join(dataDir, "artifacts");
    const artifacts = fs.existsSync(artDir) ? fs.readdirSync(artDir).flatMap((d) => fs.readdirSync(path.join(artDir, d))) : [];
    const jobsDir = path.join(dataDir, "jobs");
    return {jobs, artifacts, workDirs: fs.existsSync(jobsDir) ? fs.readdirSync(jobsDir) : []};
}

export function sha256(bytes: Uint8Array): string {
    return crypto.createHash("sha256").update(bytes).digest("hex");
}

/**
 * A file in a job's claim folder, `<data dir>/jobs/<job>/<claim>/<rel>` (each claim of a stage
 * works in its own folder): the most recently written one, or a path that does not exist.
 */
export function claimFile(dataDir: string, jobId: string, rel: string): string {
    const dir = path.join(dataDir, "jobs", jobId);
    const found = (fs.existsSync(dir) ? fs.readdirSync(dir) : []).map((c) => path.join(dir, c, rel)).filter((f) => fs.existsSync(f));
    found.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
    return found[0] ?? path.join(dir, "-", rel);
}
