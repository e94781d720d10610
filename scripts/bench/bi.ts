// Benchmark: the Block-Influence pass (forward + capture of every block boundary + per-token
// statistics) against the plain forward pass of the same model, same decodes, batch and threads
// (the identical native path with the capture callback off), in one run. Tokens per second.
//
//   node dist/scripts/bench/bi.js [--runs 3] [--threads 2] [--dir bench-out]
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const runs = Number(arg("--runs", "3"));
const threads = Number(arg("--threads", String(os.availableParallelism())));
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
fs.mkdirSync(dir, {recursive: true});

const file = path.join(dir, "bi-bench-310M-f16.gguf");
if (!fs.existsSync(file)) {
    process.stderr.write("generating a 310M-parameter llama (f16)...\n");
    await writeSyntheticModel(file, {architecture: "llama", layers: 24, embedding: 1024, heads: 16, kvHeads: 8,
        feedForward: 3072, vocab: 4096, type: "f16"});
}
const model = await loadModel(file, {threads});
const info = model.info;
// 8 sequences of 128 tokens, 512 tokens per decode (4 sequences share one).
const sequences = Array.from({length: 8}, (_, s) => ({tokens: Int32Array.from({length: 128}, (_, i) => 3 + ((s * 131 + i * 17) % (info.nVocab - 3)))}));
const total = sequences.reduce((a, s) => a + s.tokens.length, 0);
const options = {maxBatchTokens: 512, maxSequences: 4};

async function timed(capture: boolean): Promise<number> {
    const t0 = process.hrtime.bigint();
    await native().layerScores(model.handle, sequences, {...options, capture});
    return Number(process.hrtime.bigint() - t0) / 1e9;
}

await timed(false);  // warm-up: page in the weights
const plain: number[] = [], bi: number[] = [];
for (let r = 0; r < runs; r++) {
    plain.push(await timed(false));
    bi.push(await timed(true));
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const tpsPlain = total / median(plain), tpsBi = total / median(bi);
console.log(`model: ${info.description}, ${(info.nParams / 1e6).toFixed(0)}M parameters, ${info.nLayer} layers, n_embd ${info.nEmbd}`);
console.log(`${total} tokens per pass (8 x 128, 512 per decode), ${threads} threads, ${os.cpus()[0]?.model}, ${new Date().toISOString().slice(0, 10)}; median of ${runs}`);
console.log("| pass | tokens/s | × plain |");
console.log("|---|---|---|");
console.log(`| plain forward (anchor) | ${tpsPlain.toFixed(1)} | 1.00 |`);
console.log(`| Block Influence capture | ${tpsBi.toFixed(1)} | ${(tpsBi / tpsPlain).toFixed(3)} |`);
model.close();
