// Benchmark: layer removal on a generated >= 500 MB model, against `cp` of the same file and
// `llama-quantize --prune-layers ... COPY` built from the same llama.cpp source, in one run.
// Wall time (median of N runs, warm page cache) and peak RSS of each, as separate processes.
//
//   node dist/scripts/bench/prune.js [--runs 5] [--dir bench-out] [--quantize build/bench-tools/bin/llama-quantize]
//
// Build the anchor once:  cmake -S .cache/llama.cpp-<v> -B build/bench-tools -DBUILD_SHARED_LIBS=OFF \
//   -DLLAMA_OPENSSL=OFF && cmake --build build/bench-tools --target llama-quantize
import {execFileSync, spawnSync} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
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

const model = path.join(dir, "prune-bench-f16.gguf");
const layers = 10;
const remove = [3, 7];
if (!fs.existsSync(model)) {
    process.stderr.write("generating the model (~590 MB, f16)...\n");
    await writeSyntheticModel(model, {architecture: "llama", layers, embedding: 1536, heads: 12, kvHeads: 4,
        feedForward: 4096, vocab: 4096, type: "f16"});
}
const size = fs.statSync(model).size;

/** Runs a command under GNU time: wall seconds and peak RSS in KiB. */
function measure(cmd: string[], out: string): {seconds: number; rssKiB: number} {
    fs.rmSync(out, {force: true});
    const r = spawnSync("/usr/bin/time", ["-f", "%e %M", ...cmd], {encoding: "utf8"});
    if (r.status !== 0)
        throw new Error(`${cmd.join(" ")} failed: ${r.stderr}`);
    const [seconds, rss] = r.stderr.trim().split("\n").at(-1)!.split(" ").map(Number);
    return {seconds, rssKiB: rss};
}

const cli = path.join(root, "dist", "ts", "cli", "main.js");
const contenders: {name: string; cmd: (out: string) => string[]}[] = [
    {name: "cp (anchor)", cmd: (out) => ["cp", model, out]},
    {name: "ppc-gpt prune", cmd: (out) => [process.execPath, cli, "prune", model, "--layers", remove.join(","), "-o", out]},
];
const haveQuantize = fs.existsSync(quantize);
if (haveQuantize)
    contenders.push({name: "llama-quantize --prune-layers", cmd: (out) => [quantize, "--prune-layers", remove.join(","), model, out, "COPY", "2"]});
else
    process.stderr.write(`llama-quantize not found at ${quantize}: that anchor is skipped\n`);

const results = new Map<string, {seconds: number[]; rssKiB: number[]}>(contenders.map((c) => [c.name, {seconds: [], rssKiB: []}]));
// The library call alone, in this process (no Node start-up, no CLI): what an embedding tool pays.
const library = "removeLayers() in-process (library)";
results.set(library, {seconds: [], rssKiB: []});
for (let i = 0; i < runs + 1; i++) {
    {
        const out = path.join(dir, "out.gguf");
        fs.rmSync(out, {force: true});
        const t0 = process.hrtime.bigint();
        await removeLayers(model, out, remove);
        if (i > 0)
            results.get(library)!.seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    for (const c of contenders) {
        const out = path.join(dir, "out.gguf");
        const m = measure(c.cmd(out), out);
        if (i > 0) {  // the first round warms the page cache
            results.get(c.name)!.seconds.push(m.seconds);
            results.get(c.name)!.rssKiB.push(m.rssKiB);
        }
    }
}
fs.rmSync(path.join(dir, "out.gguf"), {force: true});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cpTime = median(results.get("cp (anchor)")!.seconds);
const cpuModel = os.cpus()[0]?.model ?? "unknown";
let kernel = "";
try {
    kernel = execFileSync("uname", ["-r"], {encoding: "utf8"}).trim();
} catch { /* informational */ }
console.log(`model ${path.basename(model)}: ${(size / 2 ** 20).toFixed(0)} MiB, ${layers} layers, removing ${remove.join(",")}`);
console.log(`machine: ${os.cpus().length} x ${cpuModel}, Linux ${kernel}, ${new Date().toISOString().slice(0, 10)}; median of ${runs} warm runs`);
console.log("| tool | wall s | × cp | peak RSS MiB |");
console.log("|---|---|---|---|");
for (const [name, r] of results) {
    const t = median(r.seconds);
    const rss = r.rssKiB.length ? (Math.max(...r.rssKiB) / 1024).toFixed(1) : "(in this process)";
    console.log(`| ${name} | ${t.toFixed(3)} | ${(t / cpTime).toFixed(2)} | ${rss} |`);
}
