#!/usr/bin/env node
// Builds the native addon (build/Release/ppc_gpt.node) with cmake-js, unless a usable binary is
// already there (a prebuilt one in prebuilds/, or an earlier build). Runs as the package's install
// script; `npm run build:native` forces a rebuild.
//
// Environment:
//   PPC_CUDA=1            build the CUDA backend and ppc-gpt's kernels (needs nvcc)
//   PPC_CUDA_ARCHS=...    CUDA architectures, default "75;80;86;89;90" ("70" needs CUDA <= 12)
//   PPC_CPU=portable|baseline|native   CPU code generation (default portable: AVX2/FMA/F16C)
//   PPC_BUILD_JOBS=N      parallel compile jobs (default: number of CPUs)
//   PPC_FROM_SOURCE=1     ignore prebuilt binaries
//   PPC_BUILD_DIR=dir     build folder (default build/; the addon is looked up in build/Release)
import {createRequire} from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {ensureLlamaSource} from "./llama-source.mjs";

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const force = process.argv.includes("--force");
const env = process.env;

function loads(file) {
    try {
        require(file);
        return true;
    } catch (err) {
        console.error(`ppc-gpt: ${path.relative(root, file)} does not load here (${err.message.split("\n")[0]})`);
        return false;
    }
}

const buildDir = path.resolve(root, env.PPC_BUILD_DIR ?? "build");
const built = path.join(buildDir, "Release", "ppc_gpt.node");
const prebuilt = path.join(root, "prebuilds", `${process.platform}-${process.arch}`, "ppc_gpt.node");
if (!force && env.PPC_FROM_SOURCE !== "1" && fs.existsSync(prebuilt) && loads(prebuilt)) {
    console.error(`ppc-gpt: using prebuilt ${path.relative(root, prebuilt)}`);
    process.exit(0);
}
const llamaDir = ensureLlamaSource(path.join(root, ".cache"));

/** The llama.cpp tree an existing build was configured with (a new patch set means a new tree). */
function configuredLlamaDir() {
    try {
        const cache = fs.readFileSync(path.join(buildDir, "CMakeCache.txt"), "utf8");
        return /^PPC_LLAMA_DIR:PATH=(.*)$/m.exec(cache)?.[1];
    } catch {
        return undefined;
    }
}

if (!force && fs.existsSync(built) && configuredLlamaDir() === llamaDir && loads(built)) {
    console.error(`ppc-gpt: native addon already built (${path.relative(root, built)}); npm run build:native rebuilds it`);
    process.exit(0);
}

const cpu = env.PPC_CPU ?? "portable";
if (!["portable", "baseline", "native"].includes(cpu)) {
    console.error(`ppc-gpt: PPC_CPU must be portable, baseline or native (got "${cpu}")`);
    process.exit(2);
}
const cuda = env.PPC_CUDA === "1" || env.PPC_CUDA === "ON";
const jobs = Number(env.PPC_BUILD_JOBS) || os.availableParallelism();

const cMakeOptions = {
    PPC_LLAMA_DIR: llamaDir,
    NODE_ADDON_API_DIR: path.dirname(require.resolve("node-addon-api")),
    PPC_CPU: cpu,
    PPC_CUDA: cuda ? "ON" : "OFF",
};
if (cuda)
    cMakeOptions.CMAKE_CUDA_ARCHITECTURES = env.PPC_CUDA_ARCHS ?? "75;80;86;89;90";

console.error(`ppc-gpt: building the native addon (cpu=${cpu}${cuda ? ", cuda" : ""}, ${jobs} jobs); this takes a few minutes`);
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
    // configure (re-applies the options to an existing build folder, e.g. a new llama.cpp tree),
    // then an incremental build.
    await buildSystem.configure();
    await buildSystem.build();
} catch (err) {
    console.error(`ppc-gpt: native build failed (${err.message}); it needs cmake >= 3.19, a C++17 compiler ` +
        "and git (and nvcc with PPC_CUDA=1)");
    process.exit(1);
}
console.error(`ppc-gpt: native addon built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
