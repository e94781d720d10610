// Scale-out with real processes: PostgreSQL (a throwaway cluster), one `ppc-gpt server --store
// postgres://…` that runs no stages itself, and `ppc-gpt worker` processes sharing the artifacts
// directory. A worker killed with -9 in the middle of training loses its lease and the other one
// finishes the job from the last checkpoint; PostgreSQL stopped and started under a running job
// pauses the work (the server answers 503 meanwhile) and loses nothing, and a job computed by
// the workers matches the single-process server's on the same seed. A worker drained by SIGTERM
// hands its stage back, and a server with --workers 1 finishes it. A worker paused (SIGSTOP) past
// its lease and resumed (SIGCONT) after another finished its stage records nothing (fencing).
import {spawn, type ChildProcess} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import test, {type ExecutionContext} from "ava";
import type {JobStatus} from "../../ts/federated/protocol.js";
import {cliPath, hasShared, runCli, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer, Teacher} from "../synth/openai-server.js";
import {PostgresCluster, skipPostgres} from "./postgres-cluster.js";
import {auth, claimFile, getJson, items, makeToken, sha256, startServer, submit, waitJob} from "./server-process.js";

const maybe = hasShared && !skipPostgres ? test.serial : test.skip;

/** Heartbeats every second and a 4 s lease, so a dead worker is noticed quickly. */
const lease = ["--heartbeat-seconds", "1", "--lease-seconds", "4"];

interface WorkerProcess {
    id: string;
    child: ChildProcess;
    stderr: () => string;
    /** The JSON lines it printed (started, stage events, stopped). */
    events: Record<string, unknown>[];
    exited: Promise<number | null>;
}

async function startWorkerProcess(t: ExecutionContext, url: string, shared: string, genUrl: string, extra: string[] = []): Promise<WorkerProcess> {
    const child = spawn(process.execPath, [cliPath, "worker", "--store", url, "--artifacts", shared, "--model", stories260K,
        "--generator-url", genUrl, "--generator-remote-model", "teacher", "--threads", "1", "--checkpoint-every", "2", "--json", ...lease, ...extra],
    {stdio: ["ignore", "pipe", "pipe"]});
    let stderr = "";
    child.stderr!.on("data", (d) => stderr += d);
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    t.teardown(async () => {
        if (child.exitCode === null && child.signalCode === null) {
            child.kill("SIGKILL");
            await exited;
        }
    });
    const events: Record<string, unknown>[] = [];
    const id = await new Promise<string>((resolve, reject) => {
        readline.createInterface({input: child.stdout!}).on("line", (line) => {
            try {
                events.push(JSON.parse(line));
                if (events.length === 1)
                    resolve(events[0].id as string);
            } catch {
                reject(new Error(`worker printed ${line}\n${stderr}`));
            }
        });
        child.once("exit", (code) => reject(new Error(`worker exited with ${code} before starting:\n${stderr}`)));
    });
    return {id, child, stderr: () => stderr, events, exited};
}

async function pgToken(url: string, name: string, admin = false): Promise<string> {
    const r = await runCli(["server", "token", "create", "--name", name, "--store", url, ...(admin ? ["--admin"] : [])]);
    if (r.code !== 0)
        throw new Error(`token create failed: ${r.stderr}`);
    return r.stdout.trim();
}

async function until<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 90_000): Promise<T> {
    const end = Date.now() + timeoutMs;
    for (;;) {
        const v = await check();
        if (v)
            return v;
        if (Date.now() > end)
            throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 100));
    }
}

interface WorkersView {
    store: string;
    workers: {id: string; pid: number; concurrency: number; claims: {job_id: string; stage: string; claimed_at: string; progress: {done: number; total: number} | null}[]}[];
}

async function downloadChecked(t: ExecutionContext, url: string, token: string, s: JobStatus): Promise<void> {
    const res = await fetch(`${url}/v1/jobs/${s.id}/model`, {headers: auth(token)});
    t.is(res.status, 200);
    t.is(sha256(Buffer.from(await res.arrayBuffer())), s.model!.sha256);
}

const spec = (steps: number) => ({k: 2, server_steps: steps, batch_size: 2, r: 2, max_input_length: 32, max_target_length: 24, seed: 7});

maybe("a server and two workers run three jobs; a worker killed -9 mid-training hands its job to the other", async (t) => {
    const pg = await PostgresCluster.create(t);
    const shared = tempDir(t);
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const admin = await pgToken(pg.url, "ops", true);
    const token = await pgToken(pg.url, "acme");
    const server = await startServer(t, shared, ["--store", pg.url, "--model", stories260K, "--generator-url", gen.baseUrl,
        "--generator-remote-model", "teacher", "--max-concurrent-jobs", "3", ...lease]);
    const w1 = await startWorkerProcess(t, pg.url, shared, gen.baseUrl);
    // per-worker concurrency: the second worker runs up to two stages at once
    const w2 = await startWorkerProcess(t, pg.url, shared, gen.baseUrl, ["--concurrency", "2"]);

    // the long job trains long enough to be killed in the middle; two short ones run beside it
    const ids: string[] = [];
    for (const steps of [120, 4, 4]) {
        const r = await submit(server.url, token, {spec: spec(steps), items: items(3)});
        t.is(r.status, 202, JSON.stringify(r.json));
        ids.push(r.json.id);
    }
    const [long] = ids;

    t.is((await getJson(server.url, token, "/v1/workers")).status, 403, "workers are for admin tokens only");
    const checkpoint = () => claimFile(shared, long, "checkpoint/checkpoint.json");
    // the worker that claims the long job's training is frozen (SIGSTOP) as soon as a checkpoint is
    // on disk, so that it is mid-training however fast the machine trains, then looked at and killed
    const victim = await until("a worker claiming the long job's training", async () =>
        [w1, w2].find((w) => w.events.some((e) => e.event === "claimed" && e.job_id === long && e.stage === "train")), 150_000);
    const survivor = victim === w1 ? w2 : w1;
    await until("the long job's first checkpoint on disk", async () => fs.existsSync(checkpoint()), 60_000);
    victim.child.kill("SIGSTOP");
    t.false(victim.events.some((e) => e.job_id === long && e.stage === "train" && e.event !== "claimed"), "still training when frozen");
    const view = (await getJson(server.url, admin, "/v1/workers")).json as WorkersView;
    t.is(view.store, "postgres");
    t.is(view.workers.find((w) => w.id === w2.id)?.concurrency, 2);
    t.deepEqual(view.workers.map((w) => w.id).sort(), [w1.id, w2.id].sort());
    const claim = view.workers.find((w) => w.id === victim.id)?.claims.find((c) => c.job_id === long);
    t.is(claim?.stage, "train", JSON.stringify(view));
    t.false(Number.isNaN(Date.parse(claim?.claimed_at ?? "")), "since when");
    victim.child.kill("SIGKILL");
    await victim.exited;
    const savedStep = JSON.parse(fs.readFileSync(checkpoint(), "utf8")).step as number;
    t.true(savedStep > 0 && savedStep < 120, `checkpoint at step ${savedStep}`);

    const done: JobStatus[] = [];
    for (const id of ids)
        done.push(await waitJob(server.url, token, id, () => false, 240_000));
    for (const s of done) {
        t.is(s.status, "succeeded", `${s.id}: ${s.error}\n${server.stderr()}\n${survivor.stderr()}`);
        t.deepEqual(s.stages.map((x) => x.status), ["done", "done", "done", "done", "done", "skipped"]);
        await downloadChecked(t, server.url, token, s);
    }
    t.regex(server.stderr() + survivor.stderr(), new RegExp(`worker ${victim.id}.*sent no heartbeat`), "the dead worker was noticed");
    // the survivor resumed training from the checkpoint the dead worker left in the shared directory
    const store = await (await import("../../ts/federated/store-postgres.js")).PostgresJobStore.open(pg.url);
    t.teardown(() => store.close());
    const train = (await store.stages(long)).find((x) => x.name === "train")!.result as {steps: number; resumed_from: number | null};
    t.is(train.steps, 120);
    t.true(train.resumed_from !== null && train.resumed_from >= savedStep, `resumed from ${train.resumed_from}, checkpoint was at ${savedStep}`);
    // the dead worker is gone from the list; the survivor holds nothing
    const after = (await getJson(server.url, admin, "/v1/workers")).json as WorkersView;
    t.deepEqual(after.workers.map((w) => w.id), [survivor.id]);
    t.deepEqual(after.workers[0].claims, []);
    t.false(fs.existsSync(path.join(shared, "jobs", long)), "the work folder is gone once the job is done");

    // SIGTERM drains: the survivor exits cleanly and removes itself
    survivor.child.kill("SIGTERM");
    t.is(await survivor.exited, 0, survivor.stderr());
    t.deepEqual(((await getJson(server.url, admin, "/v1/workers")).json as WorkersView).workers, []);
});

maybe("PostgreSQL stopped and started under a running job: 503 meanwhile, then the job finishes, nothing lost", async (t) => {
    const pg = await PostgresCluster.create(t);
    const shared = tempDir(t);
    // questions named by their request's seed, so that two runs of one job ask the same things
    const teacher = new Teacher((r) => `Generated question for seed ${r.body.seed}: which choice is right?`);
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await pgToken(pg.url, "acme");
    const admin = await pgToken(pg.url, "ops", true);
    const server = await startServer(t, shared, ["--store", pg.url, "--model", stories260K, "--generator-url", gen.baseUrl,
        "--generator-remote-model", "teacher", ...lease]);
    // a CPU worker for synthesis only, a "GPU" worker for the rest
    const cpu = await startWorkerProcess(t, pg.url, shared, gen.baseUrl, ["--stages", "synth"]);
    const worker = await startWorkerProcess(t, pg.url, shared, gen.baseUrl, ["--stages", "bi,prune,train,merge"]);
    const seen = new Map<string, Set<string>>();
    const watchWorkers = async () => {
        const view = (await getJson(server.url, admin, "/v1/workers")).json as WorkersView;
        for (const w of view.workers ?? [])
            for (const c of w.claims)
                seen.set(w.id, (seen.get(w.id) ?? new Set()).add(c.stage));
    };
    const first = await submit(server.url, token, {spec: spec(80), items: items(3)});
    const secondItems = items(2);
    const second = await submit(server.url, token, {spec: spec(4), items: secondItems});
    t.is(first.status, 202);
    t.is(second.status, 202);
    await until("the first job in training", async () => {
        await watchWorkers();
        const s = (await getJson(server.url, token, `/v1/jobs/${first.json.id}`)).json as JobStatus;
        return s.stage === "train" && (s.progress?.done ?? 0) >= 2;
    }, 150_000);

    await pg.stop();
    const down = await getJson(server.url, token, `/v1/jobs/${first.json.id}`);
    t.is(down.status, 503);
    t.is(down.json.code, "store_unavailable");
    const refused = await submit(server.url, token, {spec: spec(4), items: items(2)});
    t.is(refused.status, 503, "a submission while the store is down is refused, not half-stored");
    // longer than the lease: after the restart nobody may be declared dead for the outage itself
    await new Promise((r) => setTimeout(r, 6000));
    t.is(server.child.exitCode, null, "the server is still running");
    t.is(worker.child.exitCode, null, "the worker is still running");
    t.is(cpu.child.exitCode, null, "the synth worker is still running");
    await pg.start();

    for (const r of [first, second]) {
        const s = await waitJob(server.url, token, r.json.id, () => false, 240_000);
        t.is(s.status, "succeeded", `${s.error}\n${server.stderr()}\n${worker.stderr()}`);
        await downloadChecked(t, server.url, token, s);
    }
    t.notRegex(worker.stderr() + cpu.stderr(), /lost its lease/, "the outage did not cost a worker its lease");
    // --stages: each worker only ever held the stages it takes
    t.deepEqual([...(seen.get(cpu.id) ?? [])].filter((s) => s !== "synth"), []);
    t.deepEqual([...(seen.get(worker.id) ?? [])].filter((s) => s === "synth"), []);
    t.true(seen.get(worker.id)?.has("train"), "the GPU worker trained");
    const jobs = (await getJson(server.url, token, "/v1/jobs")).json.jobs as JobStatus[];
    t.deepEqual(jobs.map((j) => j.id).sort(), [first.json.id, second.json.id].sort(), "exactly the two accepted jobs exist");

    // the single-process server on its embedded store computes the same job to the same bytes
    const alone = tempDir(t);
    const aloneToken = await makeToken(alone, "acme");
    const single = await startServer(t, alone, ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "1"]);
    const again = await submit(single.url, aloneToken, {spec: spec(4), items: secondItems});
    const reference = await waitJob(single.url, aloneToken, again.json.id, () => false, 120_000);
    const distributed = jobs.find((j) => j.id === second.json.id)!;
    t.is(reference.status, "succeeded");
    // the same synthetic items (the generator's replies may come back in another order)...
    const {PostgresJobStore} = await import("../../ts/federated/store-postgres.js");
    const {SqliteJobStore} = await import("../../ts/federated/store.js");
    const pgStore = await PostgresJobStore.open(pg.url);
    t.teardown(() => pgStore.close());
    const synthOf = (dir: string, sha: string) => fs.readFileSync(path.join(dir, "artifacts", sha.slice(0, 2), sha), "utf8").split("\n").filter(Boolean).sort();
    const sqlite = SqliteJobStore.open(alone);
    const referenceSynth = sqlite.stages(reference.id).find((x) => x.name === "synth")!.artifact_sha256!;
    sqlite.close();
    const distributedSynth = (await pgStore.stages(distributed.id)).find((x) => x.name === "synth")!.artifact_sha256!;
    t.deepEqual(synthOf(shared, distributedSynth), synthOf(alone, referenceSynth));
    // ...the same Block Influence up to summation order, the same layers removed, the same model shape
    const bi = (s: JobStatus) => (s.plan as {layerValues: number[]}).layerValues;
    bi(distributed).forEach((v, i) => t.true(Math.abs(v - bi(reference)[i]) < 1e-9, `layer ${i}: ${v} vs ${bi(reference)[i]}`));
    t.deepEqual((distributed.plan as {removed: number[]}).removed, (reference.plan as {removed: number[]}).removed);
    t.is(distributed.model!.layers, reference.model!.layers);
    t.is(distributed.model!.parameters, reference.model!.parameters);
});

maybe("SIGTERM drains a worker: its training is handed back uncounted; a server with --workers 1 finishes the job and streams it", async (t) => {
    const pg = await PostgresCluster.create(t);
    const shared = tempDir(t);
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await pgToken(pg.url, "acme");
    const serverArgs = ["--store", pg.url, "--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "1", "--checkpoint-every", "2", ...lease];
    const front = await startServer(t, shared, serverArgs);
    const worker = await startWorkerProcess(t, pg.url, shared, gen.baseUrl, ["--drain-seconds", "0"]);
    const r = await submit(front.url, token, {spec: spec(80), items: items(3)});
    t.is(r.status, 202);
    const id: string = r.json.id;
    const checkpoint = () => claimFile(shared, id, "checkpoint/checkpoint.json");
    await until("training with a checkpoint", async () => {
        const s = (await getJson(front.url, token, `/v1/jobs/${id}`)).json as JobStatus;
        return s.stage === "train" && (s.progress?.done ?? 0) >= 4 && fs.existsSync(checkpoint());
    }, 150_000);
    worker.child.kill("SIGTERM");
    t.is(await worker.exited, 0, worker.stderr());
    t.regex(worker.stderr(), new RegExp(`handed back the train stage of ${id}`));
    t.deepEqual(worker.events.filter((e) => e.job_id === id).map((e) => `${e.event} ${e.stage}`),
        ["claimed synth", "done synth", "claimed bi", "done bi", "claimed prune", "done prune", "claimed train", "handed-back train"]);
    t.is(worker.events.at(-1)?.event, "stopped");
    const savedStep = JSON.parse(fs.readFileSync(checkpoint(), "utf8")).step as number;

    // the queue job is waiting again, and the hand-back did not count as a retry
    const {PostgresJobStore} = await import("../../ts/federated/store-postgres.js");
    const store = await PostgresJobStore.open(pg.url);
    t.teardown(() => store.close());
    const q = (await store.pool.query("select state, retry_count from pgboss.job where name = 'ppc-gpt-train'")).rows;
    t.deepEqual(q, [{state: "created", retry_count: 0}]);
    t.is((await store.stages(id)).find((s) => s.name === "train")!.status, "pending");
    t.deepEqual(await store.workers(), [], "a drained worker removes itself");

    // a new front that runs stages itself picks the job up; its event stream ends with the result
    await front.stop();
    const server = await startServer(t, shared, [...serverArgs, "--workers", "1"]);
    const events = await fetch(`${server.url}/v1/jobs/${id}/events`, {headers: auth(token)});
    t.is(events.status, 200);
    const text = await events.text();
    const statuses = [...text.matchAll(/event: status\ndata: (.*)\n/g)].map((m) => JSON.parse(m[1]) as JobStatus);
    t.is(statuses.at(-1)?.status, "succeeded", text.slice(-2000) + server.stderr());
    const s = await waitJob(server.url, token, id);
    t.is(s.status, "succeeded");
    await downloadChecked(t, server.url, token, s);
    const train = (await store.stages(id)).find((x) => x.name === "train")!.result as {steps: number; resumed_from: number | null};
    t.is(train.steps, 80);
    t.true(train.resumed_from !== null && train.resumed_from >= savedStep, `resumed from ${train.resumed_from}, checkpoint at ${savedStep}`);
});

maybe("a worker killed -9 during synthesis: another continues from the journal in the shared directory", async (t) => {
    const pg = await PostgresCluster.create(t);
    const shared = tempDir(t);
    // every reply takes a moment, so the kill lands in the middle of synthesis
    const teacher = new Teacher((r) => `Generated question for seed ${r.body.seed}: which choice is right?`);
    const gen = await ScriptedChatServer.start((r) => ({...teacher.reply(r), delayMs: 60}));
    t.teardown(() => gen.stop());
    const token = await pgToken(pg.url, "acme");
    const server = await startServer(t, shared, ["--store", pg.url, "--model", stories260K, "--generator-url", gen.baseUrl,
        "--generator-remote-model", "teacher", ...lease]);
    const first = await startWorkerProcess(t, pg.url, shared, gen.baseUrl, ["--generator-concurrency", "2"]);
    const k = 3, n = 4;
    const r = await submit(server.url, token, {spec: {...spec(2), k}, items: items(n)});
    t.is(r.status, 202);
    const id: string = r.json.id;
    const output = () => claimFile(shared, id, "synthetic.jsonl");
    const lines = () => fs.existsSync(output()) ? fs.readFileSync(output(), "utf8").split("\n").filter(Boolean).length : 0;
    await until("two synthetic items on disk", async () => lines() >= 2);
    first.child.kill("SIGKILL");
    await first.exited;
    const before = lines();
    t.true(before < n * k, "the kill came before synthesis finished");
    const questionsBefore = gen.of("question").length;

    const second = await startWorkerProcess(t, pg.url, shared, gen.baseUrl, ["--generator-concurrency", "2"]);
    const s = await waitJob(server.url, token, id, () => false, 150_000);
    t.is(s.status, "succeeded", `${s.error}\n${server.stderr()}\n${second.stderr()}`);
    t.deepEqual(s.synth, {accepted: n * k, rejected: 0});
    const questionsAfter = gen.of("question").length - questionsBefore;
    t.true(questionsAfter <= n * k - before, `${questionsAfter} new questions after ${before} of ${n * k} were kept`);
    // the job is succeeded before its last stage's "done" line is printed: give that line a moment to arrive
    const doneStages = () => second.events.filter((e) => e.job_id === id && e.event === "done").map((e) => e.stage);
    await until("the merge stage's done line", async () => doneStages().includes("merge"), 10_000).catch(() => undefined);
    t.deepEqual(doneStages(), ["synth", "bi", "prune", "train", "merge"], second.stderr());
    await downloadChecked(t, server.url, token, s);
});

maybe("a worker paused past its lease and resumed after another took its stage records nothing: the job finishes once, with the second's artifact", async (t) => {
    const pg = await PostgresCluster.create(t);
    const shared = tempDir(t);
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await pgToken(pg.url, "acme");
    const server = await startServer(t, shared, ["--store", pg.url, "--model", stories260K, "--generator-url", gen.baseUrl,
        "--generator-remote-model", "teacher", ...lease]);
    // the first worker alone takes the job; it is frozen mid-training, once it has a checkpoint
    const first = await startWorkerProcess(t, pg.url, shared, gen.baseUrl);
    const r = await submit(server.url, token, {spec: spec(30), items: items(3)});
    t.is(r.status, 202);
    const id: string = r.json.id;
    const firstClaim = await until("the first worker's claim of training", async () =>
        first.events.find((e) => e.event === "claimed" && e.job_id === id && e.stage === "train")?.claim as string | undefined, 150_000);
    const firstFolder = path.join(shared, "jobs", id, firstClaim);
    await until("its first checkpoint", async () => fs.existsSync(path.join(firstFolder, "checkpoint", "checkpoint.json")), 60_000);
    first.child.kill("SIGSTOP");
    const savedStep = JSON.parse(fs.readFileSync(path.join(firstFolder, "checkpoint", "checkpoint.json"), "utf8")).step as number;

    // a second worker takes the stage once the lease is over, continues from a copy of the checkpoint, finishes the job
    const second = await startWorkerProcess(t, pg.url, shared, gen.baseUrl);
    const s = await waitJob(server.url, token, id, () => false, 240_000);
    t.is(s.status, "succeeded", `${s.error}\n${server.stderr()}\n${second.stderr()}`);
    const secondClaim = second.events.find((e) => e.event === "claimed" && e.job_id === id && e.stage === "train")?.claim;
    t.truthy(secondClaim, "the second worker took the training");
    t.not(secondClaim, firstClaim);
    const {PostgresJobStore} = await import("../../ts/federated/store-postgres.js");
    const store = await PostgresJobStore.open(pg.url);
    t.teardown(() => store.close());
    const recorded = async () => ({job: await store.job(id), stages: await store.stages(id)});
    const before = await recorded();
    const train = before.stages.find((x) => x.name === "train")!;
    t.is(train.claim_id, secondClaim as string);
    t.true((train.result as {resumed_from: number | null}).resumed_from! >= savedStep, JSON.stringify(train.result));

    // resumed, the first worker finishes its training before its next heartbeat can tell it that it was
    // declared dead: heartbeats are held back (a SHARE lock on the workers table) for as long as it takes,
    // the window every woken worker has, made wide enough to be sure to be used
    const hold = await store.pool.connect();
    t.teardown(() => hold.release());
    await hold.query("begin");
    await hold.query(`lock table ${store.schema}.workers in share mode`);
    first.child.kill("SIGCONT");
    const end = await until("the first worker's end of its training", async () =>
        first.events.find((e) => e.job_id === id && e.stage === "train" && e.event !== "claimed"), 150_000);
    await hold.query("commit");
    t.is(end.event, "lease-lost", `${JSON.stringify(end)}\n${first.stderr()}`);
    t.deepEqual(await recorded(), before, "nothing of the first worker's is recorded: the job finished once, with the second's artifact");
    t.false(fs.existsSync(path.join(shared, "jobs", id)), "the first worker's folder went with its lost claim");
    await downloadChecked(t, server.url, token, s);
    t.is(first.child.exitCode, null, "the first worker lives on");
});
