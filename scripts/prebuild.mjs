#!/usr/bin/env node
// Packages a prebuilt addon with prebuildify: prebuilds/<platform>-<arch>/ppc_gpt.node, which the
// install script uses instead of compiling when it loads on the target machine (and falls back to a
// source build when it does not, e.g. a CUDA binary on a machine without the CUDA runtime).
//
//   node scripts/prebuild.mjs                                 # CPU binary for this platform
//   PPC_CUDA=1 PPC_CUDA_ARCHS=70 CC=gcc-11 CXX=g++-11 CUDACXX=/usr/bin/nvcc node scripts/prebuild.mjs
//                                                             # V100 binary (CUDA 11.8 builds sm_70)
//
// prebuildify drives a node-gyp-style builder; this same script plays that part when prebuildify
// calls it with "rebuild", running the cmake-js build in scripts/build-native.mjs.
import {spawnSync} from "node:child_process";
import {createRequire} from "node:module";
import path from "node:path";
import {fileURLToPath} from "node:url";

const require = createRequire(import.meta.url);
const self = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(self), "..");

function run(cmd, args) {
    const r = spawnSync(cmd, args, {cwd: root, stdio: "inherit"});
    if (r.status !== 0)
        process.exit(r.status ?? 1);
}

if (process.argv.includes("rebuild")) {
    run(process.execPath, [path.join(root, "scripts", "build-native.mjs"), "--force"]);
} else {
    const prebuildify = path.join(path.dirname(require.resolve("prebuildify/package.json")), "bin.js");
    run(process.execPath, [prebuildify, "--napi", "--strip", "--name", "ppc_gpt", "--node-gyp", self]);
}
