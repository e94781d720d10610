// Benchmark: the federated server against its anchors, in one run.
// 1. A job's wall time on the server (POST -> the succeeded event on its SSE stream; server already running) against the same
//    stages run here as library calls on the same items, spec and generator (synthesize,
//    blockInfluence, planPruning + removeLayers, trainLora, mergeLora). Target <= 1.05x.
// 2. Model download throughput from the server (auth, ETag, Range support) against a plain
//    node:http file server in its own process streaming the same file to the same client, over
//    loopback. Target >= 0.8x. `cp` of the file is printed for reference.
// The generator is the scripted OpenAI-compatible server of the tests (real HTTP, instant replies),
// so both sides synthesize the same items and the comparison measures the server, not sampling.
//
//   node dist/scripts/bench/federated.js [--items 8] [--k 2] [--steps 20] [--threads 2] [--rounds 3] [--dir bench-out]
import {spawn, execFileSync, type ChildProcess} from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import {fileURLToPath} from "node:url";
import {readTaskItems} from "../../ts/data/jsonl.js";
import type {JobItem, JobSpec, JobStatus} from "../../ts/federated/protocol.js";
import {fillJobSpec} from "../../ts/federated/protocol.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {blockInfluence} from "../../ts/prune/block-influence.js";
import {planPruning} from "../../ts/prune/plan.js";
import {removeLayers} from "../../ts/prune/remove.js";
import {synthesize} from "../../ts/synth/pipeline.js";
import {createRemoteGenerator} from "../../ts/synth/remote.js";
import {mergeLora} from "../../ts/train/merge.js";
import {trainLora} from "../../ts/train/train.js";
import {ScriptedChatServer, Teacher} from "../../test/synth/openai-server.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const nItems = Number(arg("--items", "8"));
const k = Number(arg("--k", "2"));
const steps = Number(arg("--steps", "20"));
const threads = Number(arg("--threads", "2"));
const rounds = Number(arg("--rounds", "3"));
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const shared = process.env.PPC_SHARED_DIR ?? path.resolve(root, "..", "shared");
const source = path.join(shared, "models", "stories260K.gguf");
const cli = path.join(root, "dist", "ts", "cli", "main.js");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function items(n: number): JobItem[] {
    return Array.from({length: n}, (_, i) => ({
        id: `item${i}`, question: `Which statement fits best about topic number ${i}?`,
        choices: [{label: "A", text: "it is true"}, {label: "B", text: "it is false"}, {label: "C", text: "it depends"}],
    }));
}

interface Server {url: string; child: ChildProcess; token: string}

async function startServer(dataDir: string, model: string, generatorUrl: string): Promise<Server> {
    fs.rmSync(dataDir, {recursive: true, force: true});
    const token = execFileSync(process.execPath, [cli, "server", "token", "create", "--name", "bench", "--data-dir", dataDir],
        {stdio: ["ignore", "pipe", "ignore"]}).toString().trim();
    const child = spawn(process.execPath, [cli, "server", "--data-dir", dataDir, "--model", model, "--port", "0", "--json",
        "--generator-url", generatorUrl, "--generator-remote-model", "teacher", "--threads", String(threads), "--max-concurrent-jobs", "100"],
    {stdio: ["ignore", "pipe", "inherit"]});
    const url = await new Promise<string>((resolve, reject) => {
        readline.createInterface({input: child.stdout!}).once("line", (l) => resolve(JSON.parse(l).url));
        child.once("exit", (c) => reject(new Error(`server exited ${c}`)));
    });
    return {url, child, token};
}

async function runServerJob(s: Server, spec: JobSpec, jobItems: JobItem[]): Promise<{seconds: number; status: JobStatus}> {
    const started = performance.now();
    const res = await fetch(`${s.url}/v1/jobs`, {method: "POST", headers: {"content-type": "application/json", authorization: `Bearer ${s.token}`},
        body: JSON.stringify({spec, items: jobItems})});
    if (res.status !== 202)
        throw new Error(`submit: ${res.status} ${await res.text()}`);
    const {id} = await res.json() as {id: string};
    // follow the job on its event stream, as a client does (polling would load the server's CPU)
    const events = await fetch(`${s.url}/v1/jobs/${id}/events`, {headers: {authorization: `Bearer ${s.token}`}});
    let last: JobStatus | undefined;
    let buffer = "";
    for await (const chunk of events.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += Buffer.from(chunk).toString("utf8");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            if (block.startsWith("event: status\n"))
                last = JSON.parse(block.slice(block.indexOf("data: ") + 6)) as JobStatus;
        }
    }
    const seconds = (performance.now() - started) / 1000;
    if (last?.status !== "succeeded")
        throw new Error(`job ended ${last?.status}: ${last?.error}`);
    return {seconds, status: last};
}

/** The same stages as library calls, the way the CLI verbs call them. */
async function runLocal(work: string, spec: JobSpec, jobItems: JobItem[], generatorUrl: string): Promise<{seconds: number; stages: number[]}> {
    fs.rmSync(work, {recursive: true, force: true});
    fs.mkdirSync(work, {recursive: true});
    const s = fillJobSpec(spec);
    const started = performance.now();
    const marks = [started];
    const mark = () => marks.push(performance.now());
    const input = path.join(work, "items.jsonl");
    fs.writeFileSync(input, jobItems.map((i) => JSON.stringify(i)).join("\n") + "\n");
    const generator = createRemoteGenerator({baseUrl: generatorUrl, model: "teacher", concurrency: 8});
    const synthetic = path.join(work, "synthetic.jsonl");
    await synthesize({input, output: synthetic, generator, ratio: s.k, seed: s.seed});
    await generator.close();
    mark();
    const m = await loadModel(source, {threads});
    const report = await blockInfluence(m, await readTaskItems(synthetic), {metric: "bi", positions: "all", maxBatchTokens: 512,
        maxTokens: s.max_input_length + s.max_target_length});
    m.close();
    mark();
    const plan = await planPruning(source, {strategy: "bi", ratio: s.ratio, scores: report.bi});
    const pruned = path.join(work, "pruned.gguf");
    await removeLayers(source, pruned, plan.removed);
    mark();
    const adapter = path.join(work, "adapter.gguf");
    await trainLora({model: pruned, data: synthetic, output: adapter, task: "cot", rationaleWeight: s.rationale_weight, r: s.r,
        loraAlpha: s.lora_alpha, loraDropout: s.lora_dropout, learningRate: s.learning_rate, batchSize: s.batch_size, steps: s.server_steps,
        maxInputLength: s.max_input_length, maxTargetLength: s.max_target_length, seed: s.seed, threads});
    mark();
    await mergeLora(pruned, adapter, path.join(work, "model.gguf"));
    mark();
    return {seconds: (performance.now() - started) / 1000, stages: marks.slice(1).map((m, i) => (m - marks[i]) / 1000)};
}

async function download(url: string, headers: Record<string, string>, out: string): Promise<{seconds: number; bytes: number}> {
    const started = performance.now();
    const res = await fetch(url, {headers});
    if (res.status !== 200 || !res.body)
        throw new Error(`download ${url}: ${res.status}`);
    const fh = await fs.promises.open(out, "w");
    let bytes = 0;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        await fh.write(chunk);
        bytes += chunk.length;
    }
    await fh.close();
    return {seconds: (performance.now() - started) / 1000, bytes};
}

async function plainFileServer(file: string): Promise<{url: string; child: ChildProcess}> {
    const code = `const http=require("http"),fs=require("fs");const f=${JSON.stringify(file)};` +
        `const s=http.createServer((q,r)=>{r.writeHead(200,{"content-type":"application/octet-stream","content-length":fs.statSync(f).size});` +
        `fs.createReadStream(f).pipe(r)});s.listen(0,"127.0.0.1",()=>console.log(s.address().port));`;
    const child = spawn(process.execPath, ["-e", code], {stdio: ["ignore", "pipe", "inherit"]});
    const port = await new Promise<string>((resolve) => readline.createInterface({input: child.stdout!}).once("line", resolve));
    return {url: `http://127.0.0.1:${port}/`, child};
}

fs.mkdirSync(dir, {recursive: true});
const teacher = new Teacher((r) => `Generated question for seed ${r.body.seed}: which choice is right?`);
const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
const spec: JobSpec = {k, server_steps: steps, batch_size: 4, r: 4, lora_alpha: 8, max_input_length: 48, max_target_length: 48, seed: 0};
const jobItems = items(nItems);

// 1. job wall time: server vs library calls, alternating, median of the rounds
const server = await startServer(path.join(dir, "fed-bench-server"), source, gen.baseUrl);
const serverTimes: number[] = [], localTimes: number[] = [];
const serverStages: number[][] = [], localStages: number[][] = [];
let layers = "";
for (let round = 0; round < rounds; round++) {
    const local = await runLocal(path.join(dir, "fed-bench-local"), spec, jobItems, gen.baseUrl);
    localTimes.push(local.seconds);
    localStages.push(local.stages);
    const job = await runServerJob(server, spec, jobItems);
    serverTimes.push(job.seconds);
    serverStages.push(job.status.stages.map((x) => x.seconds ?? 0));
    layers = `${(job.status.plan as {layersBefore: number}).layersBefore} -> ${job.status.model!.layers}`;
}
server.child.kill("SIGTERM");

// 2. download throughput: a job on a ~100 MiB model (pruned only), then server vs a plain file server
const bigModel = path.join(dir, "fed-bench-model-f16.gguf");
if (!fs.existsSync(bigModel))
    await writeSyntheticModel(bigModel, {architecture: "llama", layers: 4, embedding: 1024, heads: 16, feedForward: 2816, vocab: 512, type: "f16"});
const big = await startServer(path.join(dir, "fed-bench-server-big"), bigModel, gen.baseUrl);
const bigJob = await runServerJob(big, {k: 1, strategy: "top", ratio: 0.2, server_retraining: false}, items(2));
const modelUrl = `${big.url}/v1/jobs/${bigJob.status.id}/model`;
const out = path.join(dir, "fed-bench-download.gguf");
const first = await download(modelUrl, {authorization: `Bearer ${big.token}`}, out);
const plainFile = path.join(dir, "fed-bench-served.gguf");
fs.copyFileSync(out, plainFile);
const plain = await plainFileServer(plainFile);
const serverRates: number[] = [], plainRates: number[] = [], cpRates: number[] = [];
for (let round = 0; round < Math.max(3, rounds); round++) {
    const p = await download(plain.url, {}, out);
    plainRates.push(p.bytes / p.seconds);
    const s = await download(modelUrl, {authorization: `Bearer ${big.token}`}, out);
    serverRates.push(s.bytes / s.seconds);
    const t0 = performance.now();
    fs.copyFileSync(plainFile, out + ".cp");
    cpRates.push(first.bytes / ((performance.now() - t0) / 1000));
}
const hash = crypto.createHash("sha256").update(fs.readFileSync(out)).digest("hex");
if (hash !== bigJob.status.model!.sha256)
    throw new Error("downloaded model does not match its sha256");
plain.child.kill();
big.child.kill("SIGTERM");
await gen.stop();
for (const f of [out, out + ".cp", plainFile])
    fs.rmSync(f, {force: true});

const mib = (x: number) => (x / (1024 * 1024)).toFixed(0);
const result = {
    job: {items: nItems, k, steps, layers, threads, server_s: median(serverTimes), local_s: median(localTimes),
        ratio: median(serverTimes) / median(localTimes), server_runs: serverTimes, local_runs: localTimes,
        stage_names: ["synth", "bi", "prune", "train", "merge"],
        server_stage_median_s: [0, 1, 2, 3, 4].map((i) => median(serverStages.map((x) => x[i]))),
        local_stage_median_s: [0, 1, 2, 3, 4].map((i) => median(localStages.map((x) => x[i])))},
    download: {bytes: first.bytes, server_MiB_s: Number(mib(median(serverRates))), plain_http_MiB_s: Number(mib(median(plainRates))),
        cp_MiB_s: Number(mib(median(cpRates))), ratio: median(serverRates) / median(plainRates)},
};
if (process.argv.includes("--json")) {
    console.log(JSON.stringify(result));
} else {
    console.log(`job (${nItems} items, k ${k}, ${steps} steps, layers ${layers}, ${threads} threads), median of ${rounds}:`);
    console.log(`  library calls  ${result.job.local_s.toFixed(2)} s   (runs ${localTimes.map((x) => x.toFixed(2)).join(", ")})`);
    console.log(`  server job     ${result.job.server_s.toFixed(2)} s   (runs ${serverTimes.map((x) => x.toFixed(2)).join(", ")})   ` +
        `${result.job.ratio.toFixed(3)}x  (target <= 1.05x)`);
    console.log(`  per stage (synth, bi, prune, train, merge), median s: library ${result.job.local_stage_median_s.map((x) => x.toFixed(2)).join(", ")}; ` +
        `server ${result.job.server_stage_median_s.map((x) => x.toFixed(2)).join(", ")}`);
    console.log(`download of ${mib(first.bytes)} MiB over loopback, median of ${serverRates.length}:`);
    console.log(`  plain node:http file server  ${result.download.plain_http_MiB_s} MiB/s`);
    console.log(`  ppc-gpt server /model        ${result.download.server_MiB_s} MiB/s   ${result.download.ratio.toFixed(3)}x  (target >= 0.8x)`);
    console.log(`  cp (reference)               ${result.download.cp_MiB_s} MiB/s`);
}
