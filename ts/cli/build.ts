import {spawn} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {Command} from "commander";
import {nvidiaGpus} from "../host.js";
import {packageRoot, probeInChild, userBuildDir, userCacheDir} from "../native-loader.js";
import {printJson, UsageError} from "./output.js";
import {tableOption} from "./options.js";

/** "70,80,90" or "70-real;90": CMake CUDA architectures; "native" builds for the GPUs here. */
export function parseCudaArchs(text: string): string[] {
    const archs = text.split(/[,;]/).map((s) => s.trim()).filter(Boolean);
    if (archs.length === 0)
        throw new UsageError("--cuda-archs: give at least one architecture, e.g. 70,80,90");
    for (const a of archs) {
        if (a !== "native" && !/^\d{2,3}[a-z]?(-real|-virtual)?$/.test(a))
            throw new UsageError(`--cuda-archs: "${a}" is not a CUDA architecture (e.g. 70, 86, 90-real, 90-virtual, native)`);
    }
    return archs;
}

function onPath(names: string[]): string | undefined {
    for (const dir of (process.env.PATH ?? "").split(path.delimiter).filter(Boolean)) {
        for (const name of names) {
            if (fs.existsSync(path.join(dir, name)))
                return name;
        }
    }
    return undefined;
}

/** Tools the build needs that are not on PATH. */
function missingTools(cuda: boolean): string[] {
    const missing: string[] = [];
    if (!onPath(["cmake"]))
        missing.push("cmake (>= 3.19)");
    if (!process.env.CXX && !onPath(["c++", "g++", "clang++"]))
        missing.push("a C++17 compiler (g++ >= 10 or clang++)");
    if (!onPath(["git"]))
        missing.push("git");
    if (cuda && !process.env.CUDACXX && !onPath(["nvcc"]))
        missing.push("nvcc (set CUDACXX or put the CUDA toolkit's bin/ on PATH)");
    return missing;
}

interface BuildOptions {
    cuda?: boolean;
    cudaArchs?: string;
    cpu: string;
    jobs?: string;
    json?: boolean;
}

async function runBuild(opts: BuildOptions): Promise<void> {
    if (!["portable", "native", "baseline"].includes(opts.cpu))
        throw new UsageError(`--cpu must be portable, native or baseline (got "${opts.cpu}")`);
    if (opts.cudaArchs !== undefined && !opts.cuda)
        throw new UsageError("--cuda-archs needs --cuda");
    if (opts.jobs !== undefined && !/^[1-9]\d*$/.test(opts.jobs))
        throw new UsageError(`--jobs must be a positive integer (got "${opts.jobs}")`);
    let archs = opts.cudaArchs !== undefined ? parseCudaArchs(opts.cudaArchs) : undefined;
    if (opts.cuda && !archs) {
        // Default: real code for exactly the GPUs here; the build script's release list where none is visible.
        const caps = [...new Set(nvidiaGpus().map((g) => g.computeCapability).filter((c): c is string => Boolean(c)))];
        if (caps.length)
            archs = caps.map((c) => `${c.replace(".", "")}-real`);
    }
    const missing = missingTools(Boolean(opts.cuda));
    if (missing.length)
        throw new Error(`ppc-gpt build needs ${missing.join(", ")} on PATH`);

    const variant = opts.cuda ? "cuda" : "cpu";
    const out = userBuildDir(variant);
    const args = [path.join(packageRoot, "scripts", "build-native.mjs"), "--force", "--out", out,
        "--source-cache", path.join(userCacheDir(), "src"), "--cpu", opts.cpu];
    if (opts.cuda)
        args.push("--cuda");
    if (archs)
        args.push("--cuda-archs", archs.join(";"));
    if (opts.jobs)
        args.push("--jobs", opts.jobs);
    if (opts.json)
        process.stderr.write(JSON.stringify({event: "start", stage: "build", variant, out, archs: archs ?? null}) + "\n");
    const started = Date.now();
    // The build's own log goes to stderr: stdout stays for the result (--json).
    const code = await new Promise<number>((resolve, reject) => {
        const child = spawn(process.execPath, args, {stdio: ["ignore", process.stderr, process.stderr]});
        child.on("error", reject);
        child.on("exit", (status, signal) => resolve(status ?? (signal ? 1 : 0)));
    });
    if (code !== 0)
        throw new Error(`native build failed (exit ${code}); its log is above`);
    const binary = path.join(out, "Release", "ppc_gpt.node");
    const probe = probeInChild(binary, Boolean(opts.cuda));
    const result = {path: binary, variant, seconds: Math.round((Date.now() - started) / 1000), loads: probe.ok, verdict: probe.reason};
    if (opts.json)
        printJson(result);
    else
        process.stdout.write(`built ${binary} in ${result.seconds} s\n  ${probe.ok ? "usable here" : "NOT usable here"}: ${probe.reason}\n` +
            (probe.ok ? "ppc-gpt uses it from now on (`ppc-gpt doctor` shows the choice).\n" : ""));
    if (!probe.ok)
        process.exitCode = 1;
}

export function buildCommand(): Command {
    return new Command("build")
        .description("Compile the native addon for this machine into the user cache folder, where ppc-gpt finds it next time")
        .option("--cuda", "build the CUDA backend (needs nvcc and cuBLAS)")
        .option("--cuda-archs <list>", "CUDA architectures, e.g. 70,80,90 (default: the GPUs here, else 70,75,80,90 real code)")
        .option("--cpu <mode>", "CPU code: portable (AVX2/FMA/F16C), native (-march=native) or baseline (SSE only)", "portable")
        .option("--jobs <n>", "parallel compile jobs (default: CPU count)")
        .addOption(tableOption("--json", "build"))
        .addHelpText("after", `
The build goes to $XDG_CACHE_HOME/ppc-gpt (default ~/.cache/ppc-gpt; PPC_GPT_CACHE_DIR overrides),
in <version>/cpu or <version>/cuda, so a read-only node_modules is fine. The loader prefers these
builds over the platform packages. Needs cmake >= 3.19, a C++17 compiler and git; llama.cpp's
source comes from node-llama-cpp's bundle (no network). A CPU build takes 2-5 minutes, a CUDA build
much longer per architecture.

Examples:
  ppc-gpt build                           # portable CPU build
  ppc-gpt build --cpu native              # fastest on this CPU only
  ppc-gpt build --cuda                    # CUDA for the GPUs in this machine
  ppc-gpt build --cuda --cuda-archs 70,80,90
  ppc-gpt doctor                          # shows which binary is used`)
        .action(async (opts: BuildOptions) => runBuild(opts));
}
