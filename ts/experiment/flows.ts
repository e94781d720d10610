// The methods of the paper's tables as flows over the cached stages (stages.ts): each returns the
// accuracy after the server stage (S) and after client retraining (C). METHOD.md, "Baselines and
// ablations"; the PPC-GPT flow runs client and server in one process.
import fs from "node:fs";
import path from "node:path";
import {writeJsonlAtomic} from "../data/jsonl.js";
import {readTaskItems} from "../data/jsonl.js";
import {quantizeSetting, type MethodName, type Settings, type TaskSpec} from "./config.js";
import {generatorTrainingItems, itemTextPrompt, type Accuracy, type StageRunner} from "./stages.js";

export interface FlowResult {
    /** Accuracy of the model the server hands over (before client retraining); null where the method has no server stage. */
    S: Accuracy | null;
    /** Accuracy after client retraining on the private items (zero-shot: the source model). */
    C: Accuracy | null;
    /** What the stages reported (layers removed, synthetic items accepted, DP spent, …). */
    details: Record<string, unknown>;
    /** Why the flow could not finish (e.g. no synthetic item survived), when it could not. */
    error?: string;
}

export interface Cell {
    method: MethodName;
    task: TaskSpec;
    seed: number;
    settings: Settings;
    /** "main" or the ablated factor. */
    group: string;
}

type Flow = (run: StageRunner, cell: Cell) => Promise<FlowResult>;

/** The source model, zero-shot: the reference row. */
const zeroShot: Flow = async (run, {task, seed}) => {
    const data = await run.data(task, seed);
    const source = run.modelPath(run.config.source);
    return {S: null, C: await run.evaluate(task, source, data.eval), details: {}};
};

/** DenseSFT: the client fine-tunes the unpruned source model on its private items. */
const denseSft: Flow = async (run, {task, seed}) => {
    const data = await run.data(task, seed);
    const source = run.modelPath(run.config.source);
    const client = await run.train(source, data.private, task, "label", run.config.train.client, seed);
    return {S: null, C: await run.evaluate(task, source, data.eval, client.adapter), details: {clientSteps: client.steps}};
};

/** Client retraining of a server model and its evaluation. */
async function clientStage(run: StageRunner, task: TaskSpec, seed: number, model: string, privateFile: string, evalFile: string) {
    const client = await run.train(model, privateFile, task, "label", run.config.train.client, seed);
    return {C: await run.evaluate(task, model, evalFile, client.adapter), clientSteps: client.steps};
}

/** Plain-C: the client prunes by BI on its own private items (as if it could run M_S), then fine-tunes. */
const plainC: Flow = async (run, {task, seed, settings}) => {
    const data = await run.data(task, seed);
    const source = run.modelPath(run.config.source);
    const pruned = await run.prune(source, settings.ratio, settings.metric, task, data.private, false);
    const S = await run.evaluate(task, pruned.model, data.eval);
    const c = await clientStage(run, task, seed, pruned.model, data.private, data.eval);
    return {S, C: c.C, details: {removedLayers: pruned.removed, removedRatio: pruned.removedRatio}};
};

/**
 * DP-Instruct-C: the client DP-SGD-tunes a small generator on its private items (as text), samples
 * synthetic items from it, prunes with them, retrains the pruned model on them (S), then fine-tunes
 * on its private items (C).
 */
const dpInstructC: Flow = async (run, {task, seed, settings}) => {
    const data = await run.data(task, seed);
    const cfg = run.config;
    const privateItems = await readTaskItems(data.private);
    const genData = path.join(run.cache.root, "stages", `dp-generator-data-${path.basename(path.dirname(data.private))}.jsonl`);
    if (!fs.existsSync(genData))
        await writeJsonlAtomic(genData, generatorTrainingItems(privateItems));
    const {delta, maxPerExampleGradNorm, ...settingsDp} = cfg.train.dpGenerator;
    const generatorModel = run.modelPath(cfg.dpGenerator);
    const dp = await run.train(generatorModel, genData, task, "label", settingsDp, seed,
        {dpEpsilon: settings.epsilon, dpDelta: delta, maxPerExampleGradNorm, labelPrefix: itemTextPrompt, format: "openbookqa"});
    const tuned = await run.merge(generatorModel, dp.adapter);
    const choices = Math.max(...privateItems.map((it) => it.choices.length));
    const sampled = await run.sampleItems(tuned.model, privateItems.length * settings.k, choices, seed);
    const details: Record<string, unknown> = {dp: dp.dp, sampledItems: sampled.items, unparsedSamples: sampled.unparsed};
    if (sampled.items === 0)
        return {S: null, C: null, details, error: "the DP-tuned generator produced no parseable item"};
    const source = run.modelPath(cfg.source);
    const pruned = await run.prune(source, settings.ratio, settings.metric, task, sampled.file, false);
    let server = pruned.model;
    if (settings.serverRetrain) {
        const s = await run.train(pruned.model, sampled.file, task, "label", cfg.train.server, seed);
        server = (await run.merge(pruned.model, s.adapter)).model;
    }
    const S = await run.evaluate(task, server, data.eval);
    const c = await clientStage(run, task, seed, server, data.private, data.eval);
    return {S, C: c.C, details: {...details, removedLayers: pruned.removed, removedRatio: pruned.removedRatio}};
};

/**
 * PPC-GPT: the client perturbs its items (ε per token), the server synthesises k items per
 * perturbed one with rationales, prunes by BI_label + BI_rationale (or Seq), retrains by CoT
 * distillation (S), and the client retrains on its private items (C).
 */
const ppcGpt: Flow = async (run, {task, seed, settings}) => {
    const data = await run.data(task, seed);
    const cfg = run.config;
    const perturbed = await run.perturb(data.private, settings.epsilon, seed);
    const synthetic = await run.synthesize(perturbed.file, settings.k, seed);
    const details: Record<string, unknown> = {perturbedItems: perturbed.items, epsilonPerToken: settings.epsilon,
        syntheticAccepted: synthetic.accepted, syntheticRejected: synthetic.rejected, rejectionReasons: synthetic.reasons};
    if (synthetic.accepted === 0)
        return {S: null, C: null, details, error: "no synthetic item was accepted (three agreeing answers)"};
    const source = run.modelPath(cfg.source);
    const pruned = await run.prune(source, settings.ratio, settings.metric, task, synthetic.file, settings.rationales);
    let server = pruned.model;
    if (settings.serverRetrain) {
        const s = await run.train(pruned.model, synthetic.file, task, settings.rationales ? "cot" : "label", cfg.train.server, seed);
        server = (await run.merge(pruned.model, s.adapter)).model;
        details.serverSteps = s.steps;
    }
    const quantize = quantizeSetting(settings.quantize);
    if (quantize) {
        // as the federated job: the client receives, retrains and is scored on the quantized model
        const q = await run.quantize(server, quantize.type, task, quantize.imatrix ? synthetic.file : undefined, settings.rationales);
        details.quantization = {type: q.type, imatrix: q.imatrix, imatrixEntries: q.imatrixEntries, sizeBefore: q.sizeBefore, sizeAfter: q.sizeAfter};
        server = q.model;
    }
    details.modelBytes = fs.statSync(server).size;
    const S = await run.evaluate(task, server, data.eval);
    const c = await clientStage(run, task, seed, server, data.private, data.eval);
    return {S, C: c.C, details: {...details, removedLayers: pruned.removed, removedRatio: pruned.removedRatio}};
};

export const flows: Record<MethodName, Flow> = {
    "zero-shot": zeroShot,
    "dense-sft": denseSft,
    "plain-c": plainC,
    "dp-instruct-c": dpInstructC,
    "ppc-gpt": ppcGpt,
};
