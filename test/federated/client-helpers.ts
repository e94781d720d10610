// Real processes for the client tests: a `ppc-gpt server` child on a free loopback port with the
// scripted OpenAI-compatible generator, tokens made by `ppc-gpt server token create`, client
// children, and a recording TCP proxy (node:net) that keeps every byte each way.
import {spawn, type ChildProcess} from "node:child_process";
import readline from "node:readline";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import type {ExecutionContext} from "ava";
import {stopChild} from "../../ts/cli/run.js";
import {cliPath, runCli, stories260K} from "../helpers.js";
import {ScriptedChatServer, Teacher} from "../synth/openai-server.js";

/** The neighbour-index cache of the client processes, kept out of the user's home folder. */
export const clientCacheDir = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-gpt-client-cache-"));
process.once("exit", () => fs.rmSync(clientCacheDir, {recursive: true, force: true}));

/** The environment of client children: the test cache folder. */
export function clientEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return {...process.env, PPC_GPT_CACHE_DIR: clientCacheDir, ...extra};
}

export interface ServerProcess {
    url: string;
    child: ChildProcess;
    stderr: () => string;
    stop: () => Promise<void>;
}

/** A scripted teacher on loopback: deterministic synthetic questions, answers and rationales. */
export async function startGenerator(): Promise<ScriptedChatServer> {
    const teacher = new Teacher();
    return ScriptedChatServer.start((req) => teacher.reply(req));
}

/** Starts `ppc-gpt server --port 0 --json` and waits for its listening line. */
export async function startServer(dataDir: string, generatorUrl: string, extra: string[] = []): Promise<ServerProcess> {
    const child = spawn(process.execPath, [cliPath, "server", "--port", "0", "--json", "--data-dir", dataDir, "--model", stories260K,
        "--generator-url", generatorUrl, "--generator-remote-model", "teacher", "--threads", "2", ...extra],
    {stdio: ["ignore", "pipe", "pipe"], env: {...process.env}});
    let out = "", err = "";
    child.stderr!.on("data", (d) => { err += d; });
    const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`server did not start in 60 s: ${err}`)), 60_000);
        child.stdout!.on("data", (d) => {
            out += d;
            for (const line of out.split("\n")) {
                try {
                    const v = JSON.parse(line);
                    if (v.event === "listening") {
                        clearTimeout(timer);
                        resolve(v.url);
                    }
                } catch {
                    // not a whole JSON line yet
                }
            }
        });
        child.once("exit", (code) => {
            clearTimeout(timer);
            reject(new Error(`server exited with ${code}: ${err}`));
        });
    });
    return {
        url, child, stderr: () => err,
        stop: () => stopChild(child),
    };
}

export async function createToken(dataDir: string, name: string): Promise<string> {
    const r = await runCli(["server", "token", "create", "--name", name, "--data-dir", dataDir, "--json"]);
    if (r.code !== 0)
        throw new Error(`token create failed: ${r.stderr}`);
    return JSON.parse(r.stdout).token;
}

/** A scripted generator and a server process on `<dir>/srv`, both stopped when the test ends. */
export async function startFederation(t: ExecutionContext, dir: string, serverArgs: string[] = []):
    Promise<{generator: ScriptedChatServer; server: ServerProcess; serverDir: string}> {
    const generator = await startGenerator();
    t.teardown(() => generator.stop());
    const serverDir = path.join(dir, "srv");
    const server = await startServer(serverDir, generator.baseUrl, serverArgs);
    t.teardown(() => server.stop());
    return {generator, server, serverDir};
}

/** A JSON line the client printed, or {} for a line that is not JSON. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function jsonLine(line: string): any {
    try {
        return JSON.parse(line);
    } catch {
        return {};
    }
}

export interface ClientResult {
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
}

/** Runs `ppc-gpt client …` as a child with the token in its environment; `onStderr` sees progress lines. */
export function spawnClient(args: string[], token: string, o: {onStderr?: (line: string, child: ChildProcess) => void; env?: NodeJS.ProcessEnv} = {}):
    {child: ChildProcess; done: Promise<ClientResult>} {
    const child = spawn(process.execPath, [cliPath, "client", ...args], {
        stdio: ["ignore", "pipe", "pipe"], env: clientEnv({PPC_GPT_TOKEN: token, ...o.env}),
    });
    let stdout = "", stderr = "";
    child.stdout!.on("data", (d) => { stdout += d; });
    child.stderr!.on("data", (d) => { stderr += d; });
    readline.createInterface({input: child.stderr!}).on("line", (line) => o.onStderr?.(line, child));
    const done = new Promise<ClientResult>((resolve) => child.once("close", (code, signal) => resolve({code, signal, stdout, stderr})));
    return {child, done};
}

/** One TCP connection's bytes through the proxy. */
export interface RecordedConnection {
    up: Buffer[];
    down: Buffer[];
}

/**
 * A recording TCP proxy: every byte from client to server (up) and back (down) is kept, per
 * connection. `throttle` delays downstream data: after `afterBytes` bytes of a connection whose
 * upstream request matches `match`, each chunk waits `delayMs` (so a test can kill mid-download).
 */
export class RecordingProxy {
    readonly connections: RecordedConnection[] = [];
    throttle?: {match: RegExp; afterBytes: number; delayMs: number; chunk: number};
    /** Cuts connections whose request matches `match` once they carried `afterBytes` downstream, `times` times. */
    cut?: {match: RegExp; afterBytes: number; times: number};
    /** Connections cut by `cut`. */
    cuts = 0;
    /** Once a connection's request stream matches, nothing more of it is forwarded (recorded still): the request hangs. */
    hold?: RegExp;
    private server?: net.Server;
    private readonly sockets = new Set<net.Socket>();
    port = 0;

    constructor(private readonly target: {host: string; port: number}) {}

    static async start(targetUrl: string): Promise<RecordingProxy> {
        const u = new URL(targetUrl);
        const p = new RecordingProxy({host: u.hostname, port: Number(u.port)});
        await p.listen();
        return p;
    }

    get url(): string {
        return `http://127.0.0.1:${this.port}`;
    }

    private listen(): Promise<void> {
        this.server = net.createServer((client) => {
            const rec: RecordedConnection = {up: [], down: []};
            this.connections.push(rec);
            const upstream = net.connect(this.target.port, this.target.host);
            this.sockets.add(client);
            this.sockets.add(upstream);
            let held = false;
            client.on("data", (d) => {
                rec.up.push(Buffer.from(d));
                held ||= this.hold !== undefined && this.hold.test(Buffer.concat(rec.up).toString("latin1"));
                if (!held)
                    upstream.write(d);
            });
            let downBytes = 0;
            let queue = Promise.resolve();
            upstream.on("data", (d) => {
                rec.down.push(Buffer.from(d));
                const th = this.throttle;
                const upText = Buffer.concat(rec.up).toString("latin1");
                const cut = this.cut;
                if (cut && cut.times > 0 && cut.match.test(upText) && downBytes + d.length >= cut.afterBytes) {
                    cut.times--;
                    this.cuts++;
                    client.destroy();
                    upstream.destroy();
                    return;
                }
                if (!th || !th.match.test(upText)) {
                    client.write(d);
                    downBytes += d.length;
                    return;
                }
                upstream.pause();
                queue = queue.then(async () => {
                    for (let i = 0; i < d.length; i += th.chunk) {
                        const part = (d as Buffer).subarray(i, i + th.chunk);
                        if (downBytes >= th.afterBytes)
                            await new Promise((r) => setTimeout(r, th.delayMs));
                        if (client.destroyed)
                            return;
                        client.write(part);
                        downBytes += part.length;
                    }
                    upstream.resume();
                });
            });
            const close = () => {
                client.destroy();
                upstream.destroy();
                this.sockets.delete(client);
                this.sockets.delete(upstream);
            };
            client.on("close", close);
            upstream.on("close", () => void queue.then(close));
            client.on("error", close);
            upstream.on("error", close);
        });
        return new Promise((resolve) => this.server!.listen(0, "127.0.0.1", () => {
            this.port = (this.server!.address() as net.AddressInfo).port;
            resolve();
        }));
    }

    /** Everything sent by the client, all connections, with HTTP bodies de-chunked and gunzipped. */
    sentDecoded(): string {
        return this.connections.map((c) => decodeHttpStream(Buffer.concat(c.up))).join("\n");
    }

    sentRaw(): Buffer {
        return Buffer.concat(this.connections.flatMap((c) => c.up));
    }

    receivedRaw(): Buffer {
        return Buffer.concat(this.connections.flatMap((c) => c.down));
    }

    async close(): Promise<void> {
        for (const s of this.sockets)
            s.destroy();
        await new Promise<void>((r) => this.server?.close(() => r()) ?? r());
    }
}

/**
 * Splits an HTTP/1.1 request stream into messages and returns their heads and bodies as text:
 * chunked bodies are de-chunked and gzip bodies decompressed, so a search sees what was meant.
 */
export function decodeHttpStream(buf: Buffer): string {
    return decodeHttpMessages(buf).map((b) => b.toString("utf8")).join("\n");
}

/** The same split as bytes (heads, then bodies de-chunked and gunzipped): a stream either way (requests or responses). */
export function decodeHttpMessages(buf: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (at < buf.length) {
        const headEnd = buf.indexOf("\r\n\r\n", at);
        if (headEnd < 0) {
            out.push(buf.subarray(at));
            break;
        }
        const head = buf.subarray(at, headEnd).toString("latin1");
        out.push(buf.subarray(at, headEnd));
        at = headEnd + 4;
        const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        const chunked = /\r\ntransfer-encoding:\s*chunked/i.test(head);
        let body: Buffer = Buffer.alloc(0);
        if (length) {
            body = buf.subarray(at, at + Number(length[1]));
            at += Number(length[1]);
        } else if (chunked) {
            const parts: Buffer[] = [];
            for (;;) {
                const lineEnd = buf.indexOf("\r\n", at);
                if (lineEnd < 0)
                    break;
                const size = parseInt(buf.subarray(at, lineEnd).toString("latin1"), 16);
                at = lineEnd + 2;
                if (!size) {
                    at = buf.indexOf("\r\n", at) + 2 || buf.length;
                    break;
                }
                parts.push(buf.subarray(at, at + size));
                at += size + 2;
            }
            body = Buffer.concat(parts);
        }
        if (/\r\ncontent-encoding:\s*gzip/i.test(head) && body.length) {
            try {
                body = zlib.gunzipSync(body);
            } catch {
                // left as sent
            }
        }
        out.push(body);
    }
    return out;
}

/** A small private set in task-item JSONL with distinctive words, answers and ids. */
export function writePrivateItems(dir: string, n: number, tag: string): {file: string; items: {id: string; question: string;
    choices: {label: string; text: string}[]; answer: string}[]} {
    const items = Array.from({length: n}, (_, i) => ({
        id: `${tag}-secret-id-${1000 + i}`,
        question: `Which treatment did patient ${tag}${i} named Zorblax receive at the Quintessa clinic on day ${i}?`,
        choices: [
            {label: "A", text: `aspirin course ${tag}${i} with Marvolent`},
            {label: "B", text: `physical therapy ${tag}${i} at Quintessa`},
            {label: "C", text: `surgery ${tag}${i} by doctor Pellinore`},
        ],
        answer: "ABC"[i % 3],
    }));
    const file = path.join(dir, `${tag}-private.jsonl`);
    fs.writeFileSync(file, items.map((x) => JSON.stringify(x)).join("\n") + "\n");
    return {file, items};
}
