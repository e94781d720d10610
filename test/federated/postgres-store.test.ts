// The PostgreSQL job store against a real throwaway cluster: the JobStore contract (tokens, jobs,
// stages, idempotency keys, the per-client limit under concurrent submissions, deletion), the
// workers table's lease bookkeeping, and an outage: StoreUnavailableError while the database is
// down, the same data after it is back, and writes that wait for it when asked to. Fencing: a
// stage is recorded only by the claim that holds it, on both stores.
import test from "ava";
import {fillJobSpec} from "../../ts/federated/protocol.js";
import {stageJobId} from "../../ts/federated/distributed.js";
import {PostgresJobStore, StoreUnavailableError} from "../../ts/federated/store-postgres.js";
import {SqliteJobStore, TooManyJobsError, type JobStore, type NewJob} from "../../ts/federated/store.js";
import {tempDir} from "../helpers.js";
import {PostgresCluster, skipPostgres} from "./postgres-cluster.js";

const maybe = skipPostgres ? test.skip : test.serial;

const newJob = (id: string, client: string, extra: Partial<NewJob> = {}): NewJob =>
    ({id, client_id: client, spec: fillJobSpec({k: 2}), items: 3, items_sha256: "a".repeat(64), skipped: ["bi"], ...extra});

maybe("the JobStore contract on PostgreSQL", async (t) => {
    const pg = await PostgresCluster.create(t);
    const store = await PostgresJobStore.open(pg.url);
    t.teardown(() => store.close());
    // a second open (another process) finds the tables there
    const again = await PostgresJobStore.open(pg.url);
    await again.close();

    await store.createToken({id: "tok_1", name: "acme", token_sha256: "1".repeat(64), admin: false, created_at: "2026-01-01T00:00:00.000Z"});
    await t.throwsAsync(store.createToken({id: "tok_2", name: "acme", token_sha256: "2".repeat(64), admin: true, created_at: "x"}),
        {message: /live token named "acme"/});
    t.is((await store.tokenByHash("1".repeat(64)))?.name, "acme");
    t.deepEqual((await store.revokeToken("acme", "2026-01-02T00:00:00.000Z")).map((r) => r.id), ["tok_1"]);
    t.is(await store.tokenByHash("1".repeat(64)), undefined);
    t.is((await store.listTokens())[0].revoked_at, "2026-01-02T00:00:00.000Z");

    const now = "2026-01-01T00:00:00.000Z";
    await store.createJob(newJob("job_aaaaaaaa", "c1", {idempotency: {key: "k1", body_sha256: "b".repeat(64)}}), now, 2);
    const job = await store.job("job_aaaaaaaa");
    t.is(job?.status, "queued");
    t.is(job?.spec.k, 2);
    t.deepEqual((await store.stages("job_aaaaaaaa")).map((s) => [s.name, s.status]),
        [["synth", "pending"], ["bi", "skipped"], ["prune", "pending"], ["train", "pending"], ["merge", "pending"], ["quantize", "pending"]]);
    t.deepEqual(await store.idempotencyHit("c1", "k1"), {job_id: "job_aaaaaaaa", body_sha256: "b".repeat(64)});
    t.is(await store.idempotencyHit("c2", "k1"), undefined);
    await t.throwsAsync(store.createJob(newJob("job_bbbbbbbb", "c1", {idempotency: {key: "k1", body_sha256: "c".repeat(64)}}), now, 5),
        {message: /constraint/});
    t.is(await store.job("job_bbbbbbbb"), undefined, "a failed create leaves nothing");

    // two submissions at once against a limit of 2 with one job active: exactly one gets in
    const results = await Promise.allSettled([store.createJob(newJob("job_cccccccc", "c1"), now, 2), store.createJob(newJob("job_dddddddd", "c1"), now, 2)]);
    t.is(results.filter((r) => r.status === "fulfilled").length, 1);
    const rejected = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    t.true(rejected.reason instanceof TooManyJobsError);
    t.is(await store.activeJobCount("c1"), 2);

    await store.updateStage("job_aaaaaaaa", "synth", {status: "done", artifact_sha256: "d".repeat(64), result: {accepted: 6, rejected: 1}, seconds: 1.5});
    await store.updateJob("job_aaaaaaaa", {status: "running", stage: "prune"}, "2026-01-01T00:00:01.000Z");
    const synth = (await store.stages("job_aaaaaaaa"))[0];
    t.deepEqual(synth.result, {accepted: 6, rejected: 1});
    t.is(synth.seconds, 1.5);
    t.deepEqual((await store.jobsIn(["running"])).map((j) => j.id), ["job_aaaaaaaa"]);
    t.true((await store.referencedArtifacts()).has("d".repeat(64)));
    t.deepEqual((await store.deleteJob("job_aaaaaaaa")).sort(), ["a".repeat(64), "d".repeat(64)]);
    t.is(await store.job("job_aaaaaaaa"), undefined);
    t.is(await store.idempotencyHit("c1", "k1"), undefined);
    t.deepEqual(await store.deleteJob("job_aaaaaaaa"), []);

    // deterministic stage-job ids: one (job, stage) is one queue job, whoever enqueues it
    t.is(stageJobId("job_x", "train"), stageJobId("job_x", "train"));
    t.not(stageJobId("job_x", "train"), stageJobId("job_x", "merge"));
    t.regex(stageJobId("job_x", "train"), /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

maybe("workers: heartbeats, and only stale ones are reaped, each by one reaper", async (t) => {
    const pg = await PostgresCluster.create(t);
    const a = await PostgresJobStore.open(pg.url);
    const b = await PostgresJobStore.open(pg.url);
    t.teardown(async () => {
        await a.close();
        await b.close();
    });
    await a.registerWorker({id: "w1", host: "h1", pid: 1, stages: ["train"], concurrency: 1});
    await a.registerWorker({id: "w2", host: "h2", pid: 2, stages: ["bi", "train"], concurrency: 2});
    const claim = {claim_id: "clm_1", job_id: "job_1", stage: "train" as const, queue_job_id: stageJobId("job_1", "train"), claimed_at: "2026-01-01T00:00:00.000Z",
        progress: {done: 3, total: 10}};
    t.true(await a.heartbeat("w1", [claim], false));
    t.deepEqual((await a.workers()).find((w) => w.id === "w1")?.claims, [claim]);
    await new Promise((r) => setTimeout(r, 1200));
    t.true(await a.heartbeat("w2", [], false));
    // w1 is > 1 s old, w2 fresh: two reapers at once, w1 reaped exactly once
    const [ra, rb] = await Promise.all([a.reapStaleWorkers(1), b.reapStaleWorkers(1)]);
    t.deepEqual([...ra, ...rb].map((w) => w.id), ["w1"]);
    t.deepEqual([...ra, ...rb][0].claims, [claim]);
    t.false(await a.heartbeat("w1", [], false), "a reaped worker learns it lost its lease");
    t.deepEqual((await a.workers()).map((w) => w.id), ["w2"]);
});

/**
 * Claim A starts the train stage, is handed on (the reaper's fenced reset), claim B takes it; A's
 * late records are refused, B's go through, and the job finishes once. `announce` lists a claim in
 * a live worker row (PostgreSQL starts stages only under such claims).
 */
async function fencing(t: import("ava").ExecutionContext, store: JobStore, announce: (claim: string | undefined) => Promise<void>): Promise<void> {
    const now = "2026-01-01T00:00:00.000Z";
    await store.createJob(newJob("job_ffffffff", "c1", {skipped: ["synth", "bi", "prune", "merge", "quantize"]}), now, 2);
    await announce("clm_a");
    t.deepEqual(await store.claimStage("job_ffffffff", "train", "clm_a", now), {previous: null});
    t.like(await store.job("job_ffffffff"), {status: "running", stage: "train"});
    t.true(await store.updateStage("job_ffffffff", "train", {status: "pending"}, "clm_a"), "the reaper hands A's claim on");
    t.false(await store.updateStage("job_ffffffff", "train", {status: "pending"}, "clm_a"), "once");
    t.false(await store.updateStage("job_ffffffff", "train", {status: "done", artifact_sha256: "a".repeat(64)}, "clm_a"), "A lost it");
    await announce("clm_b");
    t.deepEqual(await store.claimStage("job_ffffffff", "train", "clm_b", now), {previous: "clm_a"}, "B continues A's folder");
    t.false(await store.updateStage("job_ffffffff", "train", {status: "done", artifact_sha256: "a".repeat(64)}, "clm_a"), "A cannot record");
    t.false(await store.updateStage("job_ffffffff", "train", {status: "failed"}, "clm_a"), "nor fail it");
    t.false(await store.finishJob("job_ffffffff", now), "a job with a stage left does not finish");
    t.true(await store.updateStage("job_ffffffff", "train", {status: "done", artifact_sha256: "b".repeat(64)}, "clm_b"));
    t.like((await store.stages("job_ffffffff")).find((s) => s.name === "train"), {status: "done", artifact_sha256: "b".repeat(64), claim_id: "clm_b"});
    t.false(await store.updateStage("job_ffffffff", "train", {status: "pending"}, "clm_b"), "a done stage is not handed on");
    t.is(await store.claimStage("job_ffffffff", "train", "clm_c", now), undefined, "nor claimed again");
    t.true(await store.finishJob("job_ffffffff", "2026-01-01T00:00:01.000Z"));
    t.false(await store.finishJob("job_ffffffff", "2026-01-01T00:00:02.000Z"), "a job finishes once");
    t.like(await store.job("job_ffffffff"), {status: "succeeded", updated_at: "2026-01-01T00:00:01.000Z"});
}

test("fencing on the embedded store: only the claim holding a stage records it", async (t) => {
    const store = SqliteJobStore.open(tempDir(t));
    t.teardown(() => store.close());
    await fencing(t, store, async () => {});
});

maybe("fencing on PostgreSQL: only a claim a live worker lists starts a stage, only its holder records it", async (t) => {
    const pg = await PostgresCluster.create(t);
    const store = await PostgresJobStore.open(pg.url);
    t.teardown(() => store.close());
    await store.registerWorker({id: "w1", host: "h", pid: 1, stages: ["train"], concurrency: 1});
    const listed = (claim: string) => ({claim_id: claim, job_id: "job_ffffffff", stage: "train" as const, queue_job_id: "q", claimed_at: "x", progress: null});
    await store.createJob(newJob("job_gggggggg", "c1"), "2026-01-01T00:00:00.000Z", 2);
    t.is(await store.claimStage("job_gggggggg", "synth", "clm_x", "2026-01-01T00:00:00.000Z"), undefined, "no worker lists clm_x");
    t.is((await store.stages("job_gggggggg"))[0].status, "pending");
    await fencing(t, store, async (claim) => {
        await store.heartbeat("w1", claim ? [listed(claim)] : [], false);
    });
});

maybe("an outage: unavailable while down, nothing lost after, waiting writes go through", async (t) => {
    const pg = await PostgresCluster.create(t);
    const store = await PostgresJobStore.open(pg.url);
    const patient = await PostgresJobStore.open(pg.url, {retryUnavailableMs: 60_000});
    t.teardown(async () => {
        await store.close();
        await patient.close();
    });
    await store.createJob(newJob("job_eeeeeeee", "c1"), "2026-01-01T00:00:00.000Z", 2);
    await pg.stop();
    const err = await t.throwsAsync(store.job("job_eeeeeeee"));
    t.true(err instanceof StoreUnavailableError, String(err));
    // a worker's write waits for the database instead of failing
    const waiting = patient.updateStage("job_eeeeeeee", "synth", {status: "done", artifact_sha256: "f".repeat(64)});
    await new Promise((r) => setTimeout(r, 1500));
    await pg.start();
    await waiting;
    const stages = await store.stages("job_eeeeeeee");
    t.is(stages[0].status, "done");
    t.is((await store.job("job_eeeeeeee"))?.status, "queued");
});
