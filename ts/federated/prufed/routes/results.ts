// Closed rounds, for the federation's members: GET rounds/{n} (the round's summary as this client
// may see it, views.ts) and GET rounds/{n}/global (the global adapter after round n, gzip).
import fs from "node:fs";
import zlib from "node:zlib";
import {pipeline} from "node:stream/promises";
import type {FastifyPluginAsync} from "fastify";
import {writeFileDurableWith} from "../../../durable-file.js";
import {HttpError} from "../../http-common.js";
import {errorCodes} from "../../protocol.js";
import {flRoutes} from "../http-protocol.js";
import {roundFile, type RoundSummary} from "../rounds.js";
import {roundViewFor} from "../views.js";
import {errors, onlyMembers, roundNumber, roundParams, security, viewerOf, type FlRoutesContext} from "./context.js";

/** round-N.gguf.gz beside the round file: compressed once (a closed round's global never changes), then served as it is. */
async function compressedGlobal(dataDir: string, n: number): Promise<string> {
    const gz = `${roundFile(dataDir, n)}.gz`;
    if (!fs.existsSync(gz))
        await writeFileDurableWith(gz, (fh) => pipeline(fs.createReadStream(roundFile(dataDir, n)), zlib.createGzip({level: 6}),
            async (gzipped: AsyncIterable<Buffer>) => {
                for await (const chunk of gzipped)
                    await fh.write(chunk);
            }));
    return gz;
}

export const resultRoutes: FastifyPluginAsync<FlRoutesContext> = async (app, ctx) => {
    const {machine, dataDir} = ctx;
    const notClosed = (n: number) =>
        new HttpError(404, errorCodes.notFound, `round ${n} is not closed (last closed: ${machine.federation.completed})`);
    app.get(flRoutes.round, {preHandler: onlyMembers(ctx), schema: {params: roundParams, security, response: errors}}, async (request, reply) => {
        const n = roundNumber(request);
        const file = roundFile(dataDir, n).replace(/\.gguf$/, ".json");
        if (n < 1 || n > machine.federation.completed || !fs.existsSync(file))
            throw notClosed(n);
        const summary = JSON.parse(await fs.promises.readFile(file, "utf8")) as RoundSummary;
        return reply.type("application/json").send(roundViewFor(summary, viewerOf(request), dataDir));
    });
    app.get(flRoutes.global, {preHandler: onlyMembers(ctx), schema: {params: roundParams, security, response: errors}}, async (request, reply) => {
        const n = roundNumber(request);
        if (n > machine.federation.completed)
            throw notClosed(n);
        const gz = await compressedGlobal(dataDir, n);
        return reply.header("content-type", "application/octet-stream").header("content-encoding", "gzip")
            .header("content-length", String((await fs.promises.stat(gz)).size)).send(fs.createReadStream(gz));
    });
};
