// GET /v1/info and GET /v1/perturbation-kit: what a client reads before it submits a job (the
// server's public parameters, without a token; the kit its perturbation runs on).
import type {FastifyPluginAsync} from "fastify";
import {sendStoredFile} from "../download.js";
import {errorSchema, routes, serverInfoSchema} from "../protocol.js";
import type {JobRoutesContext} from "./context.js";

export const infoRoutes: FastifyPluginAsync<JobRoutesContext> = async (app, ctx) => {
    app.get(routes.info, {schema: {summary: "Public parameters of this server (no auth)", response: {200: serverInfoSchema}}}, async () => ctx.info);
    app.get(routes.perturbationKit, {schema: {summary: "The perturbation kit: vocabulary-only GGUF with token embeddings (Range supported)",
        security: [{bearer: []}], response: {401: errorSchema, 416: errorSchema}}},
    async (request, reply) => sendStoredFile(request, reply, ctx.artifacts.pathOf(ctx.kit.sha256), ctx.kit.sha256, ctx.kit.size));
};
