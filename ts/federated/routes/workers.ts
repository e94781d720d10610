// GET /v1/workers (admin token): the workers and the stages they hold; with the embedded store the
// only worker is this process.
import os from "node:os";
import type {FastifyPluginAsync} from "fastify";
import {DistributedRunner} from "../distributed.js";
import {HttpError} from "../http-common.js";
import {errorSchema, routes, stageNames} from "../protocol.js";
import type {WorkerRecord} from "../store-postgres.js";
import type {JobRoutesContext} from "./context.js";

export const workerRoutes: FastifyPluginAsync<JobRoutesContext> = async (app, ctx) => {
    app.get(routes.workers, {schema: {summary: "Workers and the stages they hold (admin token)", security: [{bearer: []}],
        response: {401: errorSchema, 403: errorSchema}}},
    async (request) => {
        if (!request.client!.admin)
            throw new HttpError(403, "forbidden", "GET /v1/workers needs an admin token (server token create --admin)");
        return {store: ctx.distributed ? "postgres" : "embedded", workers: await workerList(ctx)};
    });
};

/** With the embedded store, the only worker is this process: its running jobs are what it holds. */
async function workerList(ctx: JobRoutesContext): Promise<WorkerRecord[]> {
    const {store, scheduler} = ctx;
    if (scheduler instanceof DistributedRunner)
        return scheduler.workers();
    const running = await store.jobsIn(["running"]);
    const claims = await Promise.all(running.map(async (job) => {
        const stage = (await store.stages(job.id)).find((s) => s.status === "running");
        const p = scheduler.progressOf(job.id);
        return stage ? [{claim_id: stage.claim_id ?? "", job_id: job.id, stage: stage.name, queue_job_id: "", claimed_at: stage.started_at ?? job.updated_at,
            progress: p ? {done: p.done, total: p.total} : null}] : [];
    }));
    const now = new Date().toISOString();
    return [{id: "in-process", host: os.hostname(), pid: process.pid, stages: [...stageNames],
        concurrency: ctx.workers, started_at: ctx.startedAt, last_seen: now, seconds_since_seen: 0, draining: false,
        claims: claims.flat()}];
}
