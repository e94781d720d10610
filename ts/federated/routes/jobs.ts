// POST /v1/jobs (submit perturbed items and a spec, idempotent with Idempotency-Key), GET /v1/jobs
// (this client's jobs), GET /v1/jobs/{id} (a job's status), DELETE /v1/jobs/{id} (cancel and erase).
import crypto from "node:crypto";
import type {FastifyPluginAsync, FastifyReply, FastifyRequest} from "fastify";
import {HttpError} from "../http-common.js";
import {specOverCap, withinCaps} from "../job-caps.js";
import {
    errorCodes, errorSchema, fillJobSpec, headers, jobIdParamsSchema, jobItemsProblem, jobListSchema, jobStatusSchema, routes, submitHeadersSchema,
    submitJobResponseSchema, submitJobSchema, type FilledJobSpec, type StageName, type SubmitJobRequest,
} from "../protocol.js";
import {TooManyJobsError} from "../store.js";
import {jobErrorResponses, jobStatus, ownJob, type JobRoutesContext} from "./context.js";

export const jobRoutes: FastifyPluginAsync<JobRoutesContext> = async (app, ctx) => {
    const {store, scheduler} = ctx;
    const submit = submitter(ctx);
    app.post<{Body: SubmitJobRequest}>(routes.jobs, {
        schema: {summary: "Submit perturbed items and a job spec", security: [{bearer: []}], body: submitJobSchema, headers: submitHeadersSchema,
            response: {202: submitJobResponseSchema, 400: errorSchema, 401: errorSchema, 413: errorSchema, 422: errorSchema, 429: errorSchema}},
    }, submit);

    app.get(routes.jobs, {schema: {summary: "This client's jobs", security: [{bearer: []}], response: {200: jobListSchema, 401: errorSchema}}},
        async (request) => ({jobs: await Promise.all((await store.jobsOf(request.client!.name)).map((job) => jobStatus(ctx, job)))}));

    const idRoute = `${routes.jobs}/:id`;
    app.get<{Params: {id: string}}>(idRoute, {schema: {summary: "Status of a job", security: [{bearer: []}], params: jobIdParamsSchema,
        response: {200: jobStatusSchema, ...jobErrorResponses}}},
    async (request) => jobStatus(ctx, await ownJob(ctx, request, request.params.id)));

    app.delete<{Params: {id: string}}>(idRoute, {schema: {summary: "Cancel a job and erase everything stored of it", security: [{bearer: []}],
        params: jobIdParamsSchema, response: {...jobErrorResponses, 204: {type: "null"}}}},
    async (request, reply) => {
        const job = await ownJob(ctx, request, request.params.id);
        await scheduler.erase(job.id);
        scheduler.kick();
        return reply.code(204).send();
    });
};

/** A stable serialization (sorted keys) for hashing request bodies. */
function canonicalJson(value: unknown): string {
    if (Array.isArray(value))
        return `[${value.map(canonicalJson).join(",")}]`;
    if (value && typeof value === "object")
        return `{${Object.keys(value).sort().filter((k) => (value as Record<string, unknown>)[k] !== undefined)
            .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(",")}}`;
    return JSON.stringify(value);
}

/** The submission's spec (defaults within the caps), or the 413/400/422 its items or spec earn. */
function checkedSpec(ctx: JobRoutesContext, body: SubmitJobRequest): FilledJobSpec {
    if (body.items.length > ctx.maxItems)
        throw new HttpError(413, errorCodes.payloadTooLarge, `items has ${body.items.length} entries; this server takes at most ${ctx.maxItems} per job`);
    const problem = jobItemsProblem(body.items);
    if (problem)
        throw new HttpError(400, errorCodes.invalidRequest, problem);
    const spec = withinCaps(fillJobSpec(body.spec), body.spec, ctx.jobCaps);
    const overCap = specOverCap(spec, ctx.jobCaps);
    if (overCap)
        throw new HttpError(422, "spec_over_limit", overCap);
    return spec;
}

/** The stages a spec leaves out. */
function skippedStages(spec: FilledJobSpec): StageName[] {
    const skipped: StageName[] = [];
    if (spec.strategy !== "bi")
        skipped.push("bi");
    if (!spec.server_retraining)
        skipped.push("train", "merge");
    if (spec.quantize === "none")
        skipped.push("quantize");
    return skipped;
}

/** The POST /v1/jobs handler: checks, replays an Idempotency-Key, stores the items and the job, queues it. */
function submitter(ctx: JobRoutesContext) {
    const {store, artifacts, scheduler, maxActive} = ctx;
    // submissions being stored right now, by items artifact: protected from the scheduler's
    // collection (a job with the same items erased meanwhile) until the job that references them is stored
    const inFlightItems = new Map<string, number>();
    const enter = (itemsSha: string) => {
        inFlightItems.set(itemsSha, (inFlightItems.get(itemsSha) ?? 0) + 1);
        ctx.protectedArtifacts.add(itemsSha);
    };
    const leave = (itemsSha: string) => {
        const n = inFlightItems.get(itemsSha)! - 1;
        if (n === 0) {
            inFlightItems.delete(itemsSha);
            if (itemsSha !== ctx.kit.sha256)
                ctx.protectedArtifacts.delete(itemsSha);
        } else
            inFlightItems.set(itemsSha, n);
        return n;
    };
    return async (request: FastifyRequest<{Body: SubmitJobRequest}>, reply: FastifyReply) => {
        const client = request.client!;
        const body = request.body;
        const spec = checkedSpec(ctx, body);
        const bodySha = crypto.createHash("sha256").update(canonicalJson({spec, items: body.items})).digest("hex");
        const key = request.headers[headers.idempotencyKey] as string | undefined;
        const accepted = (id: string) => {
            const location = routes.job(id);
            return reply.code(202).header("location", location).send({id, status: "queued", location});
        };
        const replay = async () => {
            const hit = key === undefined ? undefined : await store.idempotencyHit(client.name, key);
            if (!hit)
                return undefined;
            if (hit.body_sha256 !== bodySha)
                throw new HttpError(422, errorCodes.idempotencyMismatch, `Idempotency-Key "${key}" was used with a different body`);
            return accepted(hit.job_id);
        };
        const earlier = await replay();
        if (earlier)
            return earlier;
        if (await store.activeJobCount(client.name) >= maxActive)
            throw new HttpError(429, errorCodes.tooManyJobs, `this client already has ${maxActive} queued or running job(s); wait for one to finish`);

        const jsonl = Buffer.from(body.items.map((i) => JSON.stringify({id: i.id, question: i.question, choices: i.choices})).join("\n") + "\n");
        const itemsSha = crypto.createHash("sha256").update(jsonl).digest("hex");
        enter(itemsSha);
        const id = "job_" + crypto.randomBytes(12).toString("base64url");
        try {
            await artifacts.addBytes(jsonl);
            await store.createJob({id, client_id: client.name, spec, items: body.items.length, items_sha256: itemsSha, skipped: skippedStages(spec),
                ...(key !== undefined ? {idempotency: {key, body_sha256: bodySha}} : {})}, new Date().toISOString(), maxActive);
        } catch (err) {
            const n = leave(itemsSha);
            // nothing of a rejected request stays behind
            if (n === 0 && !(await Promise.resolve(store.referencedArtifacts()).catch(() => new Set([itemsSha]))).has(itemsSha))
                await artifacts.remove(itemsSha);
            if (err instanceof TooManyJobsError)
                throw new HttpError(429, errorCodes.tooManyJobs, err.message);
            if (/UNIQUE|constraint/i.test((err as Error).message)) {
                const again = await replay();  // the same key, submitted twice at once
                if (again)
                    return again;
            }
            throw err;
        }
        leave(itemsSha);
        try {
            await scheduler.jobAdded(id);
        } catch (err) {
            // the job is stored; the queue reconciler picks it up when the store is back
            ctx.log(`job ${id}: could not queue it yet: ${(err as Error).message}`);
        }
        return accepted(id);
    };
}
