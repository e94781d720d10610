// Benchmark: multiple-choice scoring throughput (items/s) on 4-choice ARC-Easy items, the shared-
// context batched scorer against naive per-choice re-evaluation, in one run on the same model and
// the same tokenized requests:
//   shared           context decoded once per item, KV-cache sequence copies for the choices,
//                    many items per decode (the default)
//   naive, batched   the same scorer with shareContext: false (every choice re-decodes its context)
//   naive, 1 by 1    one full-sequence decode of context + choice per choice (loadModel().logits)
//
//   node dist/scripts/bench/eval.js [--items 60] [--runs 3] [--model file.gguf] [--threads 2]
//
// Without --model it measures stories260K (../shared) and a generated 8-layer, 512-wide llama
// (vocab 32000, q8_0, ~56M parameters) written to bench-out/. Wall time and process CPU time are
// both reported: on a shared machine the CPU seconds are the steadier measure of work.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {loadTask} from "../../ts/data/loaders/index.js";
import {PairEncoder} from "../../ts/eval/encode.js";
import {LoglikScorer, type TokenRequest} from "../../ts/eval/loglik.js";
import {evalTasks} from "../../ts/eval/tasks.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel, type LoadedModel} from "../../ts/model.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const nItems = Number(arg("--items", "60"));
const runs = Number(arg("--runs", "3"));
const threads = Number(arg("--threads", String(os.cpus().length)));
const shared = process.env.PPC_SHARED_DIR ?? path.resolve(root, "..", "shared");

const models: string[] = [];
if (process.argv.includes("--model")) {
    models.push(path.resolve(arg("--model", "")));
} else {
    models.push(path.join(shared, "models", "stories260K.gguf"));
    const dir = path.join(root, "bench-out");
    fs.mkdirSync(dir, {recursive: true});
    const generated = path.join(dir, "eval-bench-llama-8x512-q8_0.gguf");
    if (!fs.existsSync(generated)) {
        process.stderr.write("generating the benchmark model (8 layers, 512 wide, vocab 32000, q8_0)...\n");
        await writeSyntheticModel(generated, {architecture: "llama", layers: 8, embedding: 512, heads: 8, kvHeads: 4,
            feedForward: 1376, vocab: 32000, type: "q8_0", seed: 5});
    }
    models.push(generated);
}

const items = (await loadTask("arc-easy")).filter((x) => x.choices.length === 4).slice(0, nItems);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function requestsFor(model: LoadedModel): TokenRequest[] {
    const enc = new PairEncoder(model);
    return items.map((item) => {
        const f = evalTasks["arc-easy"].format(item);
        const pairs = f.choices.map((c) => enc.encodePair(f.context, f.delimiter + c));
        return {context: pairs[0].context, continuations: pairs.map((p) => p.continuation)};
    });
}

async function naiveOneByOne(model: LoadedModel, requests: TokenRequest[]): Promise<number[]> {
    const V = model.info.nVocab;
    const out: number[] = [];
    for (const r of requests) {
        for (const c of r.continuations) {
            const ctx = Array.from(r.context), cont = Array.from(c);
            const logits = await model.logits([...ctx, ...cont].slice(0, ctx.length + cont.length - 1));
            let lp = 0;
            for (let t = 0; t < cont.length; t++) {
                const row = logits.subarray((ctx.length - 1 + t) * V, (ctx.length + t) * V);
                let max = -Infinity;
                for (let v = 0; v < V; v++)
                    max = Math.max(max, row[v]);
                let sum = 0;
                for (let v = 0; v < V; v++)
                    sum += Math.exp(row[v] - max);
                lp += row[cont[t]] - max - Math.log(sum);
            }
            out.push(lp);
        }
    }
    return out;
}

console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "unknown"}, ${threads} threads, ${new Date().toISOString().slice(0, 10)}; ` +
    `${items.length} ARC-Easy test items with 4 choices; median of ${runs} runs after a warm-up`);
for (const file of models) {
    const model = await loadModel(file, {threads, flashAttention: false, kvCacheType: "f32"});
    const requests = requestsFor(model);
    const tokens = {shared: 0, naive: 0};
    for (const r of requests) {
        tokens.shared += r.context.length;
        for (const c of r.continuations) {
            tokens.shared += c.length - 1;
            tokens.naive += r.context.length + c.length - 1;
        }
    }
    const contenders: {name: string; tokens: number; run: () => Promise<number[]>}[] = [];
    const scorers: LoglikScorer[] = [];
    for (const [name, shareContext] of [["shared context (ppc-gpt)", true], ["naive, batched", false]] as const) {
        const scorer = await LoglikScorer.open(model, {threads, shareContext});
        scorers.push(scorer);
        contenders.push({name, tokens: shareContext ? tokens.shared : tokens.naive,
            run: async () => (await scorer.score(requests)).flatMap((r) => r.map((s) => s.logprob))});
    }
    contenders.push({name: "naive, one by one", tokens: tokens.naive, run: () => naiveOneByOne(model, requests)});

    const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
    const cpu = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
    const values = new Map<string, number[]>();
    for (const c of contenders)
        values.set(c.name, await c.run());  // warm-up, and the values compared below
    for (let i = 0; i < runs; i++) {
        for (const c of contenders) {
            const t0 = performance.now();
            const c0 = process.cpuUsage();
            await c.run();
            const used = process.cpuUsage(c0);
            times.get(c.name)!.push((performance.now() - t0) / 1000);
            cpu.get(c.name)!.push((used.user + used.system) / 1e6);
        }
    }
    const base = values.get(contenders[0].name)!;
    const naiveTime = median(times.get("naive, one by one")!);
    const batchedTime = median(times.get("naive, batched")!);
    console.log(`\nmodel ${path.basename(file)} (${(model.info.nParams / 1e6).toFixed(2)}M parameters, vocab ${model.info.nVocab})`);
    const naiveCpu = median(cpu.get("naive, one by one")!);
    console.log("| contender | tokens decoded | wall s | items/s | × vs naive 1×1 | × vs naive batched | CPU s | CPU × vs naive 1×1 | max |Δ logprob| |");
    console.log("|---|---|---|---|---|---|---|---|---|");
    for (const c of contenders) {
        const s = median(times.get(c.name)!);
        const cs = median(cpu.get(c.name)!);
        const v = values.get(c.name)!;
        const diff = Math.max(...v.map((x, i) => Math.abs(x - base[i])));
        console.log(`| ${c.name} | ${c.tokens} | ${s.toFixed(3)} | ${(items.length / s).toFixed(1)} | ${(naiveTime / s).toFixed(2)}× | ` +
            `${(batchedTime / s).toFixed(2)}× | ${cs.toFixed(3)} | ${(naiveCpu / cs).toFixed(2)}× | ${diff.toExponential(1)} |`);
    }
    for (const s of scorers)
        s.close();
    model.close();
}
