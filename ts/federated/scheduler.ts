// In-process job scheduler: runs queued jobs oldest first, `workers` at a time (default one: the
// stages already use every core), resumes jobs a killed server left running, cancels on request,
// and tells listeners (SSE streams) about stage changes and progress.
import {EventEmitter, setMaxListeners} from "node:events";
import fs from "node:fs";
import {JobCancelledError, runJobStages, type PipelineEnv} from "./pipeline.js";
import {terminalJobStates, type JobProgress} from "./protocol.js";
import type {JobRecord} from "./store.js";

export interface SchedulerEvents {
    /** A job's status or stage changed (or it was deleted). */
    change: [jobId: string];
    progress: [jobId: string, progress: JobProgress];
}

interface Running {
    controller: AbortController;
    done: Promise<void>;
    added: Set<string>;
}

/** Least time between two progress events of one job (at most ~4 per second). */
const progressIntervalMs = 250;

export class JobScheduler extends EventEmitter<SchedulerEvents> {
    private readonly running = new Map<string, Running>();
    private readonly progress = new Map<string, JobProgress>();
    private closed = false;
    private kicking: Promise<void> | undefined;
    private kickAgain = false;

    constructor(private readonly env: PipelineEnv, private readonly workers: number, private readonly protectedArtifacts: Set<string>,
        private readonly limits: {timeBudgetMs?: number} = {}) {
        super();
        this.setMaxListeners(0);
    }

    /**
     * Puts jobs a previous process left running back in the queue (their stage rows keep the claim
     * whose folder the next claim continues), drops orphaned files, starts work.
     */
    async start(): Promise<void> {
        const now = new Date().toISOString();
        for (const job of await this.env.store.jobsIn(["running"])) {
            for (const s of await this.env.store.stages(job.id))
                if (s.status === "running")
                    await this.env.store.updateStage(job.id, s.name, {status: "pending"});
            await this.env.store.updateJob(job.id, {status: "queued"}, now);
        }
        await this.collectGarbage();
        this.kick();
    }

    /** Removes work folders and artifacts of jobs that no longer exist (e.g. a delete cut short by a kill). */
    private async collectGarbage(): Promise<void> {
        const ids = await this.env.store.allJobIds();
        const root = this.env.workDir("x").replace(/x$/, "");
        if (fs.existsSync(root))
            for (const name of fs.readdirSync(root))
                if (!ids.has(name))
                    await fs.promises.rm(root + name, {recursive: true, force: true});
        const referenced = await this.env.store.referencedArtifacts();
        for (const sha of this.env.artifacts.list())
            if (!referenced.has(sha) && !this.protectedArtifacts.has(sha))
                await this.env.artifacts.remove(sha);
        for (const name of fs.readdirSync(this.env.artifacts.tmpDir))
            await fs.promises.rm(`${this.env.artifacts.tmpDir}/${name}`, {force: true, recursive: true});
    }

    progressOf(jobId: string): JobProgress | null {
        return this.progress.get(jobId) ?? null;
    }

    /** Starts queued jobs while a worker is free (one pass at a time; a kick during a pass runs another). */
    kick(): void {
        if (this.closed)
            return;
        if (this.kicking) {
            this.kickAgain = true;
            return;
        }
        this.kicking = (async () => {
            do {
                this.kickAgain = false;
                for (const job of await this.env.store.jobsIn(["queued"])) {
                    if (this.running.size >= this.workers || this.closed)
                        break;
                    if (!this.running.has(job.id))
                        this.launch(job);
                }
            } while (this.kickAgain && !this.closed);
        })().catch((err) => {
            process.stderr.write(`scheduler: ${(err as Error).message}\n`);
        }).finally(() => {
            this.kicking = undefined;
        });
    }

    /** A job was submitted. */
    async jobAdded(_jobId: string): Promise<void> {
        this.kick();
    }

    private launch(job: JobRecord): void {
        const controller = new AbortController();
        // every in-flight generator request and training step listens on the job's signal
        setMaxListeners(0, controller.signal);
        const added = new Set<string>();
        const store = this.env.store;
        const started = Promise.resolve(store.updateJob(job.id, {status: "running", error: null}, new Date().toISOString()))
            .then(() => this.emit("change", job.id));
        let last = 0;
        const onProgress = (stage: string, done: number, total: number) => {
            const p = {stage, done, total};
            this.progress.set(job.id, p);
            const t = Date.now();
            if (t - last >= progressIntervalMs || done >= total) {
                last = t;
                this.emit("progress", job.id, p);
            }
        };
        let overBudget: string | undefined;
        let budgetTimer: NodeJS.Timeout | undefined;
        const done = (async () => {
            try {
                await started;
                const budget = this.limits.timeBudgetMs;
                if (budget !== undefined) {
                    // the budget counts from the job's first stage, across restarts of the server
                    const begun = (await store.stages(job.id)).map((s) => s.started_at).filter((x): x is string => Boolean(x))
                        .map((x) => Date.parse(x)).reduce((a, b) => Math.min(a, b), Date.now());
                    budgetTimer = setTimeout(() => {
                        overBudget = `the job ran past its time budget of ${budget / 1000} s (server --job-time-budget)`;
                        controller.abort(new JobCancelledError(overBudget));
                    }, Math.max(0, begun + budget - Date.now()));
                }
                await runJobStages(this.env, {job, signal: controller.signal, onProgress: onProgress as never, added}, () => {
                    this.progress.delete(job.id);
                    this.emit("change", job.id);
                });
                if (await store.finishJob(job.id, new Date().toISOString()))
                    await fs.promises.rm(this.env.workDir(job.id), {recursive: true, force: true});
            } catch (err) {
                if ((overBudget !== undefined || !(err instanceof JobCancelledError)) && await store.job(job.id)) {
                    const message = overBudget ?? (err instanceof Error ? err.message : String(err));
                    await store.updateJob(job.id, {status: "failed", error: message}, new Date().toISOString());
                    process.stderr.write(`job ${job.id} failed: ${message}\n`);
                    await fs.promises.rm(this.env.workDir(job.id), {recursive: true, force: true});
                }
            } finally {
                clearTimeout(budgetTimer);
                this.running.delete(job.id);
                this.progress.delete(job.id);
                this.emit("change", job.id);
                setImmediate(() => this.kick());
            }
        })();
        this.running.set(job.id, {controller, done, added});
    }

    /**
     * Erases a job: its rows first (from then on it does not exist for any client), then stops it
     * if it runs, then deletes its work folder and every artifact no other job references.
     */
    async erase(jobId: string): Promise<void> {
        const refs = await this.env.store.deleteJob(jobId);
        const run = this.running.get(jobId);
        this.emit("change", jobId);
        if (run) {
            run.controller.abort(new JobCancelledError("the job was deleted"));
            await run.done;
            refs.push(...run.added);
        }
        await fs.promises.rm(this.env.workDir(jobId), {recursive: true, force: true});
        const referenced = await this.env.store.referencedArtifacts();
        for (const sha of new Set(refs))
            if (!referenced.has(sha) && !this.protectedArtifacts.has(sha))
                await this.env.artifacts.remove(sha);
    }

    isTerminal(status: string): boolean {
        return terminalJobStates.includes(status as never);
    }

    /** Stops every running job (its state stays resumable) and accepts no more work. */
    async close(): Promise<void> {
        this.closed = true;
        await this.kicking;
        for (const r of this.running.values())
            r.controller.abort(new JobCancelledError("the server is shutting down"));
        await Promise.all([...this.running.values()].map((r) => r.done));
    }
}
