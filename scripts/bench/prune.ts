// Benchmark: layer removal on generated 0.5 GB and 2 GB (and, on request, 4.5 GB) models, against `cp` of the same file and
// `llama-quantize --prune-layers ... COPY` built from the same llama.cpp source, in one run.
// Wall time (median of N runs, warm page cache) and peak RSS of each, as separate processes.
//
//   node dist/scripts/bench/prune.js [--runs 5] [--sizes 0.5,2[,5]] [--dir bench-out]
//                                    [--quantize build/bench-tools/bin/llama-quantize]
//
// Build the anchor once:  cmake -S .cache/llama.cpp-<v> -B build/bench-tools -DBUILD_SHARED_LIBS=OFF \
//   -DLLAMA_OPENSSL=OFF && cmake --build build/bench-tools --target llama-quantize
import {execFileSync, spawnSync} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {writeSyntheticModel, type SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import {removeLayers} from "../../ts/prune/remove.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const runs = Number(arg("--runs", "5"));
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const quantize = path.resolve(arg("--quantize", path.join(root, "build", "bench-tools", "bin", "llama-quantize")));
fs.mkdirSync(dir, {recursive: true});

const layers = 10;
const remove = [3, 7];
// Sizes: the 0.5 GB floor, where Node's fixed start-up (~0.1 s) is a visible share of cp's
// time; 2 GB; and on request 4.5 GB, closer to the files the tool is for (a 7B F16 model is 13.5 GB).
const sizes = arg("--sizes", "0.5,2").split(",").map(Number);
// 10 layers, F16: n_embd 1536 / ff 4096 / vocab 4096 is 504 MiB; n_embd 3072 / ff 8192 is 1.9 GiB;
// 12 layers at n_embd 4096 / ff 11008 / vocab 32000 (a 7B model's widths) is 4.5 GiB.
const shapes: Record<string, SyntheticModelOptions> = {
    "0.5": {architecture: "llama", layers, embedding: 1536, heads: 12, kvHeads: 4, feedForward: 4096, vocab: 4096, type: "f16"},
    "2": {architecture: "llama", layers, embedding: 3072, heads: 24, kvHeads: 8, feedForward: 8192, vocab: 4096, type: "f16"},
    "5": {architecture: "llama", layers: 12, embedding: 4096, heads: 32, kvHeads: 8, feedForward: 11008, vocab: 32000, type: "f16"},
};
const models = sizes.map((gb) => {
    const options = shapes[String(gb)];
    if (!options)
        throw new Error(`--sizes: one of ${Object.keys(shapes).join(", ")} (got ${gb})`);
    return {gb, options, file: path.join(dir, gb === 0.5 ? "prune-bench-f16.gguf" : `prune-bench-${gb}G-f16.gguf`)};
});
for (const m of models) {
    if (!fs.existsSync(m.file)) {
        process.stderr.write(`generating ${path.basename(m.file)} (~${m.gb} GB, f16)...\n`);
        await writeSyntheticModel(m.file, m.options);
    }
}

/**
 * Before every timed run: the previous output is deleted and dirty pages are written back (`sync`),
 * so no tool pays for another's write-back or dirty-page throttling.
 */
function settle(out: string): void {
    fs.rmSync(out, {force: true});
    spawnSync("sync");
}

/** Runs a command under GNU time: wall seconds and peak RSS in KiB. */
function measure(cmd: string[], out: string): {seconds: number; rssKiB: number} {
    settle(out);
    const r = spawnSync("/usr/bin/time", ["-f", "%e %M", ...cmd], {encoding: "utf8"});
    if (r.status !== 0)
        throw new Error(`${cmd.join(" ")} failed: ${r.stderr}`);
    const [seconds, rss] = r.stderr.trim().split("\n").at(-1)!.split(" ").map(Number);
    return {seconds, rssKiB: rss};
}

const cli = path.join(root, "dist", "ts", "cli", "main.js");
const haveQuantize = fs.existsSync(quantize);
if (!haveQuantize)
    process.stderr.write(`llama-quantize not found at ${quantize}: that anchor is skipped\n`);
const library = "removeLayers() in-process (library)";
const out = path.join(dir, "out.gguf");

async function benchModel(model: string): Promise<Map<string, {seconds: number[]; rssKiB: number[]}>> {
    const contenders: {name: string; cmd: string[]}[] = [
        {name: "cp (anchor)", cmd: ["cp", model, out]},
        {name: "ppc-gpt prune (CLI)", cmd: [process.execPath, cli, "prune", model, "--layers", remove.join(","), "-o", out]},
    ];
    if (haveQuantize)
        contenders.push({name: "llama-quantize --prune-layers", cmd: [quantize, "--prune-layers", remove.join(","), model, out, "COPY", "2"]});
    const results = new Map<string, {seconds: number[]; rssKiB: number[]}>(contenders.map((c) => [c.name, {seconds: [], rssKiB: []}]));
    // The library call alone, in this process (no Node start-up, no CLI): what an embedding tool pays.
    results.set(library, {seconds: [], rssKiB: []});
    for (let i = 0; i < runs + 1; i++) {
        settle(out);
        const t0 = process.hrtime.bigint();
        await removeLayers(model, out, remove);
        if (i > 0)
            results.get(library)!.seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
        for (const c of contenders) {
            const m = measure(c.cmd, out);
            if (i > 0) {  // the first round warms the page cache
                results.get(c.name)!.seconds.push(m.seconds);
                results.get(c.name)!.rssKiB.push(m.rssKiB);
            }
        }
    }
    fs.rmSync(out, {force: true});
    return results;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cpuModel = os.cpus()[0]?.model ?? "unknown";
let kernel = "";
try {
    kernel = execFileSync("uname", ["-r"], {encoding: "utf8"}).trim();
} catch { /* informational */ }
console.log(`machine: ${os.cpus().length} x ${cpuModel}, Linux ${kernel}, ${new Date().toISOString().slice(0, 10)}; median of ${runs} warm runs`);
for (const m of models) {
    const results = await benchModel(m.file);
    const size = fs.statSync(m.file).size;
    const cpTime = median(results.get("cp (anchor)")!.seconds);
    console.log(`\nmodel ${path.basename(m.file)}: ${(size / 2 ** 20).toFixed(0)} MiB, ${m.options.layers} layers, removing ${remove.join(",")}`);
    console.log("| tool | wall s | × cp | peak RSS MiB |");
    console.log("|---|---|---|---|");
    for (const [name, r] of results) {
        const t = median(r.seconds);
        const rss = r.rssKiB.length ? (Math.max(...r.rssKiB) / 1024).toFixed(1) : "(in this process)";
        console.log(`| ${name} | ${t.toFixed(3)} | ${(t / cpTime).toFixed(2)} | ${rss} |`);
    }
}
