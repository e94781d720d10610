// Chooses the native binary that works on this machine. Candidates, in order:
//   1. PPC_GPT_NATIVE (a path: loaded as it is, no fallback)
//   2. user builds from `ppc-gpt build` (<cache>/<version>/cuda, then cpu)
//   3. the checkout's source build (build/Release)
//   4. platform packages (@ppc-gpt/linux-x64-cuda, then @ppc-gpt/linux-x64)
//   5. prebuilds/<platform>-<arch> (older layout)
// A CUDA binary is used only where an NVIDIA driver, its GPU architectures and the CUDA libraries it
// needs are present, and after it loaded and saw a CUDA device in a child process (so a bad binary
// cannot crash the caller); that verdict is cached per binary (path, mtime, size) and host (driver,
// LD_LIBRARY_PATH, CUDA_VISIBLE_DEVICES). A CPU binary needs the CPU features its build record lists.
import {spawnSync} from "node:child_process";
import {createHash} from "node:crypto";
import fs from "node:fs";
import {createRequire} from "node:module";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {findSharedLibrary, missingCpuFeatures, nvidiaDriverGpus, nvidiaDriverVersion, nvidiaGpus} from "./host.js";
import {writeFileDurableSync} from "./durable-file.js";

export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** ppc_gpt.json beside a binary: written by scripts/build-native.mjs, completed by scripts/pack-packages.mjs. */
export interface NativeBuildRecord {
    name?: string;
    version?: string;
    cpu?: "portable" | "baseline" | "native";
    /** /proc/cpuinfo flags the code uses unconditionally. */
    cpuFeatures?: string[];
    /** null for a CPU build. */
    cuda?: {toolkit: string; archs: string[]; bundled?: string[]; required?: string[]} | null;
    /** Hash of the native/ sources it was built from (see nativeSourceHash). */
    sourceHash?: string;
    llama?: {commit?: string; nodeLlamaCpp?: string};
    builtAt?: string;
}

export type NativeSource = "PPC_GPT_NATIVE" | "user build" | "source build" | "platform package" | "prebuilt";

export interface NativeCandidate {
    path: string;
    source: NativeSource;
    /** e.g. "@ppc-gpt/linux-x64-cuda", "~/.cache/ppc-gpt/0.1.0/cpu". */
    label: string;
    record?: NativeBuildRecord;
    cuda: boolean;
}

export interface NativeVerdict extends NativeCandidate {
    status: "chosen" | "usable" | "rejected" | "missing" | "not checked";
    reason: string;
    /** The reason came from the verdict cache (no child process this time). */
    cached?: boolean;
}

export interface NativeSelection {
    chosen?: NativeVerdict;
    candidates: NativeVerdict[];
}

/** Where `ppc-gpt build` puts its builds and the loader its verdicts: PPC_GPT_CACHE_DIR, else XDG_CACHE_HOME/ppc-gpt or ~/.cache/ppc-gpt. */
export function userCacheDir(): string {
    if (process.env.PPC_GPT_CACHE_DIR)
        return path.resolve(process.env.PPC_GPT_CACHE_DIR);
    const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
    return path.join(base, "ppc-gpt");
}

let packageJson: {name: string; version: string} | undefined;

export function packageInfo(): {name: string; version: string} {
    packageJson ??= JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as {name: string; version: string};
    return packageJson;
}

/** The build folder of `ppc-gpt build` for this version and variant; the addon is <dir>/Release/ppc_gpt.node. */
export function userBuildDir(variant: "cpu" | "cuda"): string {
    return path.join(userCacheDir(), packageInfo().version, variant);
}

/** Platform packages for this platform, best first. */
export function platformPackageNames(): string[] {
    const base = `@ppc-gpt/${process.platform}-${process.arch}`;
    return process.platform === "linux" && process.arch === "x64" ? [`${base}-cuda`, base] : [base];
}

function readRecord(binary: string): NativeBuildRecord | undefined {
    try {
        return JSON.parse(fs.readFileSync(path.join(path.dirname(binary), "ppc_gpt.json"), "utf8")) as NativeBuildRecord;
    } catch {
        return undefined;
    }
}

/** A checkout's build/: CUDA or not from CMake's cache when no build record exists (older builds). */
function sourceBuildIsCuda(binary: string): boolean {
    try {
        return /^PPC_CUDA:BOOL=ON$/m.test(fs.readFileSync(path.join(path.dirname(binary), "..", "CMakeCache.txt"), "utf8"));
    } catch {
        return false;
    }
}

function candidate(file: string, source: NativeSource, label: string): NativeCandidate {
    const record = readRecord(file);
    const cuda = record ? Boolean(record.cuda) : source === "source build" ? sourceBuildIsCuda(file) : /cuda/.test(label);
    return {path: file, source, label, record, cuda};
}

export function nativeCandidates(): NativeCandidate[] {
    const list: NativeCandidate[] = [];
    if (process.env.PPC_GPT_NATIVE)
        list.push(candidate(path.resolve(process.env.PPC_GPT_NATIVE), "PPC_GPT_NATIVE", "PPC_GPT_NATIVE"));
    for (const variant of ["cuda", "cpu"] as const) {
        const dir = userBuildDir(variant);
        list.push(candidate(path.join(dir, "Release", "ppc_gpt.node"), "user build", dir));
    }
    list.push(candidate(path.join(packageRoot, "build", "Release", "ppc_gpt.node"), "source build", "build/Release"));
    const require = createRequire(import.meta.url);
    for (const name of platformPackageNames()) {
        let dir: string | undefined;
        try {
            dir = path.dirname(require.resolve(`${name}/package.json`));
        } catch {
            // not installed (another platform, or an optional dependency left out)
        }
        list.push(dir ? candidate(path.join(dir, "ppc_gpt.node"), "platform package", name)
            : {path: `${name} (not installed)`, source: "platform package", label: name, cuda: /cuda/.test(name)});
    }
    const prebuilt = path.join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`, "ppc_gpt.node");
    list.push(candidate(prebuilt, "prebuilt", "prebuilds/"));
    return list;
}

let sourceHashCache: string | null | undefined;

/**
 * A hash of every file under the package's native/ (relative path and contents, sorted), the same
 * as scripts/build-native.mjs records; null where the package has no sources.
 */
export function nativeSourceHash(): string | null {
    if (sourceHashCache !== undefined)
        return sourceHashCache;
    const dir = path.join(packageRoot, "native");
    const files: string[] = [];
    const walk = (d: string) => {
        for (const e of fs.readdirSync(d, {withFileTypes: true})) {
            const full = path.join(d, e.name);
            if (e.isDirectory())
                walk(full);
            else if (e.isFile())
                files.push(path.relative(dir, full).split(path.sep).join("/"));
        }
    };
    try {
        walk(dir);
    } catch {
        sourceHashCache = null;
        return null;
    }
    const hash = createHash("sha256");
    for (const rel of files.sort())
        hash.update(rel).update("\0").update(fs.readFileSync(path.join(dir, rel))).update("\0");
    sourceHashCache = hash.digest("hex").slice(0, 16);
    return sourceHashCache;
}

// ------------------------------------------------------------------ CUDA checks

/** Whether a GPU of compute capability `cc` ("8.6") can run code built for `archs` (CMake syntax). */
export function cudaArchsCover(archs: readonly string[], cc: string): boolean {
    const [major, minor] = cc.split(".").map(Number);
    const gpu = major * 10 + minor;
    for (const spec of archs) {
        const m = /^(\d+)([a-z]?)(?:-(real|virtual))?$/.exec(spec);
        if (!m)
            return true;  // "native", "all": not knowable here; the child process decides
        const arch = Number(m[1]);
        const real = m[3] !== "virtual";
        const ptx = m[3] !== "real";
        // SASS runs within its major version on equal or newer minors ("a" variants only on that exact GPU).
        if (real && Math.floor(arch / 10) === major && (m[2] ? arch === gpu : arch <= gpu))
            return true;
        // PTX is compiled by the driver for any newer GPU.
        if (ptx && arch <= gpu)
            return true;
    }
    return false;
}

/** Shared libraries a CUDA binary needs from the system (its record, else what ggml's CUDA backend links). */
function requiredCudaLibraries(c: NativeCandidate): string[] {
    const cuda = c.record?.cuda;
    if (cuda?.required)
        return cuda.required;
    const major = Number((cuda?.toolkit ?? "12").split(".")[0]);
    return ["libcuda.so.1", major === 11 ? "libcudart.so.11.0" : `libcudart.so.${major}`, `libcublas.so.${major}`];
}

const libraryHints: Record<string, string> = {
    "libcuda.so.1": "the NVIDIA driver",
    "libcublas": "cuBLAS (not bundled: e.g. apt install libcublas11, or pip install nvidia-cublas-cu11 and add its lib/ folder to LD_LIBRARY_PATH)",
    "libcublasLt": "cuBLAS (not bundled)",
    "libcudart": "the CUDA runtime",
};

function libraryHint(soname: string): string {
    const key = Object.keys(libraryHints).find((k) => soname.startsWith(k));
    return key ? libraryHints[key] : "a CUDA library";
}

/** Host facts that change a CUDA verdict: driver, visible devices, library search path. */
function hostFingerprint(): string {
    return [nvidiaDriverVersion() ?? "", nvidiaDriverGpus().join(","), process.env.CUDA_VISIBLE_DEVICES ?? "",
        process.env.LD_LIBRARY_PATH ?? "", process.versions.node].join("|");
}

interface CachedVerdict {
    ok: boolean;
    reason: string;
}

function verdictCacheFile(): string {
    return path.join(userCacheDir(), "native-verdicts.json");
}

function readVerdicts(): Record<string, CachedVerdict> {
    try {
        return JSON.parse(fs.readFileSync(verdictCacheFile(), "utf8")) as Record<string, CachedVerdict>;
    } catch {
        return {};
    }
}

/** Best effort (the cache folder may be read-only): written durably (durable-file.ts), newest 64 entries. */
function writeVerdict(key: string, verdict: CachedVerdict): void {
    try {
        const all = readVerdicts();
        delete all[key];
        all[key] = verdict;
        const kept = Object.fromEntries(Object.entries(all).slice(-64));
        const file = verdictCacheFile();
        fs.mkdirSync(path.dirname(file), {recursive: true});
        writeFileDurableSync(file, JSON.stringify(kept, null, 1) + "\n");
    } catch {
        // no cache: the next start probes again
    }
}

export interface ProbeResult {
    ok: boolean;
    reason: string;
    cudaDevices?: string[];
}

/**
 * Loads `binary` in a child Node process and asks it what it sees. A crash, a missing library or
 * (with `needCuda`) no CUDA device makes it unusable; the caller's process is never at risk.
 */
export function probeInChild(binary: string, needCuda: boolean, timeoutMs = 120_000): ProbeResult {
    const script = "const a = require(process.argv[1]); const s = a.systemInfo();" +
        "process.stdout.write(JSON.stringify({cuda: s.cuda, devices: s.devices.map((d) => d.name + ': ' + d.description)}));";
    const r = spawnSync(process.execPath, ["-e", script, binary], {encoding: "utf8", timeout: timeoutMs,
        env: {...process.env, PPC_GPT_NATIVE_PROBE: "1"}});
    const stderrTail = (r.stderr ?? "").trim().split("\n").filter(Boolean).slice(-1)[0] ?? "";
    if (r.error)
        return {ok: false, reason: `test load failed (${r.error.message})`};
    if (r.signal)
        return {ok: false, reason: `test load crashed (${r.signal})${stderrTail ? `: ${stderrTail}` : ""}`};
    if (r.status !== 0) {
        const message = /Error: (.*)/.exec(r.stderr ?? "")?.[1] ?? stderrTail;
        return {ok: false, reason: `does not load: ${message}`};
    }
    let info: {cuda: boolean; devices: string[]};
    try {
        info = JSON.parse(r.stdout) as typeof info;
    } catch {
        return {ok: false, reason: `test load printed no system info${stderrTail ? ` (${stderrTail})` : ""}`};
    }
    const cudaDevices = info.devices.filter((d) => /^CUDA/i.test(d));
    if (needCuda && (!info.cuda || cudaDevices.length === 0))
        return {ok: false, reason: `loads, but sees no CUDA device${stderrTail ? ` (${stderrTail})` : ""}`};
    return {ok: true, reason: needCuda ? `loads in a child process and sees ${cudaDevices.join("; ")}` : "loads in a child process",
        cudaDevices};
}

/** Whether a CUDA candidate can run here; the expensive part (child process) is cached. */
function checkCuda(c: NativeCandidate): {ok: boolean; reason: string; cached?: boolean} {
    // The kernel driver lists its GPUs in /proc; where it does not (WSL2's /dev/dxg, some containers and
    // VMs), nvidia-smi may still see one, and the child process decides.
    if (nvidiaDriverGpus().length === 0 && !fs.existsSync("/dev/dxg") && nvidiaGpus().length === 0)
        return {ok: false, reason: "no NVIDIA GPU here (no /proc/driver/nvidia/gpus entry, and nvidia-smi lists none)"};
    let stat: fs.Stats;
    try {
        stat = fs.statSync(c.path);
    } catch {
        return {ok: false, reason: "missing"};
    }
    const key = `${c.path}|${stat.mtimeMs}|${stat.size}|${hostFingerprint()}`;
    const cached = readVerdicts()[key];
    if (cached)
        return {...cached, cached: true};
    const verdict = checkCudaUncached(c);
    writeVerdict(key, verdict);
    return verdict;
}

function checkCudaUncached(c: NativeCandidate): CachedVerdict {
    const missing = requiredCudaLibraries(c).filter((lib) => !findSharedLibrary(lib, path.dirname(c.path)));
    if (missing.length)
        return {ok: false, reason: `needs ${missing.map((lib) => `${lib} (${libraryHint(lib)})`).join(", ")}: not beside the ` +
            "binary, on LD_LIBRARY_PATH or in ldconfig's cache"};
    const archs = c.record?.cuda?.archs;
    if (archs) {
        const gpus = nvidiaGpus().filter((g) => g.computeCapability);
        const uncovered = gpus.filter((g) => !cudaArchsCover(archs, g.computeCapability!));
        if (gpus.length && uncovered.length === gpus.length)
            return {ok: false, reason: `built for ${archs.join(",")}, which ${uncovered.map((g) => `${g.name} (sm_${g.computeCapability!
                .replace(".", "")})`).join(", ")} cannot run; \`npx ppc-gpt build --cuda\` builds for this GPU`};
    }
    return probeInChild(c.path, true);
}

// ------------------------------------------------------------------ selection

function checkCandidate(c: NativeCandidate): {ok: boolean; reason: string; cached?: boolean; missing?: boolean} {
    if (!fs.existsSync(c.path))
        return {ok: false, reason: c.path.endsWith("(not installed)") ? "not installed" : "missing", missing: true};
    // A user build is this installation's own: built from other sources (an edited checkout, another
    // copy of this version) it would not match the JavaScript that calls it.
    if (c.source === "user build") {
        const current = nativeSourceHash();
        if (!c.record)
            return {ok: false, reason: "no build record (ppc_gpt.json): run `ppc-gpt build` again"};
        if (current && c.record.sourceHash !== current)
            return {ok: false, reason: "built from other native sources than this package's: run `ppc-gpt build` again"};
    }
    const lacking = missingCpuFeatures(c.record?.cpuFeatures ?? []);
    if (lacking.length)
        return {ok: false, reason: `needs CPU features ${lacking.join(", ")}, which this CPU lacks`};
    if (c.cuda)
        return checkCuda(c);
    return {ok: true, reason: c.record?.cpuFeatures?.length ? `CPU build; this CPU has ${c.record.cpuFeatures.join(", ")}` : "CPU build"};
}

function verdict(c: NativeCandidate, status: NativeVerdict["status"], reason: string, cached?: boolean): NativeVerdict {
    return {...c, status, reason, ...(cached ? {cached} : {})};
}

export interface SelectOptions {
    /** Load the chosen binary in this process (the default); the loaded module is returned. */
    load?: boolean;
    /** Check every candidate after the chosen one too (doctor), CPU ones by a child process. */
    checkAll?: boolean;
}

/**
 * Walks the candidates in order and returns the first that works here (loaded, unless
 * `load: false`), with a verdict for every candidate.
 */
export function selectNative(options: SelectOptions = {}): NativeSelection & {module?: unknown} {
    const load = options.load ?? true;
    const require = createRequire(import.meta.url);
    const candidates = nativeCandidates();
    const verdicts: NativeVerdict[] = [];
    let chosen: NativeVerdict | undefined;
    let module: unknown;
    for (const c of candidates) {
        if (chosen) {
            if (!options.checkAll) {
                verdicts.push(verdict(c, "not checked", `${chosen.label} comes first`));
                continue;
            }
            const check = checkCandidate(c);
            if (check.missing || !check.ok) {
                verdicts.push(verdict(c, check.missing ? "missing" : "rejected", check.reason, check.cached));
                continue;
            }
            const probe = c.cuda ? check : probeInChild(c.path, false);
            verdicts.push(verdict(c, probe.ok ? "usable" : "rejected", probe.ok ? `usable, but ${chosen.label} comes first` : probe.reason));
            continue;
        }
        if (c.source === "PPC_GPT_NATIVE") {
            // The user's explicit choice: load it or fail, never silently use another binary.
            if (!fs.existsSync(c.path))
                throw new Error(`PPC_GPT_NATIVE=${process.env.PPC_GPT_NATIVE}: no such file`);
            if (load) {
                try {
                    module = require(c.path);
                } catch (err) {
                    throw new Error(`PPC_GPT_NATIVE=${c.path} does not load: ${(err as Error).message.split("\n")[0]}`);
                }
            }
            chosen = verdict(c, "chosen", "PPC_GPT_NATIVE names it");
            verdicts.push(chosen);
            continue;
        }
        const check = checkCandidate(c);
        if (!check.ok) {
            verdicts.push(verdict(c, check.missing ? "missing" : "rejected", check.reason, check.cached));
            continue;
        }
        if (load) {
            try {
                module = require(c.path);
            } catch (err) {
                verdicts.push(verdict(c, "rejected", `does not load: ${(err as Error).message.split("\n")[0]}`));
                continue;
            }
        }
        chosen = verdict(c, "chosen", check.reason, check.cached);
        verdicts.push(chosen);
    }
    return {chosen, candidates: verdicts, module};
}

/** The error when nothing works: every path tried and why, and the one command that fixes it. */
export function noNativeError(selection: NativeSelection): Error {
    const lines = selection.candidates.map((v) => `  ${v.source.padEnd(16)} ${v.path}: ${v.reason}`);
    return new Error(`no usable ppc-gpt native addon for ${process.platform}-${process.arch} (Node ${process.versions.node}).\n` +
        `Tried:\n${lines.join("\n")}\n` +
        `Fix: run \`npx ppc-gpt build\` (compiles one for this machine into ${userCacheDir()}; needs cmake >= 3.19, ` +
        "a C++17 compiler and git), then run the command again.");
}
