// The PPC-GPT server as an HTTP service (protocol v1, docs/federated.md): Fastify with the shared
// JSON schemas validating every request, bearer-token auth, a persistent job store, the job
// scheduler and content-addressed artifacts under the data dir.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type {FastifyInstance, FastifyReply, FastifyRequest} from "fastify";
import {readGguf} from "../gguf/read.js";
import {writePerturbationKit} from "../privacy/kit.js";
import type {Generator} from "../synth/generator.js";
import {createRemoteGenerator} from "../synth/remote.js";
import {ArtifactStore, hashFile, type ArtifactRef} from "./artifacts.js";
import {sendStoredFile} from "./download.js";
import {checkCleartextListen, createProtocolApp, HttpError, httpLimitDefaults, openEventStream, TokenSessions, type HttpLimits} from "./http-common.js";
import {sanitizeMessage} from "./http-wire.js";
import {makePrivateDir} from "./private-dir.js";
import {finalModel, type PipelineEnv} from "./pipeline.js";
import {
    epsilonRange, errorCodes, eventNames, fillJobSpec, headers, jobIdParamsSchema, jobItemsProblem, jobListSchema, jobQuantizeTypes, jobStatusSchema,
    privacyMechanisms, protocolVersion, routes, serverInfoSchema, submitHeadersSchema, submitJobResponseSchema, submitJobSchema,
    errorSchema, stageNames, terminalJobStates, type JobQuantization, type JobSpec, type JobStatus, type ServerInfo, type StageName, type SubmitJobRequest,
} from "./protocol.js";
import {JobScheduler} from "./scheduler.js";
import {DistributedRunner, noGenerator, type QueueSettings} from "./distributed.js";
import {isPostgresUrl, PostgresJobStore, type WorkerRecord} from "./store-postgres.js";
import {SqliteJobStore, TooManyJobsError, type JobRecord, type JobStore} from "./store.js";

export type GeneratorConfig =
    | {kind: "embedded"; modelPath: string; sequences?: number; contextSize?: number; threads?: number; gpuLayers?: number}
    | {kind: "remote"; baseUrl: string; model: string; apiKeyEnv?: string; concurrency?: number; timeoutMs?: number; maxRetries?: number};

export interface FederatedServerOptions {
    /** Artifacts and work files (with a PostgreSQL store: the directory every worker mounts), and the embedded store. */
    dataDir: string;
    /**
     * A postgres:// URL keeps jobs, tokens and stage state in PostgreSQL and runs stages on workers
     * (`ppc-gpt worker`); absent: the embedded SQLite store under dataDir, stages in this process.
     */
    store?: string;
    /** Heartbeat, lease, expiry and retry settings of the PostgreSQL queue. */
    queue?: Partial<QueueSettings>;
    /** The source model M_S (GGUF). */
    model: string;
    generator: GeneratorConfig;
    host?: string;
    /** 0 picks a free port. */
    port?: number;
    tls?: {cert: string; key: string};
    /** Serve plain HTTP on an address off loopback (a warning is logged); without it, such a host needs tls. */
    insecure?: boolean;
    /** JSON body, timeout, stream and rate limits (http-common.ts httpLimitDefaults). */
    limits?: Partial<HttpLimits>;
    /** Largest request body, after gzip decompression (default 32 MiB). */
    maxBodyBytes?: number;
    maxItemsPerJob?: number;
    maxConcurrentJobsPerClient?: number;
    /** Jobs run at once (default 1; with a PostgreSQL store: stages run by this process, default 0). */
    workers?: number;
    /** CPU threads of BI scoring and training (default: all cores). */
    threads?: number;
    /** Training checkpoint interval in steps (default 50). */
    checkpointEvery?: number;
    /** Token limit of every generator reply during synthesis (default: synth's 1024 / 512). */
    synthMaxTokens?: number;
    /** The operator's caps on what a job spec may ask (a spec over one: 422 spec_over_limit). */
    jobCaps?: Partial<JobCaps>;
    /** A job running longer than this (from its first stage, across restarts) fails (seconds; default none). */
    jobTimeBudgetSeconds?: number;
    /** A finished job (succeeded, failed or cancelled) and its model are erased this long after it finished (seconds; default 7 days). */
    retentionSeconds?: number;
    /** Log lines (job failures, listening) go here; default stderr. */
    log?: (line: string) => void;
}

export interface FederatedServer {
    app: FastifyInstance;
    url: string;
    info: ServerInfo;
    store: JobStore;
    close(): Promise<void>;
}

/** The job server's default settings (address, limits, workers). */
export const serverDefaults = {
    host: "127.0.0.1",
    port: 8080,
    maxBodyBytes: 32 * 1024 * 1024,
    maxItemsPerJob: 10000,
    maxConcurrentJobsPerClient: 2,
    workers: 1,
    checkpointEvery: 50,
    retentionSeconds: 7 * 24 * 3600,
} as const;

/** Caps on job spec fields, each a flag of `ppc-gpt server`. */
export interface JobCaps {
    /** server_steps */
    maxSteps: number;
    /** k: synthetic items per perturbed item */
    maxK: number;
    /** r: LoRA rank */
    maxRank: number;
    /** batch_size */
    maxBatchSize: number;
    /** max_input_length + max_target_length */
    maxSequenceLength: number;
}

export const jobCapDefaults: JobCaps = {maxSteps: 5000, maxK: 32, maxRank: 128, maxBatchSize: 256, maxSequenceLength: 2048};

/** A default over a cap takes the cap (a spec that leaves a field out asks for nothing over the server's caps). */
export function withinCaps(spec: ReturnType<typeof fillJobSpec>, asked: JobSpec | undefined, caps: JobCaps): ReturnType<typeof fillJobSpec> {
    const out = {...spec};
    if (asked?.server_steps === undefined)
        out.server_steps = Math.min(out.server_steps, caps.maxSteps);
    if (asked?.k === undefined)
        out.k = Math.min(out.k, caps.maxK);
    if (asked?.r === undefined)
        out.r = Math.min(out.r, caps.maxRank);
    if (asked?.batch_size === undefined)
        out.batch_size = Math.min(out.batch_size, caps.maxBatchSize);
    return out;
}

/** The first cap a filled spec goes over, as a message naming the field and the flag; undefined when none. */
export function specOverCap(spec: ReturnType<typeof fillJobSpec>, caps: JobCaps): string | undefined {
    const checks: [string, number, number, string][] = [
        ["server_steps", spec.server_steps, caps.maxSteps, "--max-steps"],
        ["k", spec.k, caps.maxK, "--max-k"],
        ["r", spec.r, caps.maxRank, "--max-rank"],
        ["batch_size", spec.batch_size, caps.maxBatchSize, "--max-batch-size"],
        ["max_input_length + max_target_length", spec.max_input_length + spec.max_target_length, caps.maxSequenceLength, "--max-sequence-length"],
    ];
    const over = checks.find(([, value, cap]) => value > cap);
    return over ? `spec.${over[0]} is ${over[1]}; this server takes at most ${over[2]} (server ${over[3]})` : undefined;
}

/** A stable serialization (sorted keys) for hashing request bodies. */
/** The quantize stage's record as a status carries it (the stage's result also holds the model's facts). */
function pickQuantization(q: JobQuantization): JobQuantization {
    return {type: q.type, imatrix_entries: q.imatrix_entries, size_before: q.size_before, size_after: q.size_after};
}

function canonicalJson(value: unknown): string {
    if (Array.isArray(value))
        return `[${value.map(canonicalJson).join(",")}]`;
    if (value && typeof value === "object")
        return `{${Object.keys(value).sort().filter((k) => (value as Record<string, unknown>)[k] !== undefined)
            .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(",")}}`;
    return JSON.stringify(value);
}

export async function createGenerator(config: GeneratorConfig): Promise<Generator> {
    if (config.kind === "embedded") {
        const {createEmbeddedGenerator} = await import("../synth/embedded.js");
        return createEmbeddedGenerator({modelPath: config.modelPath, sequences: config.sequences ?? 4, contextSize: config.contextSize,
            threads: config.threads, gpuLayers: config.gpuLayers});
    }
    return createRemoteGenerator({baseUrl: config.baseUrl, model: config.model, apiKeyEnv: config.apiKeyEnv, concurrency: config.concurrency ?? 8,
        timeoutMs: config.timeoutMs ?? 300_000, maxRetries: config.maxRetries ?? 6});
}

/** Public facts of the source model: name, sha256, architecture, layers, parameters. */
async function sourceModelInfo(model: string): Promise<ServerInfo["model"] & {size: number}> {
    const g = await readGguf(model, {maxArrayValues: 1});
    const name = g.value("general.name");
    const {sha256, size} = await hashFile(model);
    return {name: typeof name === "string" ? name : path.basename(model, ".gguf"), sha256, architecture: g.architecture, layers: g.blockCount,
        parameters: g.tensors.reduce((s, t) => s + t.nElements, 0), size};
}

/**
 * Claims the data dir for this process: `server.pid` names the server using it. A pid file whose
 * process is gone (a server killed with -9) is taken over; a live one is an error, because two
 * servers would run the same jobs twice.
 */
export function claimDataDir(dataDir: string): () => void {
    const file = path.join(dataDir, "server.pid");
    fs.mkdirSync(dataDir, {recursive: true});
    for (let attempt = 0; attempt < 2; attempt++) {
        try {
            fs.writeFileSync(file, `${process.pid}\n`, {flag: "wx"});
            return () => {
                try {
                    if (fs.readFileSync(file, "utf8").trim() === String(process.pid))
                        fs.rmSync(file, {force: true});
                } catch {
                    // already gone
                }
            };
        } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "EEXIST")
                throw err;
            const pid = Number(fs.readFileSync(file, "utf8").trim());
            let alive = false;
            try {
                process.kill(pid, 0);
                alive = Number.isInteger(pid) && pid > 0 && pid !== process.pid;
            } catch (e) {
                alive = (e as NodeJS.ErrnoException).code === "EPERM";
            }
            if (alive)
                throw new Error(`another server (pid ${pid}) is using ${dataDir}; stop it first, or give another --data-dir`);
            fs.rmSync(file, {force: true});
        }
    }
    throw new Error(`cannot claim ${dataDir} (${file} keeps reappearing)`);
}

/**
 * Unfinished jobs continue on the source model they started with: a restart with another
 * --model is refused while any job is queued or running. The model's hash is kept in
 * `source-model.json` (written atomically).
 */
async function checkSourceModel(dataDir: string, store: JobStore, sha256: string): Promise<void> {
    const file = path.join(dataDir, "source-model.json");
    let recorded: string | undefined;
    try {
        recorded = JSON.parse(fs.readFileSync(file, "utf8")).sha256;
    } catch {
        recorded = undefined;
    }
    if (recorded !== undefined && recorded !== sha256) {
        const unfinished = await store.jobsIn(["queued", "running"]);
        if (unfinished.length > 0)
            throw new Error(`${unfinished.length} unfinished job(s) in ${dataDir} started on the source model with sha256 ${recorded}; ` +
                `--model has sha256 ${sha256}. Start the server with that model, or delete those jobs first`);
    }
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify({sha256}) + "\n");
    fs.renameSync(tmp, file);
}

/** Starts the server: opens the store, writes the perturbation kit, resumes unfinished jobs, listens. */
export async function startFederatedServer(options: FederatedServerOptions): Promise<FederatedServer> {
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    const maxBodyBytes = options.maxBodyBytes ?? serverDefaults.maxBodyBytes;
    const maxItems = options.maxItemsPerJob ?? serverDefaults.maxItemsPerJob;
    const maxActive = options.maxConcurrentJobsPerClient ?? serverDefaults.maxConcurrentJobsPerClient;
    if (!fs.existsSync(options.model))
        throw new Error(`source model ${options.model} does not exist`);
    checkCleartextListen(options.host ?? serverDefaults.host, Boolean(options.tls), Boolean(options.insecure), log);
    const limits = {...httpLimitDefaults, ...options.limits};
    const jobCaps = {...jobCapDefaults, ...options.jobCaps};
    const dataDir = path.resolve(options.dataDir);
    makePrivateDir(dataDir);
    const distributed = isPostgresUrl(options.store);
    // with PostgreSQL, fronts and workers share the directory by design: no claim on it
    const release = distributed ? () => {} : claimDataDir(dataDir);
    const store: JobStore = distributed ? await PostgresJobStore.open(options.store!) : SqliteJobStore.open(dataDir);
    const artifacts = new ArtifactStore(dataDir);
    const source = await sourceModelInfo(options.model);
    await checkSourceModel(dataDir, store, source.sha256);

    // the kit is a function of the source model; it is rewritten at each start and kept by hash
    const kitTmp = path.join(artifacts.tmpDir, `kit-${process.pid}-${crypto.randomBytes(4).toString("hex")}.gguf`);
    await writePerturbationKit(options.model, kitTmp);
    const kit: ArtifactRef = await artifacts.addFile(kitTmp);
    await fs.promises.rm(kitTmp, {force: true});

    // a PostgreSQL front that runs no stage never loads an embedded generator (workers have their own)
    const generator = distributed && (options.workers ?? 0) === 0 && options.generator.kind === "embedded"
        ? noGenerator(`ppc-gpt:${path.basename(options.generator.modelPath)}`, "this server runs no stages (--workers 0)")
        : await createGenerator(options.generator);
    const env: PipelineEnv = {
        store, artifacts, sourceModel: path.resolve(options.model), sourceSha256: source.sha256, generator,
        threads: options.threads, checkpointEvery: options.checkpointEvery ?? serverDefaults.checkpointEvery, synthMaxTokens: options.synthMaxTokens,
        workDir: (id) => path.join(dataDir, "jobs", id),
    };
    const scheduler = distributed
        ? new DistributedRunner({store: store as PostgresJobStore, env, workers: options.workers ?? 0, settings: options.queue,
            protectedArtifacts: new Set([kit.sha256]), log})
        : new JobScheduler(env, options.workers ?? serverDefaults.workers, new Set([kit.sha256]),
            {timeBudgetMs: options.jobTimeBudgetSeconds === undefined ? undefined : options.jobTimeBudgetSeconds * 1000});
    if (distributed)
        // workers check their source model against this one
        await (store as PostgresJobStore).setSetting("source", {name: source.name, sha256: source.sha256, kit_sha256: kit.sha256});

    const info: ServerInfo = {
        protocol: protocolVersion,
        model: {name: source.name, sha256: source.sha256, architecture: source.architecture, layers: source.layers, parameters: source.parameters},
        // a remote generator is named by its model only: its internal address is not the clients' business
        generator: {kind: options.generator.kind, name: options.generator.kind === "remote" ? options.generator.model : generator.name},
        privacy: {mechanisms: [...privacyMechanisms], epsilon: {...epsilonRange}},
        limits: {max_body_bytes: maxBodyBytes, max_items_per_job: maxItems, max_concurrent_jobs_per_client: maxActive},
        job_spec_defaults: withinCaps(fillJobSpec(undefined), undefined, jobCaps),
        quantization_types: [...jobQuantizeTypes],
        perturbation_kit: {sha256: kit.sha256, size: kit.size},
    };

    const app = await createProtocolApp({
        bodyLimit: maxBodyBytes, uploadRoutes: [routes.jobs], limits, tls: options.tls, store, openapiRoute: routes.openapi, publicRoutes: [routes.info], log,
        api: {title: "ppc-gpt federated server", version: protocolVersion,
            description: "PPC-GPT server: perturbed items in, a pruned and distilled model out (docs/federated.md)."},
    });

    /** A message fit for clients: the generator as /v1/info names it (a remote one's name carries its address), no paths, no URLs. */
    const clientMessage = (message: string) => sanitizeMessage(message.split(generator.name).join(info.generator.name));

    const ownJob = async (request: FastifyRequest, id: string): Promise<JobRecord> => {
        const job = await store.job(id);
        // jobs belong to the client's name, not its token: a rotated token keeps them; another client's job does not exist for this one
        if (!job || job.client_id !== request.client!.name)
            throw new HttpError(404, errorCodes.notFound, `no job ${id}`);
        return job;
    };

    const jobStatus = async (job: JobRecord): Promise<JobStatus> => {
        const stages = await store.stages(job.id);
        const byName = (n: StageName) => stages.find((s) => s.name === n);
        const synth = byName("synth");
        const synthCounts = synth?.status === "done" ? synth.result as {accepted: number; rejected: number} : null;
        const prune = byName("prune"), quantize = byName("quantize");
        const model = job.status === "succeeded" ? finalModel(env, stages)?.info ?? null : null;
        return {
            id: job.id, status: job.status, stage: job.status === "running" ? job.stage : null,
            progress: job.status === "running" ? scheduler.progressOf(job.id) : null,
            // a job recorded before a stage existed (quantize) has no row for it
            stages: stageNames.flatMap((name) => {
                const s = byName(name);
                return s ? [{name, status: s.status, started_at: s.started_at, finished_at: s.finished_at, seconds: s.seconds}] : [];
            }),
            items: job.items, spec: job.spec, created_at: job.created_at, updated_at: job.updated_at,
            // a stage's error may name server paths or the generator's address: not the client's business
            error: job.error === null ? null : clientMessage(job.error),
            synth: synthCounts ? {accepted: synthCounts.accepted, rejected: synthCounts.rejected} : null,
            bi_report: byName("bi")?.status === "done" ? byName("bi")!.result as Record<string, unknown> : null,
            plan: prune?.status === "done" ? (prune.result as {plan: Record<string, unknown>}).plan : null,
            quantization: quantize?.status === "done" ? pickQuantization(quantize.result as JobQuantization) : null,
            model,
        };
    };

    const errorResponses = {400: errorSchema, 401: errorSchema, 404: errorSchema};
    app.get(routes.info, {schema: {summary: "Public parameters of this server (no auth)", response: {200: serverInfoSchema}}}, async () => info);
    app.get(routes.perturbationKit, {schema: {summary: "The perturbation kit: vocabulary-only GGUF with token embeddings (Range supported)",
        security: [{bearer: []}], response: {401: errorSchema, 416: errorSchema}}},
    async (request, reply) => sendStoredFile(request, reply, artifacts.pathOf(kit.sha256), kit.sha256, kit.size));

    // submissions being stored right now, by items artifact: never collected while in flight
    const inFlightItems = new Map<string, number>();
    app.post<{Body: SubmitJobRequest}>(routes.jobs, {
        schema: {summary: "Submit perturbed items and a job spec", security: [{bearer: []}], body: submitJobSchema, headers: submitHeadersSchema,
            response: {202: submitJobResponseSchema, 400: errorSchema, 401: errorSchema, 413: errorSchema, 422: errorSchema, 429: errorSchema}},
    }, async (request, reply) => {
        const client = request.client!;
        const body = request.body;
        if (body.items.length > maxItems)
            throw new HttpError(413, errorCodes.payloadTooLarge, `items has ${body.items.length} entries; this server takes at most ${maxItems} per job`);
        const problem = jobItemsProblem(body.items);
        if (problem)
            throw new HttpError(400, errorCodes.invalidRequest, problem);
        const spec = withinCaps(fillJobSpec(body.spec), body.spec, jobCaps);
        const overCap = specOverCap(spec, jobCaps);
        if (overCap)
            throw new HttpError(422, "spec_over_limit", overCap);
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
        inFlightItems.set(itemsSha, (inFlightItems.get(itemsSha) ?? 0) + 1);
        const id = "job_" + crypto.randomBytes(12).toString("base64url");
        try {
            await artifacts.addBytes(jsonl);
            const skipped: StageName[] = [];
            if (spec.strategy !== "bi")
                skipped.push("bi");
            if (!spec.server_retraining)
                skipped.push("train", "merge");
            if (spec.quantize === "none")
                skipped.push("quantize");
            await store.createJob({id, client_id: client.name, spec, items: body.items.length, items_sha256: itemsSha, skipped,
                ...(key !== undefined ? {idempotency: {key, body_sha256: bodySha}} : {})}, new Date().toISOString(), maxActive);
        } catch (err) {
            const n = inFlightItems.get(itemsSha)! - 1;
            if (n === 0)
                inFlightItems.delete(itemsSha);
            else
                inFlightItems.set(itemsSha, n);
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
        const n = inFlightItems.get(itemsSha)! - 1;
        if (n === 0)
            inFlightItems.delete(itemsSha);
        else
            inFlightItems.set(itemsSha, n);
        try {
            await scheduler.jobAdded(id);
        } catch (err) {
            // the job is stored; the queue reconciler picks it up when the store is back
            log(`job ${id}: could not queue it yet: ${(err as Error).message}`);
        }
        return accepted(id);
    });

    app.get(routes.jobs, {schema: {summary: "This client's jobs", security: [{bearer: []}], response: {200: jobListSchema, 401: errorSchema}}},
        async (request) => ({jobs: await Promise.all((await store.jobsOf(request.client!.name)).map(jobStatus))}));

    const idRoute = `${routes.jobs}/:id`;
    app.get<{Params: {id: string}}>(idRoute, {schema: {summary: "Status of a job", security: [{bearer: []}], params: jobIdParamsSchema,
        response: {200: jobStatusSchema, ...errorResponses}}},
    async (request) => jobStatus(await ownJob(request, request.params.id)));

    app.get<{Params: {id: string}}>(`${idRoute}/events`, {schema: {summary: "Server-sent events: status and progress of a job",
        security: [{bearer: []}], params: jobIdParamsSchema}},
    async (request, reply) => streamEvents(request, reply, (await ownJob(request, request.params.id)).id));

    app.get<{Params: {id: string}}>(`${idRoute}/model`, {schema: {summary: "The job's model (GGUF; Range supported)", security: [{bearer: []}],
        params: jobIdParamsSchema, response: {...errorResponses, 409: errorSchema, 416: errorSchema}}},
    async (request, reply) => {
        const job = await ownJob(request, request.params.id);
        const model = job.status === "succeeded" ? finalModel(env, await store.stages(job.id)) : undefined;
        if (!model)
            throw new HttpError(409, errorCodes.notReady, `job ${job.id} is ${job.status}; its model is ready when it has succeeded`);
        return sendStoredFile(request, reply, model.file, model.info.sha256, model.info.size);
    });

    app.delete<{Params: {id: string}}>(idRoute, {schema: {summary: "Cancel a job and erase everything stored of it", security: [{bearer: []}],
        params: jobIdParamsSchema, response: {...errorResponses, 204: {type: "null"}}}},
    async (request, reply) => {
        const job = await ownJob(request, request.params.id);
        await scheduler.erase(job.id);
        scheduler.kick();
        return reply.code(204).send();
    });

    app.get(routes.workers, {schema: {summary: "Workers and the stages they hold (admin token)", security: [{bearer: []}],
        response: {401: errorSchema, 403: errorSchema}}},
    async (request) => {
        if (!request.client!.admin)
            throw new HttpError(403, "forbidden", "GET /v1/workers needs an admin token (server token create --admin)");
        return {store: distributed ? "postgres" : "embedded", workers: await workerList()};
    });

    /** With the embedded store, the only worker is this process: its running jobs are what it holds. */
    async function workerList(): Promise<WorkerRecord[]> {
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
        return [{id: "in-process", host: (await import("node:os")).hostname(), pid: process.pid, stages: [...stageNames],
            concurrency: options.workers ?? serverDefaults.workers, started_at: startedAt, last_seen: now, seconds_since_seen: 0, draining: false,
            claims: claims.flat()}];
    }
    const startedAt = new Date().toISOString();

    /**
     * Finished jobs expire: every sweep erases (as DELETE does) each succeeded, failed or cancelled
     * job whose last change is older than the retention; its model and items go with it.
     */
    function startRetention(seconds: number): NodeJS.Timeout {
        const sweep = async () => {
            const cutoff = Date.now() - seconds * 1000;
            for (const job of await store.jobsIn([...terminalJobStates]))
                if (Date.parse(job.updated_at) < cutoff) {
                    await scheduler.erase(job.id);
                    log(`job ${job.id}: erased, ${job.status} more than --retention ago`);
                }
        };
        const run = () => void sweep().catch((err) => log(`retention sweep: ${(err as Error).message}`));
        run();
        const timer = setInterval(run, Math.max(1000, Math.min(seconds * 1000 / 4, 3600_000)));
        timer.unref();
        return timer;
    }

    // open event streams, ended when the server stops (they would otherwise hold it open) and when their token is revoked
    const openStreams = new Set<() => void>();
    const sessions = new TokenSessions(store, limits.maxStreamsPerToken);
    function streamEvents(request: FastifyRequest, reply: FastifyReply, id: string): void {
        const holder = {finish: () => {}};
        const release = sessions.enter(request.client!, () => holder.finish());
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
                const status = await jobStatus(job);
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

    await scheduler.start();
    const retention = startRetention(options.retentionSeconds ?? serverDefaults.retentionSeconds);
    await app.listen({host: options.host ?? serverDefaults.host, port: options.port ?? serverDefaults.port});
    const address = app.server.address();
    const port = typeof address === "object" && address ? address.port : options.port;
    const host = options.host ?? serverDefaults.host;
    const url = `${options.tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;

    let closing: Promise<void> | undefined;
    return {
        app, url, info, store,
        close() {
            closing ??= (async () => {
                clearInterval(retention);
                await scheduler.close();
                sessions.close();
                for (const finish of [...openStreams])
                    finish();
                await app.close();
                await generator.close();
                await store.close();
                release();
            })();
            return closing;
        },
    };
}
