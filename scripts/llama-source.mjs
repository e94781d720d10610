// Materialises the llama.cpp source tree that the pinned node-llama-cpp was built from.
// node-llama-cpp ships it as llama/gitRelease.bundle (a git bundle): cloning it needs no network.
// The same patches that node-llama-cpp applies when it builds from source are applied here, so the
// addon and node-llama-cpp run one llama.cpp. ppc-gpt's own additive patches (native/patches/*.diff,
// e.g. the LoRA training step, one patch per change) are applied after them; node-llama-cpp's
// binary is unaffected.
import {createHash} from "node:crypto";
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

/** Directory of the installed node-llama-cpp package. */
export function nodeLlamaCppDir() {
    // The package's "exports" hides package.json: resolve its entry point and walk up.
    let dir = path.dirname(fileURLToPath(import.meta.resolve("node-llama-cpp")));
    while (!fs.existsSync(path.join(dir, "package.json")) || path.basename(dir) !== "node-llama-cpp") {
        const parent = path.dirname(dir);
        if (parent === dir)
            throw new Error("cannot locate the node-llama-cpp package directory");
        dir = parent;
    }
    return dir;
}

const ppcPatchDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "native", "patches");

/**
 * What each of ppc-gpt's patches introduces, to tell whether the llama.cpp source already has it
 * (merged upstream, or this tree was patched before): node-llama-cpp's `canSkip()` of its
 * llama/patches, as a grep. `includes`: every line must be in the file; `excludes`: the line the
 * patch replaces is gone from the file. A patch that the probe says is there is skipped; one that
 * is not there and does not apply stops the checkout. native/patches/README.md describes each.
 */
export const ppcPatchProbes = {
    "0001-cross-entropy-label-sums.diff": [
        {file: "ggml/src/ggml-cpu/ops.cpp", includes: "ggml_vec_scale_f32(nc, ds0, sum_s1/sum);"},
        {file: "ggml/src/ggml-cuda/cross-entropy-loss.cu", includes: "const float sm_scale = labels_sum/sum;"},
    ],
    "0002-view-backward-contiguous.diff": [
        {file: "ggml/src/ggml.c", includes: "ggml_acc_or_set(ctx, cgraph, isrc0, ggml_is_contiguous(grad) ? grad : ggml_cont(ctx, grad)"},
    ],
    "0003-lora-dropout.diff": [
        {file: "src/llama-graph.h", includes: "class llm_graph_lora_dropout"},
    ],
    "0004-train-attention.diff": [
        {file: "src/llama-graph.h", includes: "self_kq_mask_train"},
        {file: "ggml/src/ggml.c", includes: "const int64_t nr2 = tmp->ne[2] / src0->ne[2];"},
    ],
    "0005-train-step.diff": [
        {file: "include/llama.h", includes: "LLAMA_API int32_t llama_train_step("},
    ],
    "0006-packed-gemm.diff": [
        {file: "ggml/include/ggml.h", includes: "ggml_mul_mat_set_packed_gemm"},
        {file: "src/llama-context.cpp", includes: "ggml_mul_mat_set_packed_gemm(node);"},
    ],
    "0007-cpu-profile.diff": [
        {file: "ggml/src/ggml-cpu/ggml-cpu.c", includes: "GGML_CPU_PROFILE"},
        {file: "src/llama-context.cpp", includes: "llama_train_profile"},
    ],
    "0008-cuda-11.8-no-pdl.diff": [
        {file: "ggml/src/ggml-cuda/common.cuh", excludes: "    (CUDART_VERSION >= 12030 || (!(defined(_MSC_VER) && !defined(__clang__)) && CUDART_VERSION >= 11080))"},
    ],
};

/**
 * Whether the source that `read(file)` returns (a file's text, or undefined where it is missing)
 * already has the change of patch `name`; false for a patch without a probe.
 */
export function sourceHasPatch(name, read) {
    const probes = ppcPatchProbes[name];
    if (!probes)
        return false;
    return probes.every(({file, includes, excludes}) => {
        const text = read(file);
        if (text === undefined)
            return false;
        return includes !== undefined ? text.includes(includes) : !text.includes(excludes);
    });
}

/** The text of `file` in the tree at `dir`, undefined where it is missing. */
function readSource(dir, file) {
    try {
        return fs.readFileSync(path.join(dir, file), "utf8");
    } catch {
        return undefined;
    }
}

/** ppc-gpt's patches, in order, and a hash of their names and contents (part of the checkout's name). */
function ppcPatches() {
    const names = fs.existsSync(ppcPatchDir) ? fs.readdirSync(ppcPatchDir).filter((f) => f.endsWith(".diff")).sort() : [];
    const hash = createHash("sha256");
    for (const name of names)
        hash.update(name).update("\0").update(fs.readFileSync(path.join(ppcPatchDir, name))).update("\0");
    return {names, hash: hash.digest("hex").slice(0, 12)};
}

function git(args, cwd) {
    return execFileSync("git", args, {cwd, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8"}).trim();
}

/**
 * Returns the path of a llama.cpp checkout under `cacheDir`, cloning it from the bundle when it is
 * missing or was cloned from another node-llama-cpp version.
 */
export function ensureLlamaSource(cacheDir, log = console.error) {
    const nlcDir = nodeLlamaCppDir();
    const nlcVersion = JSON.parse(fs.readFileSync(path.join(nlcDir, "package.json"), "utf8")).version;
    const bundle = path.join(nlcDir, "llama", "gitRelease.bundle");
    if (!fs.existsSync(bundle))
        throw new Error(`node-llama-cpp ${nlcVersion} has no llama/gitRelease.bundle at ${bundle}; ` +
            "ppc-gpt needs the llama.cpp source it ships");

    const ppc = ppcPatches();
    // A changed patch set gets a checkout of its own, so that a stale one is never built.
    const dest = path.join(cacheDir, ppc.names.length ? `llama.cpp-${nlcVersion}-ppc-${ppc.hash}` : `llama.cpp-${nlcVersion}`);
    const stamp = path.join(dest, ".ppc-gpt-source.json");
    if (fs.existsSync(stamp))
        return dest;

    fs.mkdirSync(cacheDir, {recursive: true});
    const tmp = `${dest}.tmp-${process.pid}`;
    fs.rmSync(tmp, {recursive: true, force: true});
    log(`ppc-gpt: cloning llama.cpp from ${path.relative(process.cwd(), bundle) || bundle}`);
    git(["clone", "--quiet", bundle, tmp]);

    const patchDir = path.join(nlcDir, "llama", "patches");
    const applied = [];
    if (fs.existsSync(patchDir)) {
        for (const name of fs.readdirSync(patchDir).filter((f) => f.endsWith(".diff")).sort()) {
            const patch = path.join(patchDir, name);
            try {
                git(["apply", "--check", "--ignore-whitespace", patch], tmp);
            } catch {
                // Already in the source (merged upstream) or not applicable: node-llama-cpp skips it too.
                log(`ppc-gpt: patch ${name} does not apply, skipped`);
                continue;
            }
            git(["apply", "--ignore-whitespace", patch], tmp);
            applied.push(name);
        }
    }
    const ppcApplied = [], ppcSkipped = [];
    for (const name of ppc.names) {
        if (sourceHasPatch(name, (file) => readSource(tmp, file))) {
            log(`ppc-gpt: llama.cpp already has native/patches/${name}, skipped`);
            ppcSkipped.push(name);
            continue;
        }
        try {
            git(["apply", path.join(ppcPatchDir, name)], tmp);
            ppcApplied.push(name);
        } catch (err) {
            fs.rmSync(tmp, {recursive: true, force: true});
            throw new Error(`ppc-gpt patch native/patches/${name} does not apply to llama.cpp from node-llama-cpp ` +
                `${nlcVersion}: ${(err.stderr ?? err.message).toString().trim()}`);
        }
    }
    const commit = git(["rev-parse", "HEAD"], tmp);
    fs.writeFileSync(path.join(tmp, ".ppc-gpt-source.json"),
        JSON.stringify({nodeLlamaCpp: nlcVersion, commit, patches: applied, ppcPatches: ppcApplied, ppcPatchesSkipped: ppcSkipped,
            ppcPatchHash: ppc.hash},
            null, 2) + "\n");
    fs.rmSync(dest, {recursive: true, force: true});
    fs.renameSync(tmp, dest);
    return dest;
}
