// What this machine offers a native binary: CPU features, NVIDIA GPUs and the CUDA runtime
// libraries the dynamic loader would find. Read from /proc, the loader's search path and (only
// when a GPU driver is present) nvidia-smi; every probe answers "unknown" rather than throwing.
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** The CPU features that matter to ggml's x86 kernels, as /proc/cpuinfo names them. */
export const relevantCpuFeatures = ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"] as const;

export interface CpuInfo {
    model: string;
    cores: number;
    /** Every flag of the first processor in /proc/cpuinfo; undefined where it cannot be read. */
    flags: Set<string> | undefined;
}

let cpuInfoCache: CpuInfo | undefined;

export function cpuInfo(): CpuInfo {
    if (cpuInfoCache)
        return cpuInfoCache;
    let flags: Set<string> | undefined;
    let model = os.cpus()[0]?.model ?? "unknown";
    try {
        const text = fs.readFileSync("/proc/cpuinfo", "utf8");
        const line = /^flags\s*:(.*)$/m.exec(text)?.[1];
        if (line !== undefined)
            flags = new Set(line.trim().split(/\s+/));
        model = /^model name\s*:\s*(.*)$/m.exec(text)?.[1] ?? model;
    } catch {
        // not Linux, or /proc is hidden: features unknown
    }
    cpuInfoCache = {model, cores: os.availableParallelism(), flags};
    return cpuInfoCache;
}

/** Features of `required` this CPU lacks ([] when the CPU's flags cannot be read). */
export function missingCpuFeatures(required: readonly string[]): string[] {
    const {flags} = cpuInfo();
    return flags ? required.filter((f) => !flags.has(f)) : [];
}

export interface GpuInfo {
    name: string;
    /** "7.0" for V100; undefined where nvidia-smi is absent. */
    computeCapability?: string;
    memoryMiB?: number;
    driver?: string;
    busId?: string;
}

/** NVIDIA GPUs the kernel driver exposes (/proc/driver/nvidia/gpus), without running anything. */
export function nvidiaDriverGpus(): string[] {
    try {
        return fs.readdirSync("/proc/driver/nvidia/gpus");
    } catch {
        return [];
    }
}

/** The kernel driver's version line, or undefined without an NVIDIA driver. */
export function nvidiaDriverVersion(): string | undefined {
    try {
        return fs.readFileSync("/proc/driver/nvidia/version", "utf8").split("\n")[0].trim();
    } catch {
        return undefined;
    }
}

/** GPUs with name and compute capability from nvidia-smi, else from /proc (name only). */
export function nvidiaGpus(): GpuInfo[] {
    try {
        const out = execFileSync("nvidia-smi", ["--query-gpu=name,compute_cap,memory.total,driver_version,pci.bus_id",
            "--format=csv,noheader,nounits"], {encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000});
        return out.trim().split("\n").filter(Boolean).map((line) => {
            const [name, cc, mem, driver, busId] = line.split(",").map((s) => s.trim());
            return {name, computeCapability: /^\d+\.\d+$/.test(cc) ? cc : undefined, memoryMiB: Number(mem) || undefined, driver, busId};
        });
    } catch {
        // no nvidia-smi (or it failed): the driver's /proc entries still name the GPUs
    }
    return nvidiaDriverGpus().map((busId) => {
        let name = "NVIDIA GPU";
        try {
            name = /^Model:\s*(.*)$/m.exec(fs.readFileSync(path.join("/proc/driver/nvidia/gpus", busId, "information"), "utf8"))?.[1]
                ?? name;
        } catch {
            // keep the generic name
        }
        return {name, busId};
    });
}

/** Folders the dynamic loader searches besides its cache: LD_LIBRARY_PATH. */
function libraryPathDirs(): string[] {
    return (process.env.LD_LIBRARY_PATH ?? "").split(":").filter(Boolean);
}

let ldconfigCache: Map<string, string> | undefined;

/** soname -> path from the dynamic loader's cache (`ldconfig -p`); empty where ldconfig is missing. */
function ldconfigLibraries(): Map<string, string> {
    if (ldconfigCache)
        return ldconfigCache;
    ldconfigCache = new Map();
    for (const ldconfig of ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]) {
        try {
            const out = execFileSync(ldconfig, ["-p"], {encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000});
            // "\tlibcublas.so.11 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcublas.so.11"; 32-bit entries lack x86-64.
            for (const m of out.matchAll(/^\s*(\S+) \(([^)]*)\) => (\S+)$/gm)) {
                if (process.arch === "x64" && !m[2].includes("x86-64"))
                    continue;
                if (!ldconfigCache.has(m[1]))
                    ldconfigCache.set(m[1], m[3]);
            }
            break;
        } catch {
            // try the next location
        }
    }
    return ldconfigCache;
}

/**
 * Where the dynamic loader would find `soname` for a binary in `besideDir` (its RUNPATH is
 * $ORIGIN): beside it, on LD_LIBRARY_PATH, or in the loader cache; undefined when nowhere.
 */
export function findSharedLibrary(soname: string, besideDir?: string): string | undefined {
    for (const dir of [...(besideDir ? [besideDir] : []), ...libraryPathDirs()]) {
        const file = path.join(dir, soname);
        if (fs.existsSync(file))
            return file;
    }
    return ldconfigLibraries().get(soname);
}

export interface CudaRuntimeInfo {
    /** soname -> path, or null where not found; every CUDA library a build of ppc-gpt may link. */
    libraries: Record<string, string | null>;
}

/** The CUDA runtime libraries this machine offers, for CUDA 11, 12 and 13 builds. */
export function cudaRuntime(): CudaRuntimeInfo {
    const names = ["libcuda.so.1"];
    for (const major of [11, 12, 13])
        names.push(major === 11 ? "libcudart.so.11.0" : `libcudart.so.${major}`, `libcublas.so.${major}`, `libcublasLt.so.${major}`);
    const libraries: Record<string, string | null> = {};
    for (const name of names)
        libraries[name] = findSharedLibrary(name) ?? null;
    return {libraries};
}
