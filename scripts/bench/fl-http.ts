// Benchmark: PruFed rounds over loopback HTTP (an `fl server` process and three `fl client`
// processes of depths 5, 4, 3 cut from stories260K) against its anchor in the same run: the same
// local rounds (runLocalRound: same items, steps and held-out evaluations, each round starting from
// the previous one's adapter) in three plain processes started at once, without federation.
// Wall-clock from spawn to the last client's exit (the server's --linger after the last round is not
// counted), and a timeline of every JSON event, so the federation's cost is split into its phases:
// server start-up, client start-up to registration, the wait for the last registration, per round
// the long poll + download, local work + upload, and the server's close; and per round (rounds ≥ 2:
// steady state) the federated round (server round_started -> round_closed) against the anchor's
// slowest client's round.
//
//   node dist/scripts/bench/fl-http.js [--model stories260K.gguf] [--steps 8] [--items 48] [--rounds 3] [--reps 2] [--secure]
import {spawn, spawnSync} from "node:child_process";
import readline from "node:readline";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {readTaskItems, writeJsonlAtomic} from "../../ts/data/jsonl.js";
import {readGguf} from "../../ts/gguf/read.js";
import {removeLayers} from "../../ts/prune/remove.js";
import {layoutOfBase} from "../../ts/federated/prufed/align.js";
import {clientPart, initialGlobal} from "../../ts/federated/prufed/aggregate.js";
import {runLocalRound} from "../../ts/federated/prufed/client.js";
import {splitLocal} from "../../ts/federated/prufed/http-client.js";
import {deriveSeed} from "../../ts/random.js";
import {readLoraAdapter} from "../../ts/train/adapter.js";
import {copyTask} from "../prufed/copy-task.js";

const here = fileURLToPath(import.meta.url);
const cli = path.resolve(path.dirname(here), "..", "..", "ts", "cli", "main.js");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const r = 8, alpha = 16, seed = 5;
const targets = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

// child mode: one client's local rounds without federation (what `fl client` does between its HTTP calls)
if (process.argv.includes("--local-child")) {
    const [base, model, items, work, steps, clientSeed, rounds] = process.argv.slice(process.argv.indexOf("--local-child") + 1);
    const layout = layoutOfBase(await readGguf(base), targets, false);
    const global = initialGlobal(layout, "layerwise", r, alpha, seed);
    const layerMap = (await readGguf(model)).originalLayers;
    let start = clientPart(global, layerMap, {method: "layerwise", r, loraAlpha: alpha, seed: 0});
    const {train, heldOut} = splitLocal(await readTaskItems(items), 0.25, Number(clientSeed));
    for (let n = 1; n <= Number(rounds); n++) {
        const t = performance.now();
        const res = await runLocalRound({model, items: train, heldOut, start, round: n, workDir: work, localSteps: Number(steps),
            seed: deriveSeed(Number(clientSeed), "fl-local", n), train: {batchSize: 4, threads: 1}});
        start = await readLoraAdapter(res.upload);
        process.stdout.write(JSON.stringify({event: "local_round", round: n, seconds: (performance.now() - t) / 1000}) + "\n");
    }
    process.exit(0);
}

const model = arg("--model", path.resolve(process.env.PPC_SHARED_DIR ?? "../shared", "models", "stories260K.gguf"));
const steps = arg("--steps", "8"), nItems = Number(arg("--items", "48")), reps = Number(arg("--reps", "2")), rounds = Number(arg("--rounds", "3"));
const secure = process.argv.includes("--secure");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-fl-http-"));

type Event = {at: number; who: string; e: Record<string, any>};

/** Runs a process; every JSON line it prints is kept with its arrival time (s since `t0`). */
function run(args: string[], who: string, events: Event[], t0: number, env: NodeJS.ProcessEnv = {}): {exited: Promise<number>; child: ReturnType<typeof spawn>} {
    const child = spawn(process.execPath, args, {stdio: ["ignore", "pipe", "pipe"], env: {...process.env, ...env}});
    let err = "";
    readline.createInterface({input: child.stdout!}).on("line", (line) => {
        try {
            events.push({at: (performance.now() - t0) / 1000, who, e: JSON.parse(line)});
        } catch {
            // a table line
        }
    });
    child.stderr!.on("data", (d) => (err += d));
    const exited = new Promise<number>((resolve, reject) => child.once("exit", (code) => {
        events.push({at: (performance.now() - t0) / 1000, who, e: {event: "exit"}});
        return code === 0 ? resolve((performance.now() - t0) / 1000) : reject(new Error(`${args.join(" ")} exited ${code}: ${err}`));
    }));
    return {exited, child};
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
const f2 = (x: number) => x.toFixed(2);

try {
    const models = [model];
    for (const removed of [[4], [3, 4]]) {
        const out = path.join(dir, `d${5 - removed.length}.gguf`);
        await removeLayers(model, out, removed);
        models.push(out);
    }
    const data = await Promise.all(models.map(async (_, i) => {
        const file = path.join(dir, `c${i}.jsonl`);
        await writeJsonlAtomic(file, copyTask(nItems, 20 + i));
        return file;
    }));
    const clientArgs = ["--local-steps", steps, "--r", String(r), "--lora-alpha", String(alpha), "--batch", "4", "--threads", "1", "--json"];
    const rows: {local: number; federated: number; fromListening: number; phases: Record<string, number>; fedRound: number[]; localRound: number[]}[] = [];
    for (let rep = 0; rep < reps; rep++) {
        // anchor: the same local rounds, three processes at once
        const localEvents: Event[] = [];
        let t0 = performance.now();
        await Promise.all(models.map((m, i) => run([here, "--local-child", model, m, data[i], path.join(dir, `local-${rep}-${i}`), steps, String(i + 1),
            String(rounds)], `c${i}`, localEvents, t0).exited));
        const local = (performance.now() - t0) / 1000;
        const localRound = Array.from({length: rounds}, (_, n) =>
            Math.max(...localEvents.filter((x) => x.e.event === "local_round" && x.e.round === n + 1).map((x) => x.e.seconds as number)));

        const dataDir = path.join(dir, `server-${rep}`);
        fs.mkdirSync(dataDir);
        const tokens = models.map((_, i) => spawnSync(process.execPath, [cli, "server", "token", "create", "--data-dir", dataDir, "--name", `c${i}`],
            {encoding: "utf8"}).stdout.trim());
        const ev: Event[] = [];
        t0 = performance.now();
        const server = run([cli, "fl", "server", "--base", model, "--data-dir", dataDir, "--rounds", String(rounds), "--clients-per-round", "3",
            "--r", String(r), "--lora-alpha", String(alpha), "--seed", String(seed), "--port", "0", "--json", "--linger", "1",
            ...(secure ? ["--secure-aggregation"] : [])], "server", ev, t0);
        while (!ev.some((x) => x.e.event === "listening"))
            await new Promise((res) => setTimeout(res, 5));
        const listening = ev.find((x) => x.e.event === "listening")!;
        const clientsExited = await Promise.all(models.map((m, i) => run([cli, "fl", "client", "--server", listening.e.url, "--model", m, "--data", data[i],
            "--work-dir", path.join(dir, `fed-${rep}-${i}`), "--seed", String(i + 1), ...clientArgs], `c${i}`, ev, t0, {PPC_GPT_TOKEN: tokens[i]}).exited));
        const federated = Math.max(...clientsExited);
        await server.exited;
        // the timeline, as means over the three clients
        const at = (who: string, match: (e: Record<string, any>) => boolean) => ev.find((x) => x.who === who && match(x.e))?.at ?? NaN;
        const clients = models.map((_, i) => `c${i}`);
        const server1 = at("server", (e) => e.event === "round_started" && e.round === 1);
        const phases: Record<string, number> = {
            "server start-up (spawn -> listening)": listening.at,
            "client start-up (spawn -> registered)": mean(clients.map((c) => at(c, (e) => e.event === "registered") - listening.at)),
            "wait for the last registration (registered -> round 1 opens)": mean(clients.map((c) => server1 - at(c, (e) => e.event === "registered"))),
        };
        const poll: number[] = [], work: number[] = [], close: number[] = [], fedRound: number[] = [];
        for (let n = 1; n <= rounds; n++) {
            const open = at("server", (e) => e.event === "round_started" && e.round === n);
            const closed = at("server", (e) => e.event === "round_closed" && e.round === n);
            fedRound.push(closed - open);
            for (const c of clients) {
                const started = at(c, (e) => e.event === "round_started" && e.round === n);
                poll.push(started - open);
                work.push(at(c, (e) => e.event === "uploaded" && e.round === n) - started);
            }
            close.push(closed - Math.max(...clients.map((c) => at(c, (e) => e.event === "uploaded" && e.round === n))));
        }
        phases["per round: long poll + download (round opens -> client starts)"] = mean(poll);
        phases[`per round: local work${secure ? " + secure phases" : " + upload"} (client starts -> uploaded)`] = mean(work);
        phases["per round: last upload -> round closed"] = mean(close);
        phases["finish: last round closed -> client exit"] = mean(clients.map((c) => at(c, (e) => e.event === "exit") -
            at("server", (e) => e.event === "round_closed" && e.round === rounds)));
        const fromListening = federated - listening.at;
        rows.push({local, federated, fromListening, phases, fedRound, localRound});
        process.stdout.write(`rep ${rep}: local ${f2(local)} s, federated ${f2(federated)} s (${f2(fromListening)} s after the server listens), ` +
            `ratio ${(federated / local).toFixed(3)}x (${(fromListening / local).toFixed(3)}x); rounds fed ${fedRound.map(f2).join(" ")} s, ` +
            `local ${localRound.map(f2).join(" ")} s\n`);
    }
    // every rep (the machine is shared: one rep is not representative), and the phases' mean over reps
    const steady = (xs: number[]) => (rounds > 1 ? mean(xs.slice(1)) : xs[0]);
    const phaseNames = Object.keys(rows[0].phases);
    process.stdout.write(`\n${rounds} round(s), E = ${steps}${secure ? ", secure aggregation" : ""}, ${reps} rep(s):\n\n` +
        `| rep | local rounds, no federation (anchor) | fl server + 3 clients, spawn -> last exit | vs anchor | from the server listening | vs anchor | ` +
        `one round, steady state (rounds ≥ 2), fed vs anchor's slowest client | vs anchor |\n|---|---|---|---|---|---|---|---|\n` +
        rows.map((x, i) => `| ${i} | ${f2(x.local)} s | ${f2(x.federated)} s | ${(x.federated / x.local).toFixed(2)}× | ${f2(x.fromListening)} s | ` +
            `${(x.fromListening / x.local).toFixed(2)}× | ${f2(steady(x.fedRound))} vs ${f2(steady(x.localRound))} s | ` +
            `${(steady(x.fedRound) / steady(x.localRound)).toFixed(2)}× |`).join("\n") +
        `\n\n| phase (mean over clients, rounds and reps) | seconds |\n|---|---|\n` +
        phaseNames.map((k) => `| ${k} | ${mean(rows.map((x) => x.phases[k])).toFixed(3)} |`).join("\n") + "\n");
} finally {
    fs.rmSync(dir, {recursive: true, force: true});
}
