// The PPC-GPT server as an HTTP service (protocol v1, docs/federated.md): Fastify with the shared
// JSON schemas validating every request, bearer-token auth, a persistent job store, the job
// scheduler and content-addressed artifacts under the data dir. The routes are Fastify plugins in
// routes/ (info, jobs, events, model, workers), each given the parts it needs (routes/context.ts);
// this file opens those parts and assembles the app.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type {FastifyInstance} from "fastify";
import {readGguf} from "../gguf/read.js";
import {writePerturbationKit} from "../privacy/kit.js";
import type {Generator} from "../synth/generator.js";
import {createRemoteGenerator} from "../synth/remote.js";
import {ArtifactStore, hashFile, type ArtifactRef} from "./artifacts.js";
import {lockDataDir} from "./data-dir-lock.js";
import {checkCleartextListen, createProtocolApp, httpLimitDefaults, TokenSessions, type HttpLimits} from "./http-common.js";
import {sanitizeMessage} from "./http-wire.js";
import {jobCapDefaults, withinCaps, type JobCaps} from "./job-caps.js";
import {makePrivateDir} from "./private-dir.js";
import type {PipelineEnv} from "./pipeline.js";
import {epsilonRange, fillJobSpec, jobQuantizeTypes, privacyMechanisms, protocolVersion, routes, terminalJobStates, type ServerInfo} from "./protocol.js";
import {JobScheduler} from "./scheduler.js";
import {DistributedRunner, noGenerator, type QueueSettings} from "./distributed.js";
import {isPostgresUrl, PostgresJobStore} from "./store-postgres.js";
import {SqliteJobStore, type JobStore} from "./store.js";
import type {JobRoutesContext} from "./routes/context.js";
import {eventRoutes} from "./routes/events.js";
import {infoRoutes} from "./routes/info.js";
import {jobRoutes} from "./routes/jobs.js";
import {modelRoutes} from "./routes/model.js";
import {workerRoutes} from "./routes/workers.js";

export {jobCapDefaults, specOverCap, withinCaps, type JobCaps} from "./job-caps.js";

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
 * Claims the data dir for this process: an exclusive lock that the kernel releases when the
 * process dies (data-dir-lock.ts), so a server killed with -9 restarts at once; a live holder is an
 * error naming its pid (`server.pid`), because two servers would run the same jobs twice.
 */
export function claimDataDir(dataDir: string): () => void {
    return lockDataDir(dataDir);
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

/** What a job server runs on: its store, artifacts, source model, kit, generator and scheduler. */
interface JobServerParts {
    dataDir: string;
    distributed: boolean;
    /** Gives the data dir back (server.pid). */
    release: () => void;
    store: JobStore;
    artifacts: ArtifactStore;
    source: ServerInfo["model"] & {size: number};
    kit: ArtifactRef;
    /** Artifacts no collection removes: the kit, and the items of submissions being stored (routes/jobs.ts). */
    protectedArtifacts: Set<string>;
    generator: Generator;
    env: PipelineEnv;
    scheduler: JobScheduler | DistributedRunner;
}

/** The kit is a function of the source model; it is rewritten at each start and kept by hash. */
async function storePerturbationKit(artifacts: ArtifactStore, model: string): Promise<ArtifactRef> {
    const kitTmp = path.join(artifacts.tmpDir, `kit-${process.pid}-${crypto.randomBytes(4).toString("hex")}.gguf`);
    await writePerturbationKit(model, kitTmp);
    const kit: ArtifactRef = await artifacts.addFile(kitTmp);
    await fs.promises.rm(kitTmp, {force: true});
    return kit;
}

/** Opens the store (claiming an embedded store's data dir), stores the kit, loads the generator and makes the scheduler. */
async function openJobServerParts(options: FederatedServerOptions, log: (line: string) => void): Promise<JobServerParts> {
    const dataDir = path.resolve(options.dataDir);
    makePrivateDir(dataDir);
    const distributed = isPostgresUrl(options.store);
    // with PostgreSQL, fronts and workers share the directory by design: no claim on it
    const release = distributed ? () => {} : claimDataDir(dataDir);
    let store: JobStore | undefined;
    try {
        store = distributed ? await PostgresJobStore.open(options.store!) : SqliteJobStore.open(dataDir);
        return await openOnStore(options, {dataDir, distributed, release, store}, log);
    } catch (err) {
        // a failed start gives the data dir back, so the same process (the in-process API) can start again
        await Promise.resolve(store?.close()).catch(() => {});
        release();
        throw err;
    }
}

/** The rest of openJobServerParts once the store is open: artifacts, kit, generator, scheduler. */
async function openOnStore(options: FederatedServerOptions, opened: Pick<JobServerParts, "dataDir" | "distributed" | "release" | "store">,
    log: (line: string) => void): Promise<JobServerParts> {
    const {dataDir, distributed, store} = opened;
    const artifacts = new ArtifactStore(dataDir);
    const source = await sourceModelInfo(options.model);
    await checkSourceModel(dataDir, store, source.sha256);
    const kit = await storePerturbationKit(artifacts, options.model);

    // a PostgreSQL front that runs no stage never loads an embedded generator (workers have their own)
    const generator = distributed && (options.workers ?? 0) === 0 && options.generator.kind === "embedded"
        ? noGenerator(`ppc-gpt:${path.basename(options.generator.modelPath)}`, "this server runs no stages (--workers 0)")
        : await createGenerator(options.generator);
    const env: PipelineEnv = {
        store, artifacts, sourceModel: path.resolve(options.model), sourceSha256: source.sha256, generator,
        threads: options.threads, checkpointEvery: options.checkpointEvery ?? serverDefaults.checkpointEvery, synthMaxTokens: options.synthMaxTokens,
        workDir: (id) => path.join(dataDir, "jobs", id),
    };
    const protectedArtifacts = new Set([kit.sha256]);
    const scheduler = distributed
        ? new DistributedRunner({store: store as PostgresJobStore, env, workers: options.workers ?? 0, settings: options.queue,
            protectedArtifacts, log})
        : new JobScheduler(env, options.workers ?? serverDefaults.workers, protectedArtifacts,
            {timeBudgetMs: options.jobTimeBudgetSeconds === undefined ? undefined : options.jobTimeBudgetSeconds * 1000});
    if (distributed)
        // workers check their source model against this one
        await (store as PostgresJobStore).setSetting("source", {name: source.name, sha256: source.sha256, kit_sha256: kit.sha256});
    return {...opened, artifacts, source, kit, protectedArtifacts, generator, env, scheduler};
}

/** What GET /v1/info answers. */
function serverInfo(options: FederatedServerOptions, parts: JobServerParts, limits: ServerInfo["limits"], jobCaps: JobCaps): ServerInfo {
    const {source, generator, kit} = parts;
    return {
        protocol: protocolVersion,
        model: {name: source.name, sha256: source.sha256, architecture: source.architecture, layers: source.layers, parameters: source.parameters},
        // a remote generator is named by its model only: its internal address is not the clients' business
        generator: {kind: options.generator.kind, name: options.generator.kind === "remote" ? options.generator.model : generator.name},
        privacy: {mechanisms: [...privacyMechanisms], epsilon: {...epsilonRange}},
        limits,
        job_spec_defaults: withinCaps(fillJobSpec(undefined), undefined, jobCaps),
        quantization_types: [...jobQuantizeTypes],
        perturbation_kit: {sha256: kit.sha256, size: kit.size},
    };
}

/**
 * Finished jobs expire: every sweep erases (as DELETE does) each succeeded, failed or cancelled
 * job whose last change is older than the retention; its model and items go with it.
 */
function startRetention(parts: JobServerParts, seconds: number, log: (line: string) => void): NodeJS.Timeout {
    const sweep = async () => {
        const cutoff = Date.now() - seconds * 1000;
        for (const job of await parts.store.jobsIn([...terminalJobStates]))
            if (Date.parse(job.updated_at) < cutoff) {
                await parts.scheduler.erase(job.id);
                log(`job ${job.id}: erased, ${job.status} more than --retention ago`);
            }
    };
    const run = () => void sweep().catch((err) => log(`retention sweep: ${(err as Error).message}`));
    run();
    const timer = setInterval(run, Math.max(1000, Math.min(seconds * 1000 / 4, 3600_000)));
    timer.unref();
    return timer;
}

/** The job routes on a protocol app: the context every plugin shares, the plugins in OpenAPI order. */
async function jobRoutesApp(options: FederatedServerOptions, parts: JobServerParts, info: ServerInfo, limits: HttpLimits,
    caps: {maxBodyBytes: number; maxItems: number; maxActive: number; jobCaps: JobCaps}, log: (line: string) => void) {
    const {store, generator} = parts;
    const app = await createProtocolApp({
        bodyLimit: caps.maxBodyBytes, uploadRoutes: [routes.jobs], limits, tls: options.tls, store, openapiRoute: routes.openapi, publicRoutes: [routes.info], log,
        api: {title: "ppc-gpt federated server", version: protocolVersion,
            description: "PPC-GPT server: perturbed items in, a pruned and distilled model out (docs/federated.md)."},
    });
    const ctx: JobRoutesContext = {
        store, artifacts: parts.artifacts, env: parts.env, scheduler: parts.scheduler, info, kit: parts.kit, protectedArtifacts: parts.protectedArtifacts,
        sessions: new TokenSessions(store, limits.maxStreamsPerToken), openStreams: new Set(),
        maxItems: caps.maxItems, maxActive: caps.maxActive, jobCaps: caps.jobCaps, distributed: parts.distributed,
        workers: options.workers ?? serverDefaults.workers, startedAt: new Date().toISOString(),
        // a remote generator's name carries its address: clients see it as /v1/info names it
        clientMessage: (message) => sanitizeMessage(message.split(generator.name).join(info.generator.name)),
        log,
    };
    // registered in this order, the OpenAPI document lists the routes as clients read them
    for (const plugin of [infoRoutes, jobRoutes, eventRoutes, modelRoutes, workerRoutes])
        await app.register(plugin, ctx);
    return {app, ctx};
}

/** Stops what a job server started, in order; after a failed start some parts are not there yet. */
async function stopJobServer(parts: JobServerParts, served?: {app: FastifyInstance; ctx: JobRoutesContext}, retention?: NodeJS.Timeout): Promise<void> {
    clearInterval(retention);
    await parts.scheduler.close();
    served?.ctx.sessions.close();
    for (const finish of [...served?.ctx.openStreams ?? []])
        finish();
    await served?.app.close();
    await parts.generator.close();
    await parts.store.close();
    parts.release();
}

/** Starts the server: opens the store, writes the perturbation kit, resumes unfinished jobs, listens. */
export async function startFederatedServer(options: FederatedServerOptions): Promise<FederatedServer> {
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    const caps = {
        maxBodyBytes: options.maxBodyBytes ?? serverDefaults.maxBodyBytes,
        maxItems: options.maxItemsPerJob ?? serverDefaults.maxItemsPerJob,
        maxActive: options.maxConcurrentJobsPerClient ?? serverDefaults.maxConcurrentJobsPerClient,
        jobCaps: {...jobCapDefaults, ...options.jobCaps},
    };
    if (!fs.existsSync(options.model))
        throw new Error(`source model ${options.model} does not exist`);
    const host = options.host ?? serverDefaults.host;
    checkCleartextListen(host, Boolean(options.tls), Boolean(options.insecure), log);
    const limits = {...httpLimitDefaults, ...options.limits};
    const parts = await openJobServerParts(options, log);
    const info = serverInfo(options, parts, {max_body_bytes: caps.maxBodyBytes, max_items_per_job: caps.maxItems,
        max_concurrent_jobs_per_client: caps.maxActive}, caps.jobCaps);
    let served: {app: FastifyInstance; ctx: JobRoutesContext} | undefined;
    let retention: NodeJS.Timeout | undefined;
    try {
        served = await jobRoutesApp(options, parts, info, limits, caps, log);
        await parts.scheduler.start();
        retention = startRetention(parts, options.retentionSeconds ?? serverDefaults.retentionSeconds, log);
        await served.app.listen({host, port: options.port ?? serverDefaults.port});
    } catch (err) {
        // a failed start (a port in use, a store gone) closes what it opened and gives the data dir back
        await stopJobServer(parts, served, retention).catch(() => {});
        throw err;
    }
    const {app} = served;
    const address = app.server.address();
    const port = typeof address === "object" && address ? address.port : options.port;
    const url = `${options.tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;
    let closing: Promise<void> | undefined;
    return {app, url, info, store: parts.store, close: () => (closing ??= stopJobServer(parts, served, retention))};
}
