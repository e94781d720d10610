// Computing an importance matrix from what the task says matters: the capture pass that scores
// Block Influence also sums each block weight's squared input activations (native/quantize/
// imatrix_collector.cpp), so `bi --imatrix` gets both from one forward pass.
//   - task items: the label and rationale sequences Block Influence scores (ts/prune/block-influence.ts);
//   - plain text: llama-imatrix's procedure (tools/imatrix/imatrix.cpp, compute_imatrix): the whole
//     text tokenized once, cut into chunks of `context` tokens, each chunk's first token replaced by
//     BOS where the vocabulary adds one; every position counts.
import path from "node:path";
import type {TaskItem} from "../data/task-item.js";
import type {LoadedModel} from "../model.js";
import {blockInfluencePass, scoreLayers, type BlockInfluenceOptions, type BlockInfluenceReport, type LayerScores,
    type TokenSequence} from "../prune/block-influence.js";
import {imatrixFromCapture, type ImportanceMatrix} from "./imatrix.js";

/** llama-imatrix's default context (-c). */
export const defaultImatrixContext = 512;

/** llama-imatrix's chunks of `text`; throws with its message when the text is shorter than two chunks. */
export function imatrixTextChunks(model: LoadedModel, text: string, context = defaultImatrixContext): TokenSequence[] {
    if (!Number.isInteger(context) || context < 16)
        throw new RangeError(`the importance matrix context must be an integer >= 16, got ${context}`);
    const tokens = model.tokenize(text, {addSpecial: true});
    if (tokens.length < 2 * context)
        throw new RangeError(`computing an importance matrix with a context of ${context} tokens needs at least ${2 * context} tokens; ` +
            `the text tokenizes to only ${tokens.length}`);
    const addsBos = model.tokenize("a", {addSpecial: true})[0] === model.info.bos;
    const chunks: TokenSequence[] = [];
    for (let start = 0; start + context <= tokens.length; start += context) {
        const chunk = tokens.slice(start, start + context);
        if (addsBos)
            chunk[0] = model.info.bos;
        chunks.push({tokens: chunk});
    }
    return chunks;
}

/** The importance matrix (and layer scores) of llama-imatrix's chunks of a text file's contents. */
export async function textImatrix(model: LoadedModel, text: string, dataset: string, options: {context?: number; maxBatchTokens?: number;
    onProgress?: (done: number, total: number) => void} = {}): Promise<{matrix: ImportanceMatrix; scores: LayerScores}> {
    const context = options.context ?? defaultImatrixContext;
    const chunks = imatrixTextChunks(model, text, context);
    const scores = await scoreLayers(model, chunks, {imatrix: true, maxBatchTokens: Math.max(options.maxBatchTokens ?? 512, context),
        onProgress: options.onProgress});
    const matrix = imatrixFromCapture(scores.imatrix ?? [], {datasets: [path.basename(dataset)], chunkCount: chunks.length, chunkSize: context});
    return {matrix, scores};
}

/** The importance matrix of task items' label and rationale sequences, with their Block Influence report. */
export async function taskImatrix(model: LoadedModel, items: TaskItem[], dataset: string, options: BlockInfluenceOptions = {}):
    Promise<{matrix: ImportanceMatrix; report: BlockInfluenceReport}> {
    const pass = await blockInfluencePass(model, items, {...options, imatrix: true});
    const matrix = imatrixFromCapture(pass.imatrix ?? [], {datasets: [path.basename(dataset)], chunkCount: pass.sequences, chunkSize: pass.maxTokens});
    return {matrix, report: pass.report};
}
