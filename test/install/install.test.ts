// The packages as a user gets them: the main package and the CPU platform package packed from this
// checkout's build, installed into a fresh project with install scripts off and no compiler, cmake,
// make or git on PATH, then inspect, prune, bi, eval and training run through the installed
// package (CLI and library import) on this Node and on Node 24.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import test from "ava";
import {hasShared, sharedPath, stories260K} from "../helpers.js";
import {cleanEnv, commandRuns, installProject, node24, packTarballs, run, toolsOnlyBin, type Tarballs} from "./project.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-gpt-install-"));
test.after.always(() => fs.rmSync(root, {recursive: true, force: true}));

const project = path.join(root, "project");
let tarballs: Tarballs;
let node24Binary: string;

test.before(async () => {
    if (!hasShared)
        return;
    tarballs = packTarballs(path.join(root, "out"));
    const bin = toolsOnlyBin(path.join(root, "bin-install"), process.execPath);
    // Node 24 is fetched while npm installs (both mostly wait on the disk and the npm cache).
    [node24Binary] = await Promise.all([node24(path.join(root, "node24")),
        installProject(project, [tarballs.main, tarballs.cpu], cleanEnv(bin, path.join(root, "cache-install")))]);
});

function writeJsonl(file: string, values: object[]): string {
    fs.writeFileSync(file, values.map((v) => JSON.stringify(v)).join("\n") + "\n");
    return file;
}

/** Items whose answer is in the question, so labels and rationales mean something. */
function items(n: number): object[] {
    return Array.from({length: n}, (_, i) => ({
        id: `q${i}`,
        question: `Ben has ${i % 3 + 1} red balls. How many balls does Ben have?`,
        choices: [{label: "A", text: "one"}, {label: "B", text: "two"}, {label: "C", text: "three"}],
        answer: "ABC"[i % 3],
        rationale: `Ben has ${["one", "two", "three"][i % 3]} balls, so the answer is ${"ABC"[i % 3]}.`,
    }));
}

test.serial("the installed tree: no install scripts, no build, the platform binary present, no compiler reachable", (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const pkg = JSON.parse(fs.readFileSync(path.join(project, "node_modules", "ppc-gpt", "package.json"), "utf8")) as
        {scripts?: Record<string, string>; optionalDependencies: Record<string, string>; version: string};
    t.deepEqual(Object.keys(pkg.scripts ?? {}).filter((s) => /^(pre|post)?install$/.test(s)), []);
    t.is(pkg.optionalDependencies["@ppc-gpt/linux-x64"], pkg.version);
    t.is(pkg.optionalDependencies["@ppc-gpt/linux-x64-cuda"], pkg.version);
    t.false(fs.existsSync(path.join(project, "node_modules", "ppc-gpt", "build")));
    const platform = path.join(project, "node_modules", "@ppc-gpt", "linux-x64");
    t.true(fs.existsSync(path.join(platform, "ppc_gpt.node")));
    const record = JSON.parse(fs.readFileSync(path.join(platform, "ppc_gpt.json"), "utf8")) as {cuda: unknown; cpu: string; bundled: string[]};
    t.is(record.cuda, null);
    t.is(record.cpu, "portable");
    for (const lib of record.bundled)
        t.true(fs.existsSync(path.join(platform, lib)), lib);
    // The sources and build script travel in the main package, for `ppc-gpt build`.
    t.true(fs.existsSync(path.join(project, "node_modules", "ppc-gpt", "native", "CMakeLists.txt")));
    t.true(fs.existsSync(path.join(project, "node_modules", "ppc-gpt", "scripts", "build-native.mjs")));
    const env = cleanEnv(path.join(root, "bin-install"), path.join(root, "cache-install"));
    for (const tool of ["cmake", "g++", "gcc", "c++", "cc", "make", "git", "nvcc"])
        t.false(commandRuns(tool, env), `${tool} must not be reachable`);
    t.true(commandRuns("node", env));
    for (const m of tarballs.manifest)
        t.log(`${m.file}: ${(m.size / 1048576).toFixed(1)} MiB packed, ${(m.unpackedSize / 1048576).toFixed(1)} MiB unpacked`);
});

for (const nodeMajor of [0, 24]) {
    const title = nodeMajor ? `Node ${nodeMajor}` : `Node ${process.versions.node.split(".")[0]} (this one)`;
    test(`${title}: doctor, inspect, prune, bi, eval and train through the installed package, CLI and library`, async (t) => {
        if (!hasShared)
            return t.pass("shared fixtures absent");
        const nodeBinary = nodeMajor ? node24Binary : process.execPath;
        const work = path.join(root, `work-${nodeMajor}`);
        const bin = toolsOnlyBin(path.join(work, "bin"), nodeBinary);
        const env = cleanEnv(bin, path.join(work, "cache"));
        const cli = (args: string[]) => run(path.join(project, "node_modules", ".bin", "ppc-gpt"), args, project, env);
        const json = (r: {code: number; stdout: string; stderr: string}) => {
            t.is(r.code, 0, r.stderr);
            return JSON.parse(r.stdout) as Record<string, any>;
        };

        const version = await run(path.join(bin, "node"), ["--version"], project, env);
        t.is(version.stdout.trim().split(".")[0], `v${nodeMajor || process.versions.node.split(".")[0]}`);

        // The loader picks the CPU platform package; the CUDA one was never installed (not published / offline).
        const doctor = json(await cli(["doctor", "--json"]));
        t.true(doctor.ok);
        t.is(doctor.native.chosen.source, "platform package");
        t.is(doctor.native.chosen.label, "@ppc-gpt/linux-x64");
        t.is(doctor.native.chosen.path, path.join(project, "node_modules", "@ppc-gpt", "linux-x64", "ppc_gpt.node"));
        t.is(doctor.versions.node, (await run(path.join(bin, "node"), ["-p", "process.versions.node"], project, env)).stdout.trim());
        const cudaPackage = doctor.native.candidates.find((c: {label: string}) => c.label === "@ppc-gpt/linux-x64-cuda");
        t.is(cudaPackage.status, "missing");
        t.false(doctor.native.systemInfo.cuda);

        // inspect: the shared README's facts about stories260K.
        const info = json(await cli(["inspect", stories260K, "--json"]));
        t.is(info.blockCount, 5);
        t.is(info.parameters.total, 292_800);

        // prune: two deepest blocks out; each removed block's parameters gone.
        const pruned = path.join(work, "pruned.gguf");
        json(await cli(["prune", stories260K, "--strategy", "top", "--count", "2", "-o", pruned, "--json"]));
        const after = json(await cli(["inspect", pruned, "--json"]));
        t.is(after.blockCount, 3);
        const perLayer = (info.parameters.perLayer as {parameters: number}[]).map((l) => l.parameters);
        t.is(after.parameters.total, info.parameters.total - perLayer[3] - perLayer[4]);
        t.deepEqual((after.parameters.perLayer as {originalLayer: number}[]).map((l) => l.originalLayer), [0, 1, 2]);

        // bi: by CLI and by library import of the installed package, the same scores.
        const data = writeJsonl(path.join(work, "items.jsonl"), items(12));
        const bi = json(await cli(["bi", stories260K, "--data", data, "--json", "--threads", "2"]));
        t.is(bi.bi_label.length, 5);
        t.true((bi.bi_label as number[]).every((v) => v > 0 && v < 2));
        const script = path.join(project, `library-${nodeMajor}.mjs`);
        fs.writeFileSync(script, `
import {blockInfluence, inspectModel, loadModel, nativeSelection, readTaskItems} from "ppc-gpt";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
const model = await loadModel(process.argv[2], {threads: 2});
const report = await blockInfluence(model, await readTaskItems(process.argv[3]));
const text = "Once upon a time, Lily saw a big red ball.";
const tokens = Array.from(model.tokenize(text, {addSpecial: false}));
model.close();
const inspection = await inspectModel(process.argv[2]);
// node-llama-cpp (synth's embedded generator) with its install script skipped: its prebuilt CPU binary.
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false});
const nlcModel = await llama.loadModel({modelPath: process.argv[2]});
const nlcTokens = Array.from(nlcModel.tokenize(text));
await nlcModel.dispose();
// The federated layer is its own entry point (it loads Fastify, libsql and pg; "ppc-gpt" does not).
const federated = await import("ppc-gpt/federated");
process.stdout.write(JSON.stringify({bi: report.bi_label, layers: inspection.blockCount, chosen: nativeSelection()?.chosen?.label,
    tokens, nlcTokens, federated: [typeof federated.startFederatedServer, typeof federated.FederatedClient, typeof federated.startFlServer]}));
`);
        const lib = json(await run(path.join(bin, "node"), [script, stories260K, data], project, env));
        t.is(lib.chosen, "@ppc-gpt/linux-x64");
        t.is(lib.layers, 5);
        t.true(lib.tokens.length > 5);
        t.deepEqual(lib.nlcTokens, lib.tokens);
        t.deepEqual(lib.federated, ["function", "function", "function"]);
        (lib.bi as number[]).forEach((v, i) => t.true(Math.abs(v - bi.bi_label[i]) <= 1e-9 * Math.max(1, Math.abs(v)), `layer ${i}`));

        // eval: six ARC-Easy items scored; every choice's log-likelihood a finite negative number.
        const evalOut = path.join(work, "eval.jsonl");
        const evalResult = json(await cli(["eval", stories260K, "--task", "arc-easy", "--data",
            sharedPath("data", "arc", "ARC-Easy-Test.jsonl"), "--limit", "6", "--threads", "2", "-o", evalOut, "--json"]));
        t.is(evalResult.n, 6);
        const rows = fs.readFileSync(evalOut, "utf8").trim().split("\n").map((l) => JSON.parse(l) as {loglikelihoods: number[]});
        t.is(rows.length, 6);
        t.true(rows.every((r) => r.loglikelihoods.length >= 3 && r.loglikelihoods.every((x) => Number.isFinite(x) && x < 0)));

        // train: two optimizer steps write an adapter over every projection of the 5 blocks.
        const adapter = path.join(work, "adapter.gguf");
        const train = json(await cli(["train", stories260K, "--data", data, "-o", adapter, "--steps", "2", "--batch", "4",
            "--lr", "1e-3", "--micro-batch-tokens", "160", "--threads", "2", "--json"]));
        t.is(train.steps, 2);
        t.true((train.history as {loss: number}[]).every((h) => Number.isFinite(h.loss) && h.loss > 0));
        t.true(fs.statSync(adapter).size > 0);
    });
}
