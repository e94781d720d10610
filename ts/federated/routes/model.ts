// GET /v1/jobs/{id}/model: a succeeded job's model (GGUF, Range supported; 409 not_ready before).
import type {FastifyPluginAsync} from "fastify";
import {sendStoredFile} from "../download.js";
import {HttpError} from "../http-common.js";
import {finalModel} from "../pipeline.js";
import {errorCodes, errorSchema, jobIdParamsSchema, routes} from "../protocol.js";
import {jobErrorResponses, ownJob, type JobRoutesContext} from "./context.js";

export const modelRoutes: FastifyPluginAsync<JobRoutesContext> = async (app, ctx) => {
    app.get<{Params: {id: string}}>(`${routes.jobs}/:id/model`, {schema: {summary: "The job's model (GGUF; Range supported)", security: [{bearer: []}],
        params: jobIdParamsSchema, response: {...jobErrorResponses, 409: errorSchema, 416: errorSchema}}},
    async (request, reply) => {
        const job = await ownJob(ctx, request, request.params.id);
        const model = job.status === "succeeded" ? finalModel(ctx.env, await ctx.store.stages(job.id)) : undefined;
        if (!model)
            throw new HttpError(409, errorCodes.notReady, `job ${job.id} is ${job.status}; its model is ready when it has succeeded`);
        return sendStoredFile(request, reply, model.file, model.info.sha256, model.info.size);
    });
};
