// What the job server's route plugins share (routes/*.ts, registered by startFederatedServer in
// server.ts): the store, artifacts, scheduler and limits, passed to each plugin as its options, and
// the two reads every job route makes (the caller's own job, a job's status as the wire shows it).
import type {FastifyRequest} from "fastify";
import type {ArtifactRef, ArtifactStore} from "../artifacts.js";
import type {DistributedRunner} from "../distributed.js";
import {HttpError, type TokenSessions} from "../http-common.js";
import type {JobCaps} from "../job-caps.js";
import {finalModel, type PipelineEnv} from "../pipeline.js";
import {errorCodes, errorSchema, stageNames, type JobQuantization, type JobStatus, type ServerInfo, type StageName} from "../protocol.js";
import type {JobScheduler} from "../scheduler.js";
import type {JobRecord, JobStore} from "../store.js";

export interface JobRoutesContext {
    store: JobStore;
    artifacts: ArtifactStore;
    env: PipelineEnv;
    /** Runs the jobs: in this process (embedded store), or queued for workers (PostgreSQL). */
    scheduler: JobScheduler | DistributedRunner;
    /** What GET /v1/info answers. */
    info: ServerInfo;
    /** The perturbation kit's artifact. */
    kit: ArtifactRef;
    /** Artifacts the scheduler's collection never removes; a submission adds its items while it stores them. */
    protectedArtifacts: Set<string>;
    /** Open event streams per token (capped, ended when the token is revoked). */
    sessions: TokenSessions;
    /** The end of each open event stream: all are ended when the server stops (they would otherwise hold it open). */
    openStreams: Set<() => void>;
    maxItems: number;
    maxActive: number;
    jobCaps: JobCaps;
    /** The store is PostgreSQL (stages run on workers). */
    distributed: boolean;
    /** Jobs this process runs at once. */
    workers: number;
    startedAt: string;
    /** A message fit for clients: the generator as /v1/info names it, no paths, no URLs. */
    clientMessage(message: string): string;
    log(line: string): void;
}

/** The caller's job `id`: another client's job does not exist for this one (404). */
export async function ownJob(ctx: JobRoutesContext, request: FastifyRequest, id: string): Promise<JobRecord> {
    const job = await ctx.store.job(id);
    // jobs belong to the client's name, not its token: a rotated token keeps them; another client's job does not exist for this one
    if (!job || job.client_id !== request.client!.name)
        throw new HttpError(404, errorCodes.notFound, `no job ${id}`);
    return job;
}

/** A job's status as GET /v1/jobs/{id} and its event stream show it. */
export async function jobStatus(ctx: JobRoutesContext, job: JobRecord): Promise<JobStatus> {
    const stages = await ctx.store.stages(job.id);
    const byName = (n: StageName) => stages.find((s) => s.name === n);
    const synth = byName("synth");
    const synthCounts = synth?.status === "done" ? synth.result as {accepted: number; rejected: number} : null;
    const prune = byName("prune"), quantize = byName("quantize");
    const model = job.status === "succeeded" ? finalModel(ctx.env, stages)?.info ?? null : null;
    return {
        id: job.id, status: job.status, stage: job.status === "running" ? job.stage : null,
        progress: job.status === "running" ? ctx.scheduler.progressOf(job.id) : null,
        // a job recorded before a stage existed (quantize) has no row for it
        stages: stageNames.flatMap((name) => {
            const s = byName(name);
            return s ? [{name, status: s.status, started_at: s.started_at, finished_at: s.finished_at, seconds: s.seconds}] : [];
        }),
        items: job.items, spec: job.spec, created_at: job.created_at, updated_at: job.updated_at,
        // a stage's error may name server paths or the generator's address: not the client's business
        error: job.error === null ? null : ctx.clientMessage(job.error),
        synth: synthCounts ? {accepted: synthCounts.accepted, rejected: synthCounts.rejected} : null,
        bi_report: byName("bi")?.status === "done" ? byName("bi")!.result as Record<string, unknown> : null,
        plan: prune?.status === "done" ? (prune.result as {plan: Record<string, unknown>}).plan : null,
        quantization: quantize?.status === "done" ? pickQuantization(quantize.result as JobQuantization) : null,
        model,
    };
}

/** The error responses every route on one job declares. */
export const jobErrorResponses = {400: errorSchema, 401: errorSchema, 404: errorSchema};

/** The quantize stage's record as a status carries it (the stage's result also holds the model's facts). */
function pickQuantization(q: JobQuantization): JobQuantization {
    return {type: q.type, imatrix_entries: q.imatrix_entries, size_before: q.size_before, size_after: q.size_after};
}
