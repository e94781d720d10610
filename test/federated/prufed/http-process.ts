// Test plumbing for `fl server` / `fl client` as real processes on loopback: the server's JSON-line
// events are collected; tokens come from the real `server token create` verb.
import {spawn, type ChildProcess} from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import type {ExecutionContext} from "ava";
import {cliPath} from "../../helpers.js";
import {writeSyntheticModel} from "../../../ts/gguf/synthetic.js";
import {removeLayers} from "../../../ts/prune/remove.js";
import {makeToken} from "../server-process.js";

export interface Proc {
    child: ChildProcess;
    events: Record<string, any>[];
    stderr: () => string;
    exited: Promise<number | null>;
    /** Resolves with the first event matching. */
    waitFor(match: (e: Record<string, any>) => boolean, what: string, timeoutMs?: number): Promise<Record<string, any>>;
    kill9(): Promise<void>;
}

export function spawnCli(t: ExecutionContext, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
    const child = spawn(process.execPath, [cliPath, ...args], {stdio: ["ignore", "pipe", "pipe"], env: {...process.env, ...env}});
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    const events: Record<string, any>[] = [];
    const waiters: {match: (e: Record<string, any>) => boolean; resolve: (e: Record<string, any>) => void}[] = [];
    readline.createInterface({input: child.stdout!}).on("line", (line) => {
        let e: Record<string, any>;
        try {
            e = JSON.parse(line);
        } catch {
            return;
        }
        events.push(e);
        for (const w of [...waiters])
            if (w.match(e)) {
                waiters.splice(waiters.indexOf(w), 1);
                w.resolve(e);
            }
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    t.teardown(async () => {
        if (child.exitCode === null && child.signalCode === null) {
            child.kill("SIGKILL");
            await exited;
        }
    });
    return {
        child, events, stderr: () => stderr, exited,
        waitFor(match, what, timeoutMs = 120_000) {
            const seen = events.find(match);
            if (seen)
                return Promise.resolve(seen);
            return new Promise((resolve, reject) => {
                const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; stderr:\n${stderr}`)), timeoutMs);
                void exited.then((code) => {
                    clearTimeout(timer);
                    reject(new Error(`process exited (${code}) before ${what}; stderr:\n${stderr}`));
                });
                waiters.push({match, resolve: (e) => {
                    clearTimeout(timer);
                    resolve(e);
                }});
            });
        },
        async kill9() {
            child.kill("SIGKILL");
            await exited;
        },
    };
}

/** A synthetic 4-layer base and two cuts: d3 (layers 0, 2, 3) and d2 (layers 0, 2). */
export async function models(dir: string): Promise<{base: string; cut: Record<string, string>}> {
    const base = path.join(dir, "base.gguf");
    await writeSyntheticModel(base, {architecture: "llama", layers: 4, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 2});
    const cut: Record<string, string> = {d4: base};
    for (const [name, removed] of [["d3", [1]], ["d2", [1, 3]]] as const) {
        cut[name] = path.join(dir, `${name}.gguf`);
        await removeLayers(base, cut[name], [...removed]);
    }
    return {base, cut};
}

export function serverArgs(base: string, dataDir: string, extra: string[]): string[] {
    return ["fl", "server", "--base", base, "--data-dir", dataDir, "--json", "--r", "4", "--lora-alpha", "8", "--seed", "5",
        "--linger", "4", ...extra];
}

export async function startServer(t: ExecutionContext, base: string, dataDir: string, extra: string[]): Promise<{proc: Proc; url: string}> {
    const proc = spawnCli(t, serverArgs(base, dataDir, extra.includes("--port") ? extra : ["--port", "0", ...extra]));
    const listening = await proc.waitFor((e) => e.event === "listening", "listening", 60_000);
    return {proc, url: listening.url};
}

/** One token per client id (the token's name is the client's id), made by the real `server token create`. */
export async function clientTokens(dataDir: string, ids: readonly string[]): Promise<Record<string, string>> {
    const tokens: Record<string, string> = {};
    for (const id of ids)
        tokens[id] = await makeToken(dataDir, id);
    return tokens;
}
