// `ppc-gpt worker`: a process on any machine that claims stages of the server's jobs from the
// PostgreSQL queue (distributed.ts) and runs them against the shared artifacts directory.
import fs from "node:fs";
import path from "node:path";
import {ArtifactStore, hashFile} from "./artifacts.js";
import {noGenerator, startQueue, StageWorker, type QueueSettings} from "./distributed.js";
import type {PipelineEnv} from "./pipeline.js";
import {stageNames, type StageName} from "./protocol.js";
import {createGenerator, serverDefaults, type GeneratorConfig} from "./server.js";
import {PostgresJobStore} from "./store-postgres.js";
import type {Generator} from "../synth/generator.js";

export interface WorkerOptions {
    /** postgres:// URL of the server's store. */
    store: string;
    /** The directory every machine mounts: the server's --data-dir (artifacts/, jobs/, tmp/). */
    artifacts: string;
    /** The source model M_S; its sha256 must be the server's. */
    model: string;
    /** Needed when the worker takes the synth stage. */
    generator?: GeneratorConfig;
    stages?: StageName[];
    concurrency?: number;
    threads?: number;
    checkpointEvery?: number;
    /** Token limit of every generator reply (the server's --synth-max-tokens). */
    synthMaxTokens?: number;
    queue?: Partial<QueueSettings>;
    /** How long a store call waits for a database that went away (default 10 min). */
    storeWaitMs?: number;
    log?: (line: string) => void;
}

export interface RunningWorker {
    worker: StageWorker;
    source: {sha256: string};
    /** Stops fetching, waits up to `timeoutMs` for the running stages, hands back the rest, closes everything. */
    drain(timeoutMs: number): Promise<void>;
}

/** Start a scale-out stage worker on a PostgreSQL job store. */
export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    const stages = options.stages ?? [...stageNames];
    if (!fs.existsSync(options.model))
        throw new Error(`source model ${options.model} does not exist`);
    if (stages.includes("synth") && !options.generator)
        throw new Error("a worker that takes the synth stage needs a generator (--generator-url … or --generator-model …)");
    const dir = path.resolve(options.artifacts);
    if (!fs.existsSync(dir))
        throw new Error(`artifacts directory ${dir} does not exist (mount the server's --data-dir there)`);
    const store = await PostgresJobStore.open(options.store, {retryUnavailableMs: options.storeWaitMs ?? 600_000, applicationName: "ppc-gpt-worker"});
    let generator: Generator | undefined;
    try {
        const {sha256} = await hashFile(options.model);
        const served = await store.setting<{name: string; sha256: string}>("source");
        if (served && served.sha256 !== sha256)
            throw new Error(`source model ${options.model} (sha256 ${sha256.slice(0, 12)}…) is not the server's ${served.name} ` +
                `(sha256 ${served.sha256.slice(0, 12)}…); every worker must hold the same M_S`);
        generator = stages.includes("synth") ? await createGenerator(options.generator!)
            : noGenerator("none", "this worker has no generator (start it with --generator-url or --generator-model to take the synth stage)");
        const env: PipelineEnv = {
            store, artifacts: new ArtifactStore(dir), sourceModel: path.resolve(options.model), sourceSha256: sha256, generator,
            threads: options.threads, checkpointEvery: options.checkpointEvery ?? serverDefaults.checkpointEvery,
            synthMaxTokens: options.synthMaxTokens, workDir: (id) => path.join(dir, "jobs", id),
        };
        const boss = await startQueue(store, log);
        const worker = new StageWorker({store, boss, env, stages, concurrency: options.concurrency ?? 1, settings: options.queue, log});
        await worker.start();
        let closing: Promise<void> | undefined;
        return {
            worker, source: {sha256},
            drain(timeoutMs) {
                closing ??= (async () => {
                    await worker.drain(timeoutMs);
                    await boss.stop({graceful: false, wait: true, timeout: 5000}).catch(() => {});
                    await generator!.close();
                    await store.close();
                })();
                return closing;
            },
        };
    } catch (err) {
        await generator?.close().catch(() => {});
        await store.close();
        throw err;
    }
}
