// Shared test fixtures: the ../shared folder (models, datasets), temporary folders, and naive
// double-precision references that the numerical tests compare against.
import {execFile} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {promisify} from "node:util";
import type {ExecutionContext} from "ava";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The shared fixtures folder: PPC_SHARED_DIR, else ../shared beside the checkout. */
export const sharedDir = process.env.PPC_SHARED_DIR ?? path.resolve(repoRoot, "..", "shared");

export function sharedPath(...parts: string[]): string {
    return path.join(sharedDir, ...parts);
}

export const hasShared = fs.existsSync(path.join(sharedDir, "models", "stories260K.gguf"));
if (!hasShared)
    console.warn(`ppc-gpt tests: ${sharedDir} not found (set PPC_SHARED_DIR); tests that need shared fixtures are skipped`);

export const stories260K = sharedPath("models", "stories260K.gguf");
export const llama2TinyRandom = sharedPath("models", "llama-2-tiny-random.gguf");

/** A fresh temporary folder, removed when the test ends. */
export function tempDir(t: ExecutionContext): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-gpt-test-"));
    t.teardown(() => fs.rmSync(dir, {recursive: true, force: true}));
    return dir;
}

/** Path of the built CLI entry point. */
export const cliPath = path.join(repoRoot, "dist", "ts", "cli", "main.js");

const execFileAsync = promisify(execFile);

/** Runs the CLI as a child process; never throws for a non-zero exit. */
export async function runCli(args: string[], options: {env?: NodeJS.ProcessEnv} = {}): Promise<{code: number; stdout: string; stderr: string}> {
    try {
        const {stdout, stderr} = await execFileAsync(process.execPath, [cliPath, ...args],
            {maxBuffer: 1 << 28, ...(options.env ? {env: options.env} : {})});
        return {code: 0, stdout, stderr};
    } catch (err) {
        const e = err as {code: number; stdout: string; stderr: string};
        return {code: e.code, stdout: e.stdout, stderr: e.stderr};
    }
}

/** Log-softmax of one logits row in double precision. */
export function logSoftmax(row: ArrayLike<number>): Float64Array {
    let max = -Infinity;
    for (let i = 0; i < row.length; i++)
        max = Math.max(max, row[i]);
    let sum = 0;
    for (let i = 0; i < row.length; i++)
        sum += Math.exp(row[i] - max);
    const lse = max + Math.log(sum);
    const out = new Float64Array(row.length);
    for (let i = 0; i < row.length; i++)
        out[i] = row[i] - lse;
    return out;
}

/**
 * Naive reference: sum over k of log p(targets[k] | prefix + targets[<k]), from one full decode of
 * prefix + targets through the model and a log-softmax in double precision.
 */
export async function continuationLogprob(model: {logits(tokens: number[]): Promise<Float32Array>; info: {nVocab: number}},
    prefix: ArrayLike<number>, targets: ArrayLike<number>): Promise<number> {
    const logits = await model.logits([...Array.from(prefix), ...Array.from(targets)]);
    const V = model.info.nVocab;
    let lp = 0;
    for (let k = 0; k < targets.length; k++)
        lp += logSoftmax(logits.subarray((prefix.length - 1 + k) * V, (prefix.length + k) * V))[targets[k]];
    return lp;
}

/** Largest |a - b| relative to the largest |b|. */
export function maxRelativeDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
    let diff = 0, scale = 0;
    for (let i = 0; i < a.length; i++) {
        diff = Math.max(diff, Math.abs(a[i] - b[i]));
        scale = Math.max(scale, Math.abs(b[i]));
    }
    return diff / (scale || 1);
}
