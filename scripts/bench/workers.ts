// Benchmark: scale-out throughput. The same small jobs (stories260K as source, the scripted
// OpenAI-compatible generator, tiny k and steps) run three ways in one run:
//   - the single-process server on its embedded store (the anchor),
//   - a server on PostgreSQL with one `ppc-gpt worker` process,
//   - the same with two worker processes.
// Printed: jobs per hour of each (and the two-worker / one-worker ratio), and the queue's cost per
// stage: the gap between one stage finishing and the job's next stage starting, median over every
// job, against the median time of a stage itself, for the embedded scheduler and for the queue. Every process gets --threads 1.
//
//   node dist/scripts/bench/workers.js [--jobs 4] [--steps 4] [--k 2] [--items 2] [--generator-delay-ms 0]
//
// With --generator-delay-ms the synth stage waits on its (remote) generator as it does in
// production, and workers on one machine overlap that waiting; without it every stage is
// CPU-bound and two workers on the same cores compete for them.
import {spawn, type ChildProcess} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import {fileURLToPath} from "node:url";
import type {JobStatus} from "../../ts/federated/protocol.js";
import {PostgresCluster} from "../../test/federated/postgres-cluster.js";
import {ScriptedChatServer, Teacher} from "../../test/synth/openai-server.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const cli = path.join(root, "dist", "ts", "cli", "main.js");
const shared = process.env.PPC_SHARED_DIR ?? path.resolve(root, "..", "shared");
const model = path.join(shared, "models", "stories260K.gguf");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const nJobs = Number(arg("--jobs", "4"));
const spec = {k: Number(arg("--k", "2")), server_steps: Number(arg("--steps", "4")), batch_size: 2, r: 2, max_input_length: 32, max_target_length: 24, seed: 7};
const nItems = Number(arg("--items", "2"));
/** Latency of every generator reply, as a remote generator has (0: instant, every stage CPU-bound). */
const delayMs = Number(arg("--generator-delay-ms", "0"));

const teardowns: (() => unknown)[] = [];
const children: ChildProcess[] = [];

/** Starts a ppc-gpt verb that prints one JSON line when ready; resolves with that line. */
async function start(args: string[]): Promise<{child: ChildProcess; first: any}> {
    const child = spawn(process.execPath, [cli, ...args], {stdio: ["ignore", "pipe", "pipe"]});
    children.push(child);
    let stderr = "";
    child.stderr!.on("data", (d) => stderr += d);
    const first = await new Promise((resolve, reject) => {
        readline.createInterface({input: child.stdout!}).once("line", (l) => resolve(JSON.parse(l)));
        child.once("exit", (c) => reject(new Error(`${args[0]} exited ${c}: ${stderr}`)));
    });
    return {child, first};
}

async function stop(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null)
        return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
}

async function token(where: string[]): Promise<string> {
    const child = spawn(process.execPath, [cli, "server", "token", "create", "--name", `b${Date.now()}`, ...where], {stdio: ["ignore", "pipe", "inherit"]});
    let out = "";
    child.stdout!.on("data", (d) => out += d);
    const code = await new Promise((r) => child.once("exit", r));
    if (code !== 0)
        throw new Error(`token create exited ${code}`);
    return out.trim();
}

function items(n: number, offset: number) {
    return Array.from({length: n}, (_, i) => ({id: `it${offset}_${i}`, question: `Which statement fits best: item ${offset}.${i}?`,
        choices: [{label: "A", text: "it is true"}, {label: "B", text: "it is false"}, {label: "C", text: "it depends"}]}));
}

async function runJobs(url: string, tok: string): Promise<{seconds: number; statuses: JobStatus[]}> {
    const h = {authorization: `Bearer ${tok}`, "content-type": "application/json"};
    const t0 = performance.now();
    const ids: string[] = [];
    for (let j = 0; j < nJobs; j++) {
        const r = await fetch(`${url}/v1/jobs`, {method: "POST", headers: h, body: JSON.stringify({spec, items: items(nItems, j)})});
        if (r.status !== 202)
            throw new Error(`submit: ${r.status} ${await r.text()}`);
        ids.push(((await r.json()) as {id: string}).id);
    }
    const statuses: JobStatus[] = [];
    for (const id of ids)
        for (;;) {
            const s = await (await fetch(`${url}/v1/jobs/${id}`, {headers: h})).json() as JobStatus;
            if (s.status === "succeeded") {
                statuses.push(s);
                break;
            }
            if (s.status === "failed" || s.status === "cancelled")
                throw new Error(`job ${id} ${s.status}: ${s.error}`);
            await new Promise((r) => setTimeout(r, 50));
        }
    return {seconds: (performance.now() - t0) / 1000, statuses};
}

const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Gaps between one stage's end and the next stage's start within a job (waiting for a free worker is not in them), and the stages' own times. */
function stageTiming(statuses: JobStatus[]): {gapMs: number; stageMs: number} {
    const gaps: number[] = [];
    const stages: number[] = [];
    for (const s of statuses) {
        let prev: number | undefined;
        for (const st of s.stages.filter((x) => x.status === "done")) {
            if (prev !== undefined)
                gaps.push(Date.parse(st.started_at!) - prev);
            stages.push(st.seconds! * 1000);
            prev = Date.parse(st.finished_at!);
        }
    }
    return {gapMs: median(gaps), stageMs: median(stages)};
}

async function main(): Promise<void> {
    // questions named by their request's seed: every setup is asked the same things
    const teacher = new Teacher((r) => `Generated question for seed ${r.body.seed}: which choice is right?`);
    const gen = await ScriptedChatServer.start((r) => ({...teacher.reply(r), delayMs}));
    teardowns.push(() => gen.stop());
    const genArgs = ["--generator-url", gen.baseUrl, "--generator-remote-model", "teacher", "--threads", "1"];
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-bench-workers-"));
    teardowns.push(() => fs.rmSync(tmp, {recursive: true, force: true}));
    const load = () => os.loadavg()[0].toFixed(1);
    const rows: {name: string; seconds: number; perHour: number; gapMs: number; stageMs: number; load: string; statuses: JobStatus[]}[] = [];

    // the anchor: one process, embedded store, one job at a time
    {
        const dir = path.join(tmp, "embedded");
        const tok = await token(["--data-dir", dir]);
        const {child, first} = await start(["server", "--data-dir", dir, "--port", "0", "--json", "--model", model, "--max-concurrent-jobs",
            String(nJobs), ...genArgs]);
        const r = await runJobs(first.url, tok);
        await stop(child);
        rows.push({name: "single process, embedded store", seconds: r.seconds, perHour: nJobs * 3600 / r.seconds, ...stageTiming(r.statuses), load: load(), statuses: r.statuses});
    }

    const pg = await PostgresCluster.create({teardown: (fn: () => unknown) => void teardowns.push(fn)} as never);
    for (const workers of [1, 2]) {
        const schemaUrl = pg.url;
        const dir = path.join(tmp, `pg${workers}`);
        fs.mkdirSync(dir, {recursive: true});
        // a fresh database per run: nothing left from the previous one
        const db = `bench${workers}`;
        await new Promise<void>((resolve, reject) => {
            const c = spawn(process.execPath, ["-e", `const pg=require(${JSON.stringify(path.join(root, "node_modules", "pg"))});` +
                `const c=new pg.Client({connectionString:${JSON.stringify(schemaUrl)}});c.connect().then(()=>c.query('create database ${db}')).then(()=>c.end())` +
                `.catch(e=>{console.error(e.message);process.exit(1)})`], {stdio: "inherit"});
            c.once("exit", (code) => code === 0 ? resolve() : reject(new Error("create database failed")));
        });
        const url = pg.url.replace(/\/postgres$/, `/${db}`);
        const tok = await token(["--store", url]);
        const server = await start(["server", "--store", url, "--data-dir", dir, "--port", "0", "--json", "--model", model,
            "--max-concurrent-jobs", String(nJobs), ...genArgs]);
        const ws = [];
        for (let i = 0; i < workers; i++)
            ws.push(await start(["worker", "--store", url, "--artifacts", dir, "--model", model, "--json", ...genArgs]));
        const r = await runJobs(server.first.url, tok);
        for (const w of ws)
            await stop(w.child);
        await stop(server.child);
        rows.push({name: `PostgreSQL, ${workers} worker process${workers > 1 ? "es" : ""}`, seconds: r.seconds, perHour: nJobs * 3600 / r.seconds,
            ...stageTiming(r.statuses), load: load(), statuses: r.statuses});
    }

    console.log(`${nJobs} jobs of ${nItems} items, k ${spec.k}, ${spec.server_steps} training steps, generator delay ${delayMs} ms; ${os.cpus().length} cores (${os.cpus()[0].model})`);
    console.log("| setup | wall s | jobs/hour | median gap before a stage (ms) | median stage (ms) | gap / stage | load avg |");
    console.log("|---|---|---|---|---|---|---|");
    for (const r of rows)
        console.log(`| ${r.name} | ${r.seconds.toFixed(1)} | ${r.perHour.toFixed(0)} | ${r.gapMs.toFixed(0)} | ${r.stageMs.toFixed(0)} | ` +
            `${(r.gapMs / r.stageMs).toFixed(3)} | ${r.load} |`);
    // the same items, spec and seed: the same plan, and (when synthesis returns its items in the same order) the same model
    const plan = (st: JobStatus) => JSON.stringify((st.plan as {removed?: number[]} | null)?.removed ?? null);
    for (const row of rows.slice(1)) {
        const samePlan = row.statuses.filter((st, i) => plan(st) === plan(rows[0].statuses[i])).length;
        const sameModel = row.statuses.filter((st, i) => st.model?.sha256 === rows[0].statuses[i].model?.sha256).length;
        console.log(`${row.name}: same pruning plan as the single process in ${samePlan}/${nJobs} jobs, same model sha256 in ${sameModel}/${nJobs}`);
    }
    console.log(`two workers / one worker: ${(rows[2].perHour / rows[1].perHour).toFixed(2)}x jobs per hour; ` +
        `one worker / single process: ${(rows[1].perHour / rows[0].perHour).toFixed(2)}x`);
}

try {
    await main();
} finally {
    for (const c of children)
        if (c.exitCode === null && c.signalCode === null)
            c.kill("SIGKILL");
    for (const fn of teardowns.reverse())
        await fn();
}
