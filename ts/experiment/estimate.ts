// A rough GPU-time estimate of a config: tokens each stage processes (counted per distinct stage,
// as the cache shares them), divided by assumed throughputs. The assumptions are the config's
// `throughput` and the per-request token counts below; docs/experiments.md states them.
import type {ExperimentConfig} from "./config.js";
import type {Cell} from "./flows.js";

/** Assumed tokens per synthesis attempt: 5 requests (question, 3 answers, rationale). */
export const synthTokensPerAttempt = {prompt: 5 * 450, completion: 200 + 3 * 300 + 150};
/** Assumed tokens of one training item (label + rationale example, prompt + target). */
export const trainTokensPerItem = {cot: 64 + 8 + 64 + 128, label: 64 + 8};

export interface GpuEstimate {
    hours: {synth: number; train: number; eval: number; total: number};
    tokens: {synth: number; train: number; eval: number};
    assumptions: string;
}

export function estimateGpuTime(config: ExperimentConfig, cells: Cell[]): GpuEstimate | undefined {
    const tp = config.throughput;
    if (!tp)
        return undefined;
    const synthKeys = new Set<string>(), trainKeys = new Set<string>(), evalKeys = new Set<string>();
    let synth = 0, train = 0, evalTokens = 0;
    const trainTokens = (settings: {steps?: number; epochs?: number; batchSize: number}, items: number, kind: "cot" | "label") =>
        (settings.steps ?? (settings.epochs ?? 3) * Math.ceil(items / settings.batchSize)) * Math.min(items, settings.batchSize) * trainTokensPerItem[kind];
    for (const c of cells) {
        const n = c.task.trainItems, s = c.settings;
        const addEval = (key: string) => {
            if (!evalKeys.has(key)) {
                evalKeys.add(key);
                evalTokens += c.task.evalItems * 4 * 80;
            }
        };
        const addTrain = (key: string, tokens: number) => {
            if (!trainKeys.has(key)) {
                trainKeys.add(key);
                train += tokens;
            }
        };
        const base = `${c.task.name}/${c.seed}`;
        if (c.method === "ppc-gpt") {
            const sk = `${base}/${s.epsilon}/${s.k}`;
            if (!synthKeys.has(sk)) {
                synthKeys.add(sk);
                synth += n * s.k * config.synth.maxAttemptsFactor * 0.75 * (synthTokensPerAttempt.completion + synthTokensPerAttempt.prompt / 10);
            }
            const serverKey = `${sk}/${s.ratio}/${s.metric}/${s.rationales}/${s.serverRetrain}`;
            if (s.serverRetrain)
                addTrain(`server/${serverKey}`, trainTokens(config.train.server, n * s.k, s.rationales ? "cot" : "label"));
            addTrain(`client/${serverKey}`, trainTokens(config.train.client, n, "label"));
            addEval(`S/${serverKey}`);
            addEval(`C/${serverKey}`);
        } else if (c.method === "dp-instruct-c") {
            // per-item gradients: one pass per sampled item, about 3x the tokens of batched training
            addTrain(`dpgen/${base}/${s.epsilon}`, 3 * trainTokens(config.train.dpGenerator, n, "label") * 4);
            synth += n * s.k * config.dpSampleTokens;
            addTrain(`dpserver/${base}/${s.epsilon}`, trainTokens(config.train.server, n * s.k, "label"));
            addTrain(`dpclient/${base}/${s.epsilon}`, trainTokens(config.train.client, n, "label"));
            addEval(`dpS/${base}`);
            addEval(`dpC/${base}`);
        } else if (c.method !== "zero-shot") {
            addTrain(`${c.method}/${base}`, trainTokens(config.train.client, n, "label"));
            addEval(`${c.method}/${base}`);
        } else {
            addEval(`zero/${c.task.name}`);
        }
    }
    const hours = {synth: synth / tp.generatorTokensPerSecond / 3600, train: train / tp.trainTokensPerSecond / 3600,
        eval: evalTokens / tp.evalTokensPerSecond / 3600, total: 0};
    hours.total = hours.synth + hours.train + hours.eval;
    return {hours, tokens: {synth, train, eval: evalTokens},
        assumptions: `generator ${tp.generatorTokensPerSecond} generated tok/s (prompt tokens at 1/10 cost), training ${tp.trainTokensPerSecond} tok/s, ` +
            `scoring ${tp.evalTokensPerSecond} tok/s; ${synthTokensPerAttempt.completion} generated tokens per synthesis attempt, 75% of the ` +
            `allowed attempts used; ${trainTokensPerItem.cot} tokens per CoT item`};
}
