// GET /v1/jobs/{id}/events: a job's status and progress as server-sent events (http-wire.ts
// openEventStream); the stream ends when the job does, when the server stops and when the token is
// revoked.
import type {FastifyPluginAsync, FastifyReply, FastifyRequest} from "fastify";
import {openEventStream} from "../http-common.js";
import {eventNames, jobIdParamsSchema, routes, terminalJobStates} from "../protocol.js";
import {jobStatus, ownJob, type JobRoutesContext} from "./context.js";

export const eventRoutes: FastifyPluginAsync<JobRoutesContext> = async (app, ctx) => {
    app.get<{Params: {id: string}}>(`${routes.jobs}/:id/events`, {schema: {summary: "Server-sent events: status and progress of a job",
        security: [{bearer: []}], params: jobIdParamsSchema}},
    async (request, reply) => streamEvents(ctx, request, reply, (await ownJob(ctx, request, request.params.id)).id));
};

function streamEvents(ctx: JobRoutesContext, request: FastifyRequest, reply: FastifyReply, id: string): void {
    const {store, scheduler, openStreams} = ctx;
    const holder = {finish: () => {}};
    const release = ctx.sessions.enter(request.client!, () => holder.finish());
    reply.hijack();
    const stream = openEventStream(reply.raw, () => {
        openStreams.delete(finish);
        scheduler.off("change", onChange);
        scheduler.off("progress", onProgress);
        release();
    });
    const send = (event: string, data: unknown) => stream.send(event, data);
    const finish = () => stream.end();
    holder.finish = finish;
    const closedNow = () => stream.ended;
    // one status read at a time, in order
    let reading: Promise<void> = Promise.resolve();
    const onChange = (jobId: string) => {
        if (jobId !== id)
            return;
        reading = reading.then(async () => {
            if (closedNow())
                return;
            const job = await store.job(id);
            if (!job)
                return finish();
            const status = await jobStatus(ctx, job);
            send(eventNames.status, status);
            if (terminalJobStates.includes(status.status))
                finish();
        }).catch(() => {
            // the store is away for a moment: the next change (or the client's reconnect) brings the status
        });
    };
    const onProgress = (jobId: string, p: unknown) => {
        if (jobId === id)
            send(eventNames.progress, p);
    };
    openStreams.add(finish);
    scheduler.on("change", onChange);
    scheduler.on("progress", onProgress);
    onChange(id);
}
