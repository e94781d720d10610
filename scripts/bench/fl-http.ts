// Benchmark: one PruFed round over loopback HTTP (an `fl server` process and three `fl client`
// processes of depths 5, 4, 3 cut from stories260K) against its anchor in the same run: the same
// three local rounds (runLocalRound: same items, steps, held-out evaluation) in three plain
// processes started at once, without federation. Both are wall-clock from spawn to the last exit;
// the federated round is also timed from the server's listening line (its start-up, ~1 s, excluded).
//
//   node dist/scripts/bench/fl-http.js [--model stories260K.gguf] [--steps 8] [--items 48] [--reps 2]
import {spawn, spawnSync} from "node:child_process";
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
import {deriveSeed} from "../../ts/train/random.js";
import {copyTask} from "../prufed/copy-task.js";

const here = fileURLToPath(import.meta.url);
const cli = path.resolve(path.dirname(here), "..", "..", "ts", "cli", "main.js");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const r = 8, alpha = 16, seed = 5;
const targets = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

// child mode: one client's local round without federation (what `fl client` does between its HTTP calls)
if (process.argv.includes("--local-child")) {
    const [base, model, items, work, steps, clientSeed] = process.argv.slice(process.argv.indexOf("--local-child") + 1);
    const layout = layoutOfBase(await readGguf(base), targets, false);
    const global = initialGlobal(layout, "layerwise", r, alpha, seed);
    const layerMap = (await readGguf(model)).originalLayers;
    const start = clientPart(global, layerMap, {method: "layerwise", r, loraAlpha: alpha, seed: 0});
    const {train, heldOut} = splitLocal(await readTaskItems(items), 0.25, Number(clientSeed));
    await runLocalRound({model, items: train, heldOut, start, round: 1, workDir: work, localSteps: Number(steps),
        seed: deriveSeed(Number(clientSeed), "fl-local", 1), train: {batchSize: 4, threads: 1}});
    process.exit(0);
}

const model = arg("--model", path.resolve(process.env.PPC_SHARED_DIR ?? "../shared", "models", "stories260K.gguf"));
const steps = arg("--steps", "8"), nItems = Number(arg("--items", "48")), reps = Number(arg("--reps", "2"));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-fl-http-"));

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, args, {stdio: ["ignore", "pipe", "pipe"], env: {...process.env, ...env}});
        let out = "", err = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (err += d));
        child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${args.join(" ")} exited ${code}: ${err}`))));
    });
}

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
    const clientArgs = ["--local-steps", steps, "--r", String(r), "--lora-alpha", String(alpha), "--batch", "4", "--threads", "1"];
    const rows: {rep: number; local: number; federated: number; round: number}[] = [];
    for (let rep = 0; rep < reps; rep++) {
        let t0 = performance.now();
        await Promise.all(models.map((m, i) => run([here, "--local-child", model, m, data[i], path.join(dir, `local-${rep}-${i}`), steps, String(i + 1)])));
        const local = (performance.now() - t0) / 1000;

        const dataDir = path.join(dir, `server-${rep}`);
        fs.mkdirSync(dataDir);
        const tokens = models.map((_, i) => spawnSync(process.execPath, [cli, "server", "token", "create", "--data-dir", dataDir, "--name", `c${i}`],
            {encoding: "utf8"}).stdout.trim());
        t0 = performance.now();
        const server = spawn(process.execPath, [cli, "fl", "server", "--base", model, "--data-dir", dataDir, "--rounds", "1", "--clients-per-round", "3",
            "--r", String(r), "--lora-alpha", String(alpha), "--seed", String(seed), "--port", "0", "--json", "--linger", "1"], {stdio: ["ignore", "pipe", "inherit"]});
        const serverExit = new Promise((resolve) => server.once("exit", resolve));
        const url = await new Promise<string>((resolve) => server.stdout.once("data", (d: Buffer) => resolve(JSON.parse(d.toString().split("\n")[0]).url)));
        const t1 = performance.now();
        await Promise.all(models.map((m, i) => run([cli, "fl", "client", "--server", url, "--model", m, "--data", data[i], "--work-dir",
            path.join(dir, `fed-${rep}-${i}`), "--seed", String(i + 1), ...clientArgs], {PPC_GPT_TOKEN: tokens[i]})));
        const federated = (performance.now() - t0) / 1000;
        await serverExit;
        const round = (performance.now() - t1) / 1000;
        rows.push({rep, local, federated, round});
        process.stdout.write(`rep ${rep}: local ${local.toFixed(2)} s, federated ${federated.toFixed(2)} s (${round.toFixed(2)} s after the server listens), ` +
            `ratio ${(federated / local).toFixed(3)}x (${(round / local).toFixed(3)}x)\n`);
    }
    const best = (k: "local" | "federated" | "round") => Math.min(...rows.map((x) => x[k]));
    process.stdout.write(`\n| run (best of ${reps}) | seconds | vs local |\n|---|---|---|\n` +
        `| three local rounds, no federation (anchor) | ${best("local").toFixed(2)} | 1.00× |\n` +
        `| one fl round over loopback (server + 3 clients) | ${best("federated").toFixed(2)} | ${(best("federated") / best("local")).toFixed(3)}× |\n` +
        `| the same, from the server listening (server start-up excluded) | ${best("round").toFixed(2)} | ${(best("round") / best("local")).toFixed(3)}× |\n`);
} finally {
    fs.rmSync(dir, {recursive: true, force: true});
}
