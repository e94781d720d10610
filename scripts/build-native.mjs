#!/usr/bin/env node
// Builds the native addon (<out>/Release/ppc_gpt.node) with cmake-js, and writes its build record
// (<out>/Release/ppc_gpt.json: CPU features it needs, CUDA architectures, llama.cpp commit) that
// the loader (ts/native.ts) and scripts/pack-packages.mjs read.
//
// Never an install script: a checkout builds with `npm run build:native` (or `npm install`, whose
// `prepare` builds when build/Release is missing); an installed package builds with
// `npx ppc-gpt build`, which calls this script with --out in the user's cache folder.
//
//   node scripts/build-native.mjs [--force] [--if-missing] [--out DIR] [--source-cache DIR]
//                                 [--cpu portable|baseline|native] [--cuda] [--cuda-archs 70,80,90] [--jobs N]
//
// Environment (the flags win):
//   PPC_CUDA=1            --cuda: the CUDA backend and ppc-gpt's kernels (needs nvcc and cuBLAS)
//   PPC_CUDA_ARCHS=...    --cuda-archs (default: 70-real;75-real;80-real;90-real, without 70 on CUDA >= 13)
//   PPC_CPU=...           --cpu (default portable: AVX2/FMA/F16C)
//   PPC_BUILD_JOBS=N      --jobs (default: number of CPUs)
//   PPC_BUILD_DIR=dir     --out (default build/)
import {execFileSync} from "node:child_process";
import {createHash} from "node:crypto";
import {createRequire} from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {ensureLlamaSource} from "./llama-source.mjs";

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const env = process.env;

/** Minimal flag parser: --name value, --name=value, boolean --name. */
function parseArgs(argv) {
    const flags = new Map();
    const booleans = new Set(["--force", "--if-missing", "--cuda"]);
    for (let i = 0; i < argv.length; i++) {
        const [name, inline] = argv[i].split(/=(.*)/s, 2);
        if (booleans.has(name))
            flags.set(name, true);
        else if (["--out", "--source-cache", "--cpu", "--cuda-archs", "--jobs"].includes(name))
            flags.set(name, inline ?? argv[++i]);
        else {
            console.error(`ppc-gpt: build-native: unknown argument "${argv[i]}"`);
            process.exit(2);
        }
    }
    return flags;
}

const flags = parseArgs(process.argv.slice(2));
const force = flags.has("--force");
const buildDir = path.resolve(root, flags.get("--out") ?? env.PPC_BUILD_DIR ?? "build");
const sourceCache = path.resolve(root, flags.get("--source-cache") ?? ".cache");
const cpu = flags.get("--cpu") ?? env.PPC_CPU ?? "portable";
const cuda = flags.has("--cuda") || env.PPC_CUDA === "1" || env.PPC_CUDA === "ON";
const jobs = Number(flags.get("--jobs") ?? env.PPC_BUILD_JOBS) || os.availableParallelism();
const built = path.join(buildDir, "Release", "ppc_gpt.node");
const record = path.join(buildDir, "Release", "ppc_gpt.json");

if (!["portable", "baseline", "native"].includes(cpu)) {
    console.error(`ppc-gpt: --cpu / PPC_CPU must be portable, baseline or native (got "${cpu}")`);
    process.exit(2);
}

function loads(file) {
    try {
        require(file);
        return true;
    } catch (err) {
        console.error(`ppc-gpt: ${path.relative(root, file)} does not load here (${err.message.split("\n")[0]})`);
        return false;
    }
}

// --if-missing (the checkout's `prepare`): an existing build that loads is kept as it is.
if (flags.has("--if-missing") && !force && fs.existsSync(built) && loads(built)) {
    console.error(`ppc-gpt: native addon present (${path.relative(root, built)}); npm run build:native rebuilds it`);
    process.exit(0);
}

const llamaDir = ensureLlamaSource(sourceCache);

/** The llama.cpp tree and CUDA switch an existing build was configured with. */
function configured() {
    try {
        const cache = fs.readFileSync(path.join(buildDir, "CMakeCache.txt"), "utf8");
        return {llamaDir: /^PPC_LLAMA_DIR:PATH=(.*)$/m.exec(cache)?.[1], cuda: /^PPC_CUDA:BOOL=ON$/m.test(cache)};
    } catch {
        return undefined;
    }
}

/** The source hash in the existing build record (undefined without one). */
function recordedSourceHash() {
    try {
        return JSON.parse(fs.readFileSync(record, "utf8")).sourceHash;
    } catch {
        return undefined;
    }
}

const previous = configured();
// kept only when built from these native/ sources (an incremental build otherwise: the record must match)
if (!force && fs.existsSync(built) && fs.existsSync(record) && previous?.llamaDir === llamaDir && previous.cuda === cuda &&
    recordedSourceHash() === nativeSourceHash(path.join(root, "native")) && loads(built)) {
    console.error(`ppc-gpt: native addon already built (${path.relative(root, built)}); --force rebuilds it`);
    process.exit(0);
}

/** nvcc's version ("11.8"), from CUDACXX or PATH; undefined without nvcc. */
function nvccVersion() {
    try {
        const out = execFileSync(env.CUDACXX || "nvcc", ["--version"], {encoding: "utf8", stdio: ["ignore", "pipe", "ignore"]});
        return /release (\d+\.\d+)/.exec(out)?.[1];
    } catch {
        return undefined;
    }
}

function versionAtLeast(version, major, minor) {
    const [a, b] = version.split(".").map(Number);
    return a > major || (a === major && b >= minor);
}

/** The release's architectures: real code for V100, T4, A100 (runs on every sm_8x) and H100; CUDA 13 dropped sm_70. */
function defaultCudaArchs(toolkit) {
    return toolkit && versionAtLeast(toolkit, 13, 0) ? "75-real;80-real;90-real" : "70-real;75-real;80-real;90-real";
}

const cMakeOptions = {
    PPC_LLAMA_DIR: llamaDir,
    NODE_ADDON_API_DIR: path.dirname(require.resolve("node-addon-api")),
    PPC_CPU: cpu,
    PPC_CUDA: cuda ? "ON" : "OFF",
};
let cudaRecord = null;
if (cuda) {
    const toolkit = nvccVersion();
    if (!toolkit) {
        console.error("ppc-gpt: --cuda needs nvcc (set CUDACXX or put it on PATH); see docs/install.md");
        process.exit(1);
    }
    const archs = (flags.get("--cuda-archs") ?? env.PPC_CUDA_ARCHS ?? defaultCudaArchs(toolkit)).replaceAll(",", ";");
    cMakeOptions.CMAKE_CUDA_ARCHITECTURES = archs;
    // Toolkits before 12.8 lack ggml's GGML_CUDA_COMPRESSION_MODE (-compress-mode); their fatbinary
    // still compresses every kernel image on request, which keeps the package under the registry's limit.
    if (!versionAtLeast(toolkit, 12, 8))
        cMakeOptions.CMAKE_CUDA_FLAGS = "-Xfatbin=-compress-all";
    cudaRecord = {toolkit, archs: archs.split(";").filter(Boolean)};
}

/** CPU features (as /proc/cpuinfo names them) that the generated code uses unconditionally. */
function requiredCpuFeatures() {
    if (process.arch !== "x64" || cpu === "baseline")
        return [];
    if (cpu === "portable")
        return ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"];
    // native: every relevant feature of the build machine may be used.
    const relevant = ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
        "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"];
    try {
        const flagsLine = /^flags\s*:(.*)$/m.exec(fs.readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "";
        const have = new Set(flagsLine.trim().split(/\s+/));
        return relevant.filter((f) => have.has(f));
    } catch {
        return relevant.slice(0, 6);
    }
}

console.error(`ppc-gpt: building the native addon into ${buildDir} (cpu=${cpu}` +
    `${cuda ? `, cuda ${cudaRecord.toolkit} for ${cudaRecord.archs.join(",")}` : ""}, ${jobs} jobs); this takes a few minutes` +
    `${cuda ? " (an hour or more with CUDA)" : ""}`);
const started = Date.now();
const {BuildSystem} = require("cmake-js");
const buildSystem = new BuildSystem({
    directory: path.join(root, "native"),
    out: buildDir,
    parallel: jobs,
    cMakeOptions,
});
// cmake-js decides "Node-API only" (headers from the node-api-headers package, nothing downloaded)
// from package.json next to CMakeLists.txt; ours is one folder up, so state it here.
buildSystem.options.isNodeApi = true;
try {
    // A build folder configured from another tree (a copied build/, another llama.cpp) starts clean.
    if (previous && previous.llamaDir !== llamaDir)
        fs.rmSync(path.join(buildDir, "CMakeCache.txt"), {force: true});
    // configure (re-applies the options to an existing build folder), then an incremental build.
    await buildSystem.configure();
    await buildSystem.build();
} catch (err) {
    console.error(`ppc-gpt: native build failed (${err.message}); it needs cmake >= 3.19, a C++17 compiler ` +
        "and git (and nvcc and cuBLAS with --cuda)");
    process.exit(1);
}

/**
 * A hash of every file under native/ (relative path and contents, in sorted order): the loader
 * compares it with the installed sources, so a user build of other sources is never used.
 * ts/native-loader.ts computes the same hash.
 */
function nativeSourceHash(dir) {
    const files = [];
    const walk = (d) => {
        for (const e of fs.readdirSync(d, {withFileTypes: true})) {
            const full = path.join(d, e.name);
            if (e.isDirectory())
                walk(full);
            else if (e.isFile())
                files.push(path.relative(dir, full).split(path.sep).join("/"));
        }
    };
    walk(dir);
    const hash = createHash("sha256");
    for (const rel of files.sort())
        hash.update(rel).update("\0").update(fs.readFileSync(path.join(dir, rel))).update("\0");
    return hash.digest("hex").slice(0, 16);
}

const source = JSON.parse(fs.readFileSync(path.join(llamaDir, ".ppc-gpt-source.json"), "utf8"));
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
const buildRecord = {
    name: pkg.name,
    version: pkg.version,
    napi: 8,
    platform: process.platform,
    arch: process.arch,
    cpu,
    cpuFeatures: requiredCpuFeatures(),
    cuda: cudaRecord,
    sourceHash: nativeSourceHash(path.join(root, "native")),
    llama: {commit: source.commit, nodeLlamaCpp: source.nodeLlamaCpp, patches: source.patches, ppcPatches: source.ppcPatches},
    builtAt: new Date().toISOString(),
    buildSeconds: Math.round((Date.now() - started) / 1000),
};
fs.writeFileSync(`${record}.tmp`, JSON.stringify(buildRecord, null, 2) + "\n");
fs.renameSync(`${record}.tmp`, record);
console.error(`ppc-gpt: native addon built in ${buildRecord.buildSeconds} s: ${built}`);
