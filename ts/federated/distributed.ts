// Scale-out (docs/federated.md, "Scale-out"): the stages of every job as pg-boss jobs on
// PostgreSQL, claimed by workers on any machine that mounts the shared artifacts directory.
//
// - One pg-boss queue per stage (`ppc-gpt-synth`, `ppc-gpt-bi`, …), so a worker started with
//   `--stages bi,prune,train` only ever fetches those. A job has at most one stage queued at a
//   time: whoever finishes stage s enqueues the job's next stage. The pg-boss job id of (job, stage)
//   is derived from both, so enqueueing twice (a retry, the reconciler) never makes two.
// - Lease and heartbeat: pg-boss 10 has no heartbeat, only an expiry. Each worker writes a row in
//   `workers` every `heartbeatSeconds` with what it holds. Any live worker, and the server, deletes
//   the rows older than `leaseSeconds` and fails their pg-boss jobs (`boss.fail`), which pg-boss
//   retries at once: another worker takes the stage and resumes the job from its last finished
//   stage (training from its last checkpoint, which lives in the shared directory). The expiry
//   (`expireSeconds`) stays as the backstop for a worker that died between fetch and heartbeat.
// - Fencing: every claim of a stage has its own id, listed in the worker's row. The stage row is
//   started only under a claim a live worker row lists, and recorded (done, failed, handed back)
//   only while it is still running under that claim; a new claim overwrites the id. A worker
//   declared dead (a long pause, a partition) that wakes up and finishes its stage before its next
//   heartbeat tells it so finds its record refused and drops it. Each claim works in its own folder
//   (pipeline.ts), the next one in a copy of it, so the woken worker never writes into the new
//   owner's files either.
// - A worker that finds its own row gone stops its stages at once without recording anything:
//   their claims were handed on.
// - Graceful drain (SIGTERM): no more fetching; the current stages finish, or after the drain
//   timeout are stopped and handed back (the pg-boss job is deleted and sent again under the same
//   id, so the hand-back does not count as a retry).
import crypto from "node:crypto";
import {EventEmitter} from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import PgBoss from "pg-boss";
import {ClaimLostError, JobCancelledError, newClaimId, nextStage, runJobStage, type PipelineEnv} from "./pipeline.js";
import {stageNames, terminalJobStates, type JobProgress, type StageName} from "./protocol.js";
import type {SchedulerEvents} from "./scheduler.js";
import type {Generator} from "../synth/generator.js";
import {PostgresJobStore, StoreUnavailableError, type WorkerClaim, type WorkerRecord} from "./store-postgres.js";

export interface QueueSettings {
    /** Seconds between a worker's heartbeats (default 3). */
    heartbeatSeconds: number;
    /** A worker silent for this long is dead and its stages go to another (default 15). */
    leaseSeconds: number;
    /** pg-boss expiry of a claimed stage: the backstop when no heartbeat ever named it (default 6 h). */
    expireSeconds: number;
    /** How many times a stage is handed on after its worker died (default 5). */
    retryLimit: number;
}

export const queueDefaults: QueueSettings = {heartbeatSeconds: 3, leaseSeconds: 15, expireSeconds: 6 * 3600, retryLimit: 5};

/** A generator for a process that never synthesizes (a front without workers, a GPU-only worker): asking it is a bug. */
export function noGenerator(name: string, why: string): Generator {
    return {name, concurrency: 1, structuredOutput: "none" as Generator["structuredOutput"], close: async () => {},
        generate: async () => {
            throw new Error(why);
        }};
}

/** The pg-boss queue of a stage. */
export const stageQueue = (stage: StageName): string => `ppc-gpt-${stage}`;

/** The pg-boss job id of one stage of one job: a UUID derived from both. */
export function stageJobId(jobId: string, stage: StageName): string {
    const h = crypto.createHash("sha256").update(`ppc-gpt/${jobId}/${stage}`).digest("hex");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${"89ab"[parseInt(h[16], 16) & 3]}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

interface StageJobData {
    job_id: string;
}

type Log = (line: string) => void;

/** A log that says the same thing at most once a minute (a database outage repeats itself). */
function quietLog(log: Log): Log {
    const last = new Map<string, number>();
    return (line) => {
        const t = Date.now();
        if ((last.get(line) ?? 0) + 60_000 > t)
            return;
        last.set(line, t);
        log(line);
    };
}

/** Starts pg-boss on the store's database and makes sure every stage queue exists. */
export async function startQueue(store: PostgresJobStore, log: Log): Promise<PgBoss> {
    const quiet = quietLog(log);
    const boss = new PgBoss({connectionString: store.url, schema: "pgboss", max: 4, application_name: "ppc-gpt-queue",
        // nothing is scheduled; maintenance (expiry, archiving) runs in whichever process holds its lock
        schedule: false, supervise: true, migrate: true});
    boss.on("error", (err) => quiet(`queue: ${err.message}`));
    await boss.start();
    for (const stage of stageNames)
        await boss.createQueue(stageQueue(stage), {name: stageQueue(stage)});
    return boss;
}

/** Queues the job's next unfinished stage (nothing when every stage is done or skipped). */
export async function enqueueNextStage(store: PostgresJobStore, boss: PgBoss, jobId: string, settings: QueueSettings): Promise<StageName | undefined> {
    const next = nextStage(await store.stages(jobId));
    if (next)
        await store.retry(() => boss.send(stageQueue(next), {job_id: jobId} satisfies StageJobData, {id: stageJobId(jobId, next),
            retryLimit: settings.retryLimit, retryDelay: 0, expireInSeconds: settings.expireSeconds}));
    return next;
}

/**
 * Makes sure every queued or running job has its next stage queued (after a crash between "done"
 * and "enqueue"), and fails the jobs whose stage pg-boss gave up on (its workers died more often
 * than the retry limit allows).
 */
export async function reconcileQueue(store: PostgresJobStore, boss: PgBoss, settings: QueueSettings, log?: Log): Promise<void> {
    for (const job of await store.jobsIn(["queued", "running"])) {
        const next = await enqueueNextStage(store, boss, job.id, settings);
        if (!next) {
            // every stage done, but its last worker died before saying so
            await store.finishJob(job.id, new Date().toISOString());
            continue;
        }
        const queued = await store.retry(() => boss.getJobById<StageJobData>(stageQueue(next), stageJobId(job.id, next)));
        if (queued?.state === "failed") {
            const message = `the ${next} stage lost its worker ${queued.retryCount + 1} times (retry limit ${queued.retryLimit}); ` +
                `last: ${JSON.stringify(queued.output ?? null)}`;
            await store.updateJob(job.id, {status: "failed", error: message}, new Date().toISOString());
            await store.updateStage(job.id, next, {status: "failed"});
        } else if (queued?.state === "completed" || queued?.state === "cancelled") {
            // its queue entry ended but the stage is not done: nobody would ever take it again. Queue
            // it afresh; if it was done after all (a race with this check), its taker just moves on.
            log?.(`queue reconciler: the ${next} stage of ${job.id} left the queue (${queued.state}) unfinished; queueing it again`);
            await store.retry(() => boss.deleteJob(stageQueue(next), stageJobId(job.id, next)));
            await enqueueNextStage(store, boss, job.id, settings);
        }
    }
}

/**
 * Declares dead the workers silent for longer than the lease and hands their stages on: the
 * pg-boss job fails (retried at once by pg-boss), the stage row goes back to pending.
 */
export async function reapDeadWorkers(store: PostgresJobStore, boss: PgBoss, settings: QueueSettings, log: Log): Promise<WorkerRecord[]> {
    const dead = await store.reapStaleWorkers(settings.leaseSeconds);
    for (const w of dead)
        for (const c of w.claims) {
            log(`worker ${w.id} (${w.host} pid ${w.pid}) sent no heartbeat for ${w.seconds_since_seen.toFixed(1)} s; ` +
                `its ${c.stage} stage of ${c.job_id} goes to another worker`);
            await store.retry(() => boss.fail(stageQueue(c.stage), c.queue_job_id,
                {error: `worker ${w.id} on ${w.host} stopped sending heartbeats during ${c.stage}`}));
            // only if that claim still holds it (it may have been taken, or finished, meanwhile)
            await store.updateStage(c.job_id, c.stage, {status: "pending"}, c.claim_id);
        }
    return dead;
}

/** Why a running stage was stopped. */
type StopReason = "hand-back" | "lease-lost" | "deleted";

class StageStopped extends JobCancelledError {
    constructor(readonly reason: StopReason) {
        super(`the stage was stopped (${reason})`);
    }
}

/** What happened to a stage this worker claimed (for its log and JSON lines). */
export interface StageEvent {
    event: "claimed" | "done" | "failed" | "handed-back" | "lease-lost" | "cancelled" | "retry-later";
    job_id: string;
    stage: StageName;
    /** The claim's id (its fencing token and folder name). */
    claim: string;
    /** Seconds since the claim. */
    seconds: number;
    error?: string;
}

interface Claim {
    claim: WorkerClaim;
    /** Its lease was lost: no longer announced in heartbeats, so it cannot start the stage again. */
    lost?: boolean;
    /** A heartbeat that listed it reached the store (the store starts a stage only under an announced claim). */
    announced?: boolean;
    controller: AbortController;
    added: Set<string>;
    done: Promise<void>;
}

export interface StageWorkerOptions {
    store: PostgresJobStore;
    boss: PgBoss;
    /** The pipeline's environment; its store must be `store`. */
    env: PipelineEnv;
    /** Stages this worker takes (default: all). */
    stages?: StageName[];
    /** Stages run at once (default 1). */
    concurrency?: number;
    settings?: Partial<QueueSettings>;
    /** Pause between empty fetches, ms (default 500). */
    pollMs?: number;
    log?: Log;
}

/** A worker: claims stages of any job from the queues it serves, keeps its lease, drains on request. */
export class StageWorker extends EventEmitter<SchedulerEvents & {idle: []; stage: [StageEvent]}> {
    readonly id: string;
    readonly stages: StageName[];
    readonly concurrency: number;
    readonly settings: QueueSettings;
    private readonly claims = new Map<string, Claim>();
    private readonly store: PostgresJobStore;
    private readonly boss: PgBoss;
    private readonly log: Log;
    private readonly quiet: Log;
    private readonly pollMs: number;
    private draining = false;
    private stopped = false;
    private slots: Promise<void>[] = [];
    private timers: NodeJS.Timeout[] = [];
    private wake: (() => void)[] = [];
    /** When a store call last failed (a reaper must not judge others by heartbeats it could not see). */
    private lastStoreError = 0;
    private beating: Promise<void> | undefined;

    constructor(private readonly options: StageWorkerOptions) {
        super();
        this.setMaxListeners(0);
        this.store = options.store;
        this.boss = options.boss;
        this.stages = options.stages ?? [...stageNames];
        this.concurrency = options.concurrency ?? 1;
        this.settings = {...queueDefaults, ...options.settings};
        this.log = options.log ?? ((line) => process.stderr.write(line + "\n"));
        this.quiet = quietLog(this.log);
        this.pollMs = options.pollMs ?? 500;
        this.id = `wrk_${os.hostname().replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 40)}_${process.pid}_${crypto.randomBytes(4).toString("hex")}`;
    }

    /** Registers the worker and starts its heartbeat, its reaper and `concurrency` fetch loops. */
    async start(): Promise<void> {
        await this.register();
        const beat = this.settings.heartbeatSeconds * 1000;
        this.timers.push(setInterval(() => void this.heartbeat(), beat));
        // reapers look a little less often than heartbeats come, each at its own phase
        this.timers.push(setInterval(() => void this.reap(), beat + Math.floor(Math.random() * 500)));
        for (let i = 0; i < this.concurrency; i++)
            this.slots.push(this.slot());
    }

    private async register(): Promise<void> {
        await this.store.registerWorker({id: this.id, host: os.hostname(), pid: process.pid, stages: this.stages, concurrency: this.concurrency});
    }

    /** What this worker holds now. */
    held(): WorkerClaim[] {
        return [...this.claims.values()].filter((c) => !c.lost).map((c) => c.claim);
    }

    progressOf(jobId: string): JobProgress | null {
        for (const c of this.claims.values())
            if (c.claim.job_id === jobId && c.claim.progress)
                return {stage: c.claim.stage, ...c.claim.progress};
        return null;
    }

    /** One heartbeat at a time; `fresh`: one that starts after now (so it carries a claim just made). */
    private heartbeat(fresh = false): Promise<void> {
        if (fresh && this.beating)
            return this.beating.then(() => this.heartbeat());
        this.beating ??= this.beat().finally(() => {
            this.beating = undefined;
        });
        return this.beating;
    }

    private async beat(): Promise<void> {
        if (this.stopped)
            return;
        try {
            const sent = [...this.claims.values()].filter((c) => !c.lost);
            const alive = await this.store.heartbeat(this.id, sent.map((c) => c.claim), this.draining);
            if (!alive) {
                // declared dead while alive (a pause longer than the lease): our claims were handed on
                this.log(`worker ${this.id}: lost its lease; stopping ${this.claims.size} stage(s) without recording them`);
                for (const c of this.claims.values()) {
                    c.lost = true;
                    c.controller.abort(new StageStopped("lease-lost"));
                }
                if (!this.draining)
                    await this.register();
            } else
                for (const c of sent)
                    c.announced = true;
            // judge only the claims held before the query: a stage claimed while it runs is not in
            // `existing` and would be taken for deleted (completed as cancelled, its job left stuck)
            const checked = [...this.claims.values()];
            const existing = await this.store.existingJobs([...new Set(checked.map((c) => c.claim.job_id))]);
            for (const c of checked)
                if (!existing.has(c.claim.job_id))
                    c.controller.abort(new StageStopped("deleted"));
        } catch (err) {
            this.lastStoreError = Date.now();
            this.quiet(`worker ${this.id}: heartbeat failed: ${(err as Error).message}`);
        }
    }

    private async reap(): Promise<void> {
        // after an outage everyone's heartbeat is old: wait a full lease of good heartbeats first
        if (this.stopped || Date.now() - this.lastStoreError < (this.settings.leaseSeconds + this.settings.heartbeatSeconds) * 1000)
            return;
        try {
            const dead = await reapDeadWorkers(this.store, this.boss, this.settings, this.log);
            if (dead.length > 0)
                this.poke();
        } catch (err) {
            this.lastStoreError = Date.now();
            this.quiet(`worker ${this.id}: reaper: ${(err as Error).message}`);
        }
    }

    /** Ends a slot's pause early (new work may be there). */
    poke(): void {
        for (const w of this.wake.splice(0))
            w();
    }

    private async sleep(ms: number): Promise<void> {
        await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, ms);
            this.wake.push(() => {
                clearTimeout(t);
                resolve();
            });
        });
    }

    private async slot(): Promise<void> {
        // the stage this slot just queued comes first (one fetch instead of several), then later
        // stages before earlier ones: finishing a job beats starting another
        let queuedHere: StageName | undefined;
        while (!this.draining) {
            let got: {stage: StageName; id: string; data: StageJobData} | undefined;
            const order = [...this.stages].reverse();
            if (queuedHere && this.stages.includes(queuedHere))
                order.unshift(...order.splice(order.indexOf(queuedHere), 1));
            queuedHere = undefined;
            for (const stage of order) {
                if (this.draining)
                    break;
                let jobs: PgBoss.Job<StageJobData>[] = [];
                try {
                    jobs = await this.boss.fetch<StageJobData>(stageQueue(stage), {batchSize: 1});
                } catch (err) {
                    this.quiet(`worker ${this.id}: fetch failed: ${(err as Error).message}`);
                }
                if (jobs[0]) {
                    got = {stage, id: jobs[0].id, data: jobs[0].data};
                    break;
                }
            }
            if (!got) {
                await this.sleep(this.pollMs);
                continue;
            }
            queuedHere = await this.run(got.stage, got.id, got.data.job_id);
        }
    }

    /** Runs one claimed stage to its end, whatever the end; returns the stage it queued next, if any. */
    private async run(stage: StageName, queueJobId: string, jobId: string): Promise<StageName | undefined> {
        const controller = new AbortController();
        const added = new Set<string>();
        const claim: WorkerClaim = {claim_id: newClaimId(), job_id: jobId, stage, queue_job_id: queueJobId, claimed_at: new Date().toISOString(),
            progress: null};
        let finish!: () => void;
        const entry: Claim = {claim, controller, added, done: new Promise<void>((r) => finish = r)};
        this.claims.set(queueJobId, entry);
        const queue = stageQueue(stage);
        const store = this.store;
        const t0 = Date.now();
        const tell = (event: StageEvent["event"], error?: string) =>
            this.emit("stage", {event, job_id: jobId, stage, claim: claim.claim_id, seconds: (Date.now() - t0) / 1000, ...(error ? {error} : {})});
        tell("claimed");
        try {
            await this.heartbeat(true);
            // the store starts the stage only under a claim a heartbeat announced
            if (!entry.announced && !entry.lost)
                throw new StoreUnavailableError(`the heartbeat announcing the claim of ${stage} of ${jobId} did not reach the store`);
            const next = await this.runClaimed(stage, queueJobId, jobId, controller, added, claim);
            tell("done");
            return next;
        } catch (err) {
            const reason = err instanceof ClaimLostError || entry.lost ? "lease-lost"
                : controller.signal.aborted && controller.signal.reason instanceof StageStopped ? controller.signal.reason.reason : undefined;
            try {
                if (reason === "lease-lost") {
                    // another claim has it now (or will): record nothing, and touch nothing but this claim's own folder
                    await this.dropLostClaimFolder(jobId, claim.claim_id);
                    tell("lease-lost", err instanceof ClaimLostError ? err.message : undefined);
                } else if (reason === "hand-back") {
                    await store.updateStage(jobId, stage, {status: "pending"}, claim.claim_id);
                    await store.retry(() => this.boss.deleteJob(queue, queueJobId));
                    await store.retry(() => this.boss.send(queue, {job_id: jobId} satisfies StageJobData, {id: queueJobId,
                        retryLimit: this.settings.retryLimit, retryDelay: 0, expireInSeconds: this.settings.expireSeconds}));
                    this.log(`worker ${this.id}: handed back the ${stage} stage of ${jobId}`);
                    tell("handed-back");
                } else if (reason === "deleted" || err instanceof JobCancelledError) {
                    await store.retry(() => this.boss.complete(queue, queueJobId, {cancelled: true}));
                    await this.dropLeftovers(jobId, added);
                    tell("cancelled");
                } else {
                    const message = err instanceof Error ? err.message : String(err);
                    if (err instanceof StoreUnavailableError) {
                        // the database stayed away longer than this worker waits: hand the stage back for later
                        this.log(`worker ${this.id}: ${message}; the ${stage} stage of ${jobId} will be retried`);
                        await store.retry(() => this.boss.fail(queue, queueJobId, {error: message}));
                        tell("retry-later", message);
                    } else {
                        this.log(`job ${jobId} failed in ${stage} on ${this.id}: ${message}`);
                        if (await store.job(jobId))
                            await store.updateJob(jobId, {status: "failed", error: message}, new Date().toISOString());
                        await store.retry(() => this.boss.complete(queue, queueJobId, {error: message}));
                        await fs.promises.rm(this.options.env.workDir(jobId), {recursive: true, force: true});
                        tell("failed", message);
                    }
                }
            } catch (inner) {
                this.quiet(`worker ${this.id}: could not record the end of ${stage} of ${jobId}: ${(inner as Error).message}`);
            }
        } finally {
            // a stage whose lease was lost may be claimed again here before its old run has ended
            if (this.claims.get(queueJobId) === entry)
                this.claims.delete(queueJobId);
            this.emit("change", jobId);
            finish();
            void this.heartbeat();
            if (this.claims.size === 0)
                this.emit("idle");
        }
    }

    private async runClaimed(stage: StageName, queueJobId: string, jobId: string, controller: AbortController, added: Set<string>,
        claim: WorkerClaim): Promise<StageName | undefined> {
        const store = this.store;
        const queue = stageQueue(stage);
        const job = await store.job(jobId);
        if (!job || terminalJobStates.includes(job.status)) {
            await store.retry(() => this.boss.complete(queue, queueJobId, {skipped: job ? job.status : "deleted"}));
            return;
        }
        const pending = nextStage(await store.stages(jobId));
        if (pending !== stage) {
            // already done (a stage finished just before its worker died): move the job on, or end it
            if (pending === undefined)
                await this.succeeded(jobId);
            else
                await enqueueNextStage(store, this.boss, jobId, this.settings);
            await store.retry(() => this.boss.complete(queue, queueJobId, {skipped: "done"}));
            return pending;
        }
        let last = 0;
        await runJobStage(this.options.env, {
            job, signal: controller.signal, added, claim: claim.claim_id,
            onProgress: (s, done, total) => {
                claim.progress = {done, total};
                const t = Date.now();
                if (t - last >= 250 || done >= total) {
                    last = t;
                    this.emit("progress", jobId, {stage: s, done, total});
                }
            },
        }, stage, () => this.emit("change", jobId));
        if (!controller.signal.aborted && !(await store.job(jobId)))
            controller.abort(new StageStopped("deleted"));
        if (controller.signal.aborted)
            throw controller.signal.reason;
        const next = await enqueueNextStage(store, this.boss, jobId, this.settings);
        if (!next)
            await this.succeeded(jobId);
        await store.retry(() => this.boss.complete(queue, queueJobId));
        return next;
    }

    private async succeeded(jobId: string): Promise<void> {
        if (await this.store.finishJob(jobId, new Date().toISOString()))
            await fs.promises.rm(this.options.env.workDir(jobId), {recursive: true, force: true});
    }

    /**
     * A lost claim's folder, once nobody can continue from it: the job has ended or is gone (else
     * the next claim copies it and then removes it, pipeline.ts). Artifacts it added are left: the
     * new owner may have added the same bytes, not yet recorded.
     */
    private async dropLostClaimFolder(jobId: string, claimId: string): Promise<void> {
        const job = await this.store.job(jobId);
        if (job && !terminalJobStates.includes(job.status))
            return;
        const dir = this.options.env.workDir(jobId);
        await fs.promises.rm(path.join(dir, claimId), {recursive: true, force: true});
        await fs.promises.rmdir(dir).catch(() => {});
    }

    /** A deleted job's artifacts this worker added that no job references. */
    private async dropLeftovers(jobId: string, added: Set<string>): Promise<void> {
        await fs.promises.rm(this.options.env.workDir(jobId), {recursive: true, force: true});
        if (added.size === 0)
            return;
        const referenced = await this.store.referencedArtifacts();
        for (const sha of added)
            if (!referenced.has(sha))
                await this.options.env.artifacts.remove(sha);
    }

    /**
     * Stops taking stages; waits up to `timeoutMs` for the running ones to finish, then stops and
     * hands back the rest; removes the worker's row. Resolves when nothing runs.
     */
    async drain(timeoutMs: number): Promise<void> {
        if (this.stopped)
            return;
        this.draining = true;
        this.poke();
        void this.heartbeat();
        const running = () => Promise.all([...this.claims.values()].map((c) => c.done));
        if (this.claims.size > 0 && timeoutMs > 0) {
            this.log(`worker ${this.id}: draining: waiting up to ${Math.round(timeoutMs / 1000)} s for ${this.claims.size} stage(s)`);
            let timer: NodeJS.Timeout | undefined;
            await Promise.race([running(), new Promise<void>((r) => timer = setTimeout(r, timeoutMs))]);
            clearTimeout(timer);
        }
        for (const c of this.claims.values())
            c.controller.abort(new StageStopped("hand-back"));
        await running();
        await Promise.all(this.slots);
        this.stopped = true;
        for (const t of this.timers)
            clearInterval(t);
        await this.beating;
        await this.store.removeWorker(this.id).catch(() => {});
    }
}

export interface DistributedRunnerOptions {
    store: PostgresJobStore;
    env: PipelineEnv;
    /** Stages run at once by an in-process worker (0: this process only serves HTTP). */
    workers: number;
    settings?: Partial<QueueSettings>;
    protectedArtifacts: Set<string>;
    log?: Log;
}

/**
 * The HTTP server's side of scale-out, in place of the in-process scheduler: queues submitted
 * jobs, reaps dead workers, re-queues what a crash left unqueued, watches the store for changes
 * made by workers elsewhere (for event streams), and runs an in-process worker when asked to.
 */
export class DistributedRunner extends EventEmitter<SchedulerEvents> {
    boss!: PgBoss;
    worker: StageWorker | undefined;
    private readonly store: PostgresJobStore;
    private readonly settings: QueueSettings;
    private readonly log: Log;
    private readonly quiet: Log;
    private timers: NodeJS.Timeout[] = [];
    private fingerprints = new Map<string, string>();
    private remoteProgress = new Map<string, JobProgress>();
    private lastStoreError = 0;
    private watching = false;

    constructor(private readonly options: DistributedRunnerOptions) {
        super();
        this.setMaxListeners(0);
        this.store = options.store;
        this.settings = {...queueDefaults, ...options.settings};
        this.log = options.log ?? ((line) => process.stderr.write(line + "\n"));
        this.quiet = quietLog(this.log);
    }

    async start(): Promise<void> {
        this.boss = await startQueue(this.store, this.log);
        await reconcileQueue(this.store, this.boss, this.settings, this.log);
        const beat = this.settings.heartbeatSeconds * 1000;
        this.timers.push(setInterval(() => void this.reap(), beat));
        this.timers.push(setInterval(() => void reconcileQueue(this.store, this.boss, this.settings, this.log).catch((err) => {
            this.lastStoreError = Date.now();
            this.quiet(`queue reconciler: ${(err as Error).message}`);
        }), 30_000));
        this.timers.push(setInterval(() => void this.watch(), 500));
        if (this.options.workers > 0) {
            this.worker = new StageWorker({store: this.store, boss: this.boss, env: this.options.env, concurrency: this.options.workers,
                settings: this.settings, log: this.log});
            this.worker.on("change", (id) => this.emit("change", id));
            this.worker.on("progress", (id, p) => this.emit("progress", id, p));
            await this.worker.start();
        }
    }

    private async reap(): Promise<void> {
        if (Date.now() - this.lastStoreError < (this.settings.leaseSeconds + this.settings.heartbeatSeconds) * 1000)
            return;
        try {
            await reapDeadWorkers(this.store, this.boss, this.settings, this.log);
        } catch (err) {
            this.lastStoreError = Date.now();
            this.quiet(`reaper: ${(err as Error).message}`);
        }
    }

    /** Keeps the workers' progress at hand and turns changes made by other processes into events (while someone listens). */
    private async watch(): Promise<void> {
        if (this.watching)
            return;
        this.watching = true;
        try {
            if (this.listenerCount("change") > 0) {
                const since = new Date(Date.now() - 10 * 60_000).toISOString();
                const now = await this.store.jobFingerprints(since);
                for (const [id, f] of now)
                    if (this.fingerprints.get(id) !== f)
                        this.emit("change", id);
                for (const id of this.fingerprints.keys())
                    if (!now.has(id))
                        this.emit("change", id);
                this.fingerprints = now;
            } else
                this.fingerprints.clear();
            const progress = new Map<string, JobProgress>();
            for (const w of await this.store.workers())
                for (const c of w.claims)
                    if (c.progress)
                        progress.set(c.job_id, {stage: c.stage, ...c.progress});
            for (const [id, p] of progress)
                if (JSON.stringify(this.remoteProgress.get(id)) !== JSON.stringify(p))
                    this.emit("progress", id, p);
            this.remoteProgress = progress;
        } catch (err) {
            this.quiet(`watching the store: ${(err as Error).message}`);
        } finally {
            this.watching = false;
        }
    }

    progressOf(jobId: string): JobProgress | null {
        return this.worker?.progressOf(jobId) ?? this.remoteProgress.get(jobId) ?? null;
    }

    async jobAdded(jobId: string): Promise<void> {
        await enqueueNextStage(this.store, this.boss, jobId, this.settings);
        this.worker?.poke();
    }

    /** Kept for the scheduler's interface: queued work is pulled by workers, nothing to kick. */
    kick(): void {
        this.worker?.poke();
    }

    /** Erases a job: rows first, then its queued stages; a worker running it stops at its next heartbeat. */
    async erase(jobId: string): Promise<void> {
        const refs = await this.store.deleteJob(jobId);
        this.emit("change", jobId);
        for (const stage of stageNames)
            await this.boss.cancel(stageQueue(stage), stageJobId(jobId, stage)).catch(() => {});
        await fs.promises.rm(this.options.env.workDir(jobId), {recursive: true, force: true});
        const referenced = await this.store.referencedArtifacts();
        for (const sha of new Set(refs))
            if (!referenced.has(sha) && !this.options.protectedArtifacts.has(sha))
                await this.options.env.artifacts.remove(sha);
    }

    isTerminal(status: string): boolean {
        return terminalJobStates.includes(status as never);
    }

    async workers(): Promise<WorkerRecord[]> {
        return this.store.workers();
    }

    /** Hands back what the in-process worker holds and stops the queue. */
    async close(): Promise<void> {
        for (const t of this.timers)
            clearInterval(t);
        await this.worker?.drain(0);
        await this.boss?.stop({graceful: false, wait: true, timeout: 5000}).catch(() => {});
    }
}
