// One job's pipeline on the server: synth -> bi -> prune -> train -> merge -> quantize, each stage calling the
// stage library the way its CLI verb does. A stage's output becomes an artifact and its row is
// marked done before the next stage starts, so a restarted server skips every finished stage;
// synth resumes mid-way from its journal and train from its last checkpoint (both kept in the
// job's work folder until the job ends).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {readTaskItems} from "../data/jsonl.js";
import {readGguf} from "../gguf/read.js";
import {loadModel} from "../model.js";
import {blockInfluence, type BlockInfluenceReport} from "../prune/block-influence.js";
import {planPruning, type PruningPlan} from "../prune/plan.js";
import {removeLayers} from "../prune/remove.js";
import type {Generator} from "../synth/generator.js";
import {synthesize} from "../synth/pipeline.js";
import {checkpointFile} from "../train/checkpoint.js";
import {taskImatrix} from "../quantize/collect.js";
import {quantizeModel} from "../quantize/quantize.js";
import {mergeLora} from "../train/merge.js";
import {trainLora} from "../train/train.js";
import type {ArtifactRef, ArtifactStore} from "./artifacts.js";
import {stageNames, type JobModelInfo, type StageName} from "./protocol.js";
import type {JobRecord, JobStore, StageRecord} from "./store.js";

export interface PipelineEnv {
    store: JobStore;
    artifacts: ArtifactStore;
    /** The source model M_S. */
    sourceModel: string;
    sourceSha256: string;
    generator: Generator;
    /** Parallel synthesis attempts (default: the generator's concurrency). */
    synthConcurrency?: number;
    /** Token limit of every generator reply (default: the synth stage's own limits). */
    synthMaxTokens?: number;
    /** CPU threads of BI scoring and training. */
    threads?: number;
    /** Training checkpoint interval in steps (a kill loses at most this many steps). */
    checkpointEvery: number;
    /** Folder of one job's unfinished work (synth journal, checkpoints). */
    workDir: (jobId: string) => string;
}

export interface StageRun {
    job: JobRecord;
    signal: AbortSignal;
    onProgress: (stage: StageName, done: number, total: number) => void;
    /** Artifacts this run added (so that a cancelled job's leftovers can be found). */
    added: Set<string>;
    /** The claim (fencing token) each stage runs under; default: a new one per stage. */
    claim?: string;
}

interface StageOutput {
    artifact: ArtifactRef | null;
    result: unknown;
}

export class JobCancelledError extends Error {
    override name = "JobCancelledError";
}

/** The stage is no longer this claim's (its lease was lost and another claim took it): nothing was recorded. */
export class ClaimLostError extends Error {
    override name = "ClaimLostError";
}

/** A new claim id: random, and a plain folder name. */
export const newClaimId = (): string => "clm_" + crypto.randomBytes(12).toString("hex");

/** Stages that resume from what an earlier claim left in its folder (synth's journal, train's checkpoint). */
const resumableStages: StageName[] = ["synth", "train"];

/**
 * Sets up the folder a claim works in, `<job work dir>/<claim>`: a resumable stage starts from a
 * copy of the previous claim's folder, never from that folder itself, so a previous holder that is
 * still alive (declared dead during a pause) writes only into its own folder. The copy may be
 * taken while such a holder writes: synth drops a torn last line, and train resumes only from a
 * checkpoint whose files all came along (else it starts the stage afresh).
 */
async function claimFolder(jobDir: string, claim: string, previous: string | null, stage: StageName): Promise<string> {
    const mine = path.join(jobDir, claim);
    await fs.promises.rm(mine, {recursive: true, force: true});
    const theirs = previous && previous !== claim ? path.join(jobDir, previous) : undefined;
    if (theirs && resumableStages.includes(stage) && fs.existsSync(theirs)) {
        try {
            await fs.promises.cp(theirs, mine, {recursive: true, force: true});
        } catch {
            await fs.promises.rm(mine, {recursive: true, force: true});
        }
        if (stage === "train")
            dropIncompleteCheckpoint(path.join(mine, "checkpoint"));
    }
    // nobody continues the previous claim's folder but this one: it is spent
    if (theirs)
        await fs.promises.rm(theirs, {recursive: true, force: true});
    await fs.promises.mkdir(mine, {recursive: true});
    return mine;
}

/** A checkpoint copied while it was being replaced may name files that did not come along: train from scratch then. */
function dropIncompleteCheckpoint(dir: string): void {
    try {
        const meta = JSON.parse(fs.readFileSync(path.join(dir, checkpointFile), "utf8")) as {adapter?: string; optimizer?: string};
        if ([meta.adapter, meta.optimizer].every((f) => typeof f === "string" && fs.existsSync(path.join(dir, path.basename(f)))))
            return;
    } catch {
        if (!fs.existsSync(path.join(dir, checkpointFile)))
            return;
    }
    fs.rmSync(dir, {recursive: true, force: true});
}

const now = () => new Date().toISOString();

/** Facts of a GGUF model a client is told about. */
export async function modelFacts(file: string, sha256: string, size: number): Promise<JobModelInfo> {
    const g = await readGguf(file, {maxArrayValues: 1});
    return {sha256, size, layers: g.blockCount, parameters: g.tensors.reduce((s, t) => s + t.nElements, 0)};
}

function stageOf(stages: StageRecord[], name: StageName): StageRecord {
    const s = stages.find((x) => x.name === name);
    if (!s)
        throw new Error(`job has no ${name} stage row`);
    return s;
}

/** False only for a stage added after the job was recorded (quantize on a job of an older server): it does not run. */
function hasStageRow(stages: StageRecord[], name: StageName): boolean {
    return name !== "quantize" || stages.some((x) => x.name === name);
}

/** The model file a finished prune stage stands for: its artifact, or the source when nothing was removed. */
function prunedModel(env: PipelineEnv, stages: StageRecord[]): {file: string; sha256: string} {
    const prune = stageOf(stages, "prune");
    return prune.artifact_sha256
        ? {file: env.artifacts.pathOf(prune.artifact_sha256), sha256: prune.artifact_sha256}
        : {file: env.sourceModel, sha256: env.sourceSha256};
}

async function addArtifact(env: PipelineEnv, run: StageRun, file: string, options: {copy?: boolean} = {}): Promise<ArtifactRef> {
    const ref = await env.artifacts.addFile(file, options);
    run.added.add(ref.sha256);
    return ref;
}

async function synthStage(env: PipelineEnv, run: StageRun, work: string): Promise<StageOutput> {
    const output = path.join(work, "synthetic.jsonl");
    const summary = await synthesize({
        input: env.artifacts.pathOf(run.job.items_sha256), output, generator: env.generator, ratio: run.job.spec.k,
        concurrency: env.synthConcurrency, seed: run.job.spec.seed, signal: run.signal,
        ...(env.synthMaxTokens ? {maxTokens: {question: env.synthMaxTokens, answer: env.synthMaxTokens, rationale: env.synthMaxTokens}} : {}),
        onProgress: (p) => run.onProgress("synth", p.settled, p.target),
    });
    const counts = {accepted: summary.accepted, rejected: summary.rejected, reasons: summary.reasons, requests: summary.requests};
    if (summary.accepted === 0) {
        const reasons = Object.entries(summary.reasons).map(([r, n]) => `${r} ${n}`).join(", ");
        throw new Error(`synthesis accepted no items from ${summary.parents} perturbed item(s) with generator ${summary.generator} ` +
            `(${summary.rejected} attempts rejected${reasons ? `: ${reasons}` : ""}); nothing to score or train on`);
    }
    // copied, not linked: a resumed synth (after a kill before this stage was recorded) reopens the output for appending
    return {artifact: await addArtifact(env, run, output, {copy: true}), result: counts};
}

async function biStage(env: PipelineEnv, run: StageRun, stages: StageRecord[], work: string): Promise<StageOutput> {
    const spec = run.job.spec;
    const synthetic = env.artifacts.pathOf(stageOf(stages, "synth").artifact_sha256!);
    let items = await readTaskItems(synthetic);
    if (!spec.rationales)
        items = items.map(({rationale: _drop, ...rest}) => rest);
    const model = await loadModel(env.sourceModel, env.threads ? {threads: env.threads} : {});
    let report: BlockInfluenceReport;
    try {
        report = await blockInfluence(model, items, {metric: "bi", positions: "all", maxBatchTokens: 512,
            maxTokens: spec.max_input_length + spec.max_target_length, onProgress: (d, t) => run.onProgress("bi", d, t)});
    } finally {
        model.close();
    }
    // the server's local path is none of the client's business
    const shared = {...report, model: {...report.model, path: path.basename(env.sourceModel)}};
    const file = path.join(work, "bi.json");
    fs.writeFileSync(file, JSON.stringify(shared, null, 2) + "\n");
    return {artifact: await addArtifact(env, run, file), result: shared};
}

async function pruneStage(env: PipelineEnv, run: StageRun, stages: StageRecord[], work: string): Promise<StageOutput> {
    const spec = run.job.spec;
    const bi = stageOf(stages, "bi");
    const scores = spec.strategy === "bi" ? (bi.result as BlockInfluenceReport).bi : undefined;
    const plan: PruningPlan = await planPruning(env.sourceModel, {strategy: spec.strategy, ratio: spec.ratio, scores});
    const sharedPlan = {...plan, model: path.basename(env.sourceModel)};
    if (plan.removed.length === 0) {
        const size = fs.statSync(env.sourceModel).size;
        return {artifact: null, result: {plan: sharedPlan, model: await modelFacts(env.sourceModel, env.sourceSha256, size)}};
    }
    const output = path.join(work, "pruned.gguf");
    await removeLayers(env.sourceModel, output, plan.removed, {onProgress: (d, t) => run.onProgress("prune", d, t)});
    const ref = await addArtifact(env, run, output);
    await fs.promises.rm(output, {force: true});
    return {artifact: ref, result: {plan: sharedPlan, model: await modelFacts(env.artifacts.pathOf(ref.sha256), ref.sha256, ref.size)}};
}

async function trainStage(env: PipelineEnv, run: StageRun, stages: StageRecord[], work: string): Promise<StageOutput> {
    const spec = run.job.spec;
    const checkpointDir = path.join(work, "checkpoint");
    const output = path.join(work, "adapter.gguf");
    const result = await trainLora({
        model: prunedModel(env, stages).file,
        data: env.artifacts.pathOf(stageOf(stages, "synth").artifact_sha256!),
        output,
        task: spec.rationales ? "cot" : "label",
        rationaleWeight: spec.rationale_weight,
        r: spec.r, loraAlpha: spec.lora_alpha, loraDropout: spec.lora_dropout, targetModules: spec.target_modules,
        learningRate: spec.learning_rate, batchSize: spec.batch_size, steps: spec.server_steps,
        maxInputLength: spec.max_input_length, maxTargetLength: spec.max_target_length, seed: spec.seed,
        checkpointDir, saveEvery: env.checkpointEvery, resume: fs.existsSync(path.join(checkpointDir, checkpointFile)),
        ...(env.threads ? {threads: env.threads} : {}),
        signal: run.signal,
        onProgress: (e) => {
            if (e.type === "step")
                run.onProgress("train", e.step, e.steps);
        },
    });
    const ref = await addArtifact(env, run, output);
    return {artifact: ref, result: {steps: result.steps, train_loss: result.trainLoss, tokens: result.tokens, items: result.items,
        trainable_parameters: result.trainableParameters, seconds: result.seconds, resumed_from: result.resumedFrom ?? null}};
}

async function mergeStage(env: PipelineEnv, run: StageRun, stages: StageRecord[], work: string): Promise<StageOutput> {
    const output = path.join(work, "model.gguf");
    const adapter = env.artifacts.pathOf(stageOf(stages, "train").artifact_sha256!);
    const r = await mergeLora(prunedModel(env, stages).file, adapter, output, {onProgress: (d, t) => run.onProgress("merge", d, t)});
    const ref = await addArtifact(env, run, output);
    await fs.promises.rm(output, {force: true});
    return {artifact: ref, result: {merged_tensors: r.merged.length, model: await modelFacts(env.artifacts.pathOf(ref.sha256), ref.sha256, ref.size)}};
}

/**
 * Quantizes the model the job would deliver otherwise (merged, else pruned) with llama.cpp's
 * quantizer and an importance matrix of that model on the synthetic items: the label and
 * rationale sequences BI and training use, so the bits go where the task's activations are.
 */
async function quantizeStage(env: PipelineEnv, run: StageRun, stages: StageRecord[], work: string): Promise<StageOutput> {
    const spec = run.job.spec;
    const input = deliveredModel(env, stages, ["merge", "prune"])!;
    const items = await readTaskItems(env.artifacts.pathOf(stageOf(stages, "synth").artifact_sha256!));
    const model = await loadModel(input.file, env.threads ? {threads: env.threads} : {});
    let matrix;
    try {
        // progress: the capture pass is the first half, the quantizer the second
        ({matrix} = await taskImatrix(model, items, "synthetic.jsonl", {maxTokens: spec.max_input_length + spec.max_target_length,
            onProgress: (d, t) => run.onProgress("quantize", d / t / 2, 1)}));
    } finally {
        model.close();
    }
    const output = path.join(work, "quantized.gguf");
    const r = await quantizeModel(input.file, output, {type: spec.quantize, imatrix: {matrix, kind: "task", file: "synthetic.jsonl"},
        ...(env.threads ? {threads: env.threads} : {}), onProgress: (d, t) => run.onProgress("quantize", 0.5 + d / t / 2, 1)});
    const ref = await addArtifact(env, run, output);
    await fs.promises.rm(output, {force: true});
    return {artifact: ref, result: {type: r.type, imatrix_entries: matrix.entries.length, size_before: r.bytesIn, size_after: r.bytesOut,
        model: await modelFacts(env.artifacts.pathOf(ref.sha256), ref.sha256, ref.size)}};
}

/** The model of the first of `order`'s stages that is done: its artifact, or the source (prune removed nothing). */
function deliveredModel(env: Pick<PipelineEnv, "artifacts" | "sourceModel">, stages: StageRecord[], order: StageName[]):
    {file: string; info: JobModelInfo} | undefined {
    for (const name of order) {
        const s = stages.find((x) => x.name === name);
        if (s?.status === "done") {
            const info = (s.result as {model: JobModelInfo}).model;
            return {file: s.artifact_sha256 ? env.artifacts.pathOf(s.artifact_sha256) : env.sourceModel, info};
        }
    }
    return undefined;
}

/** The job's final model: the quantized one, else the merged one, else the pruned one. Undefined until the job succeeded. */
export function finalModel(env: Pick<PipelineEnv, "artifacts" | "sourceModel">, stages: StageRecord[]): {file: string; info: JobModelInfo} | undefined {
    return deliveredModel(env, stages, ["quantize", "merge", "prune"]);
}

/**
 * Runs one stage of the job (a no-op when it is done or skipped) under a claim and records it:
 * running, then done with its artifact and result, or failed. Every record is conditional on the
 * claim still holding the stage: a holder that lost it gets ClaimLostError and records nothing.
 * Throws the stage's error, or JobCancelledError when `run.signal` was aborted (the stage row then
 * stays "running" for whoever resumes it).
 */
export async function runJobStage(env: PipelineEnv, run: StageRun, name: StageName, onStageChange: () => void): Promise<void> {
    const store = env.store;
    const stages = await store.stages(run.job.id);
    if (!hasStageRow(stages, name))
        return;
    const row = stageOf(stages, name);
    if (row.status === "done" || row.status === "skipped")
        return;
    if (run.signal.aborted)
        throw new JobCancelledError("the job was cancelled");
    const claim = run.claim ?? newClaimId();
    const started = Date.now();
    const held = await store.claimStage(run.job.id, name, claim, new Date(started).toISOString());
    if (!held)
        throw new ClaimLostError(`the ${name} stage of ${run.job.id} is no longer this claim's`);
    const work = await claimFolder(env.workDir(run.job.id), claim, held.previous, name);
    onStageChange();
    let out: StageOutput;
    try {
        switch (name) {
            case "synth": out = await synthStage(env, run, work); break;
            case "bi": out = await biStage(env, run, stages, work); break;
            case "prune": out = await pruneStage(env, run, stages, work); break;
            case "train": out = await trainStage(env, run, stages, work); break;
            case "merge": out = await mergeStage(env, run, stages, work); break;
            case "quantize": out = await quantizeStage(env, run, stages, work); break;
        }
    } catch (err) {
        if (run.signal.aborted)
            throw new JobCancelledError("the job was cancelled");
        if (!await store.updateStage(run.job.id, name, {status: "failed", finished_at: now(), seconds: (Date.now() - started) / 1000}, claim))
            throw new ClaimLostError(`the ${name} stage of ${run.job.id} failed after it stopped being this claim's: ${(err as Error).message}`);
        throw new Error(`${name} stage: ${(err as Error).message}`, {cause: err});
    }
    if (run.signal.aborted)
        throw new JobCancelledError("the job was cancelled");
    if (!await store.updateStage(run.job.id, name, {status: "done", finished_at: now(), seconds: (Date.now() - started) / 1000,
        artifact_sha256: out.artifact?.sha256 ?? null, result: out.result}, claim))
        throw new ClaimLostError(`the ${name} stage of ${run.job.id} finished after it stopped being this claim's; its result is dropped`);
    await fs.promises.rm(work, {recursive: true, force: true});
    onStageChange();
}

/** The first stage of the job that is neither done nor skipped (undefined when the job is complete). */
export function nextStage(stages: StageRecord[]): StageName | undefined {
    for (const name of stageNames)
        if (hasStageRow(stages, name) && !["done", "skipped"].includes(stageOf(stages, name).status))
            return name;
    return undefined;
}

/**
 * Runs every stage of the job that is not done yet, in order, recording each as it finishes.
 * Throws the first stage's error (the caller records the job as failed).
 */
export async function runJobStages(env: PipelineEnv, run: StageRun, onStageChange: () => void): Promise<void> {
    for (const name of stageNames)
        await runJobStage(env, run, name, onStageChange);
}
