import fs from "node:fs";
import {createRequire} from "node:module";
import path from "node:path";
import {Command} from "commander";
import {cpuInfo, cudaRuntime, nvidiaDriverVersion, nvidiaGpus, relevantCpuFeatures} from "../host.js";
import {noNativeError, packageInfo, selectNative, userCacheDir, type NativeVerdict} from "../native-loader.js";
import type {NativeAddon} from "../native.js";
import {printJson, table} from "./output.js";
import {tableOption} from "./options.js";

/** node-llama-cpp's version and the llama.cpp release its bundle carries. */
function nodeLlamaCppInfo(): {version?: string; llamaCppRelease?: string} {
    try {
        let dir = path.dirname(createRequire(import.meta.url).resolve("node-llama-cpp"));
        while (path.basename(dir) !== "node-llama-cpp" && path.dirname(dir) !== dir)
            dir = path.dirname(dir);
        const version = (JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")) as {version: string}).version;
        const info = JSON.parse(fs.readFileSync(path.join(dir, "llama", "llama.cpp.info.json"), "utf8")) as {tag?: string};
        return {version, llamaCppRelease: info.tag};
    } catch {
        return {};
    }
}

export interface DoctorReport {
    ok: boolean;
    native: {
        chosen: NativeVerdict | null;
        candidates: NativeVerdict[];
        error?: string;
        /** What the chosen binary reports (llama.cpp's system info, ggml devices). */
        systemInfo?: ReturnType<NativeAddon["systemInfo"]>;
    };
    cpu: {model: string; cores: number; features: Record<string, boolean> | null};
    gpus: ReturnType<typeof nvidiaGpus>;
    nvidiaDriver: string | null;
    cudaRuntime: Record<string, string | null>;
    versions: {node: string; napi: string; ppcGpt: string; nodeLlamaCpp: string | null; llamaCppRelease: string | null;
        llamaCppCommit: string | null};
    cacheDir: string;
}

export function doctorReport(): DoctorReport {
    let selection: ReturnType<typeof selectNative>;
    let error: string | undefined;
    try {
        selection = selectNative({checkAll: true});
    } catch (err) {
        // PPC_GPT_NATIVE names a binary that does not load: reported, never replaced by another.
        selection = {candidates: []};
        error = (err as Error).message;
    }
    const chosen = selection.chosen ?? null;
    let systemInfo: DoctorReport["native"]["systemInfo"];
    if (error) {
        // nothing chosen
    } else if (chosen) {
        try {
            systemInfo = (selection.module as NativeAddon).systemInfo();
        } catch (err) {
            error = (err as Error).message;
        }
    } else {
        error = noNativeError(selection).message;
    }
    const cpu = cpuInfo();
    const nlc = nodeLlamaCppInfo();
    return {
        ok: Boolean(chosen) && !error,
        native: {chosen, candidates: selection.candidates, ...(error ? {error} : {}), ...(systemInfo ? {systemInfo} : {})},
        cpu: {model: cpu.model, cores: cpu.cores,
            features: cpu.flags ? Object.fromEntries(relevantCpuFeatures.map((f) => [f, cpu.flags!.has(f)])) : null},
        gpus: nvidiaGpus(),
        nvidiaDriver: nvidiaDriverVersion() ?? null,
        cudaRuntime: cudaRuntime().libraries,
        versions: {
            node: process.versions.node,
            napi: process.versions.napi ?? "unknown",
            ppcGpt: packageInfo().version,
            nodeLlamaCpp: nlc.version ?? null,
            llamaCppRelease: nlc.llamaCppRelease ?? null,
            llamaCppCommit: chosen?.record?.llama?.commit ?? null,
        },
        cacheDir: userCacheDir(),
    };
}

function printHuman(r: DoctorReport): void {
    const out = process.stdout;
    const c = r.native.chosen;
    out.write(c ? `native addon  ${c.path}\n  from        ${c.source} (${c.label})${c.cuda ? ", CUDA" : ", CPU"}\n  why         ${c.reason}\n`
        : `native addon  none usable\n`);
    if (r.native.systemInfo)
        out.write(`  devices     ${r.native.systemInfo.devices.map((d) => `${d.name} (${d.description})`).join(", ")}\n`);
    out.write("\n" + table(["candidate", "kind", "status", "why", "path"], r.native.candidates.map((v) => [
        v.label, v.cuda ? "cuda" : "cpu", v.status + (v.cached ? " (cached)" : ""), v.reason, v.path])));
    const f = r.cpu.features;
    out.write(`\nCPU           ${r.cpu.model}, ${r.cpu.cores} threads\n  features    ${f ? Object.entries(f)
        .filter(([, on]) => on).map(([k]) => k).join(" ") || "none of interest" : "unknown (no /proc/cpuinfo)"}\n`);
    out.write(`GPUs          ${r.gpus.length ? r.gpus.map((g) => `${g.name}${g.computeCapability ? ` (sm_${g.computeCapability
        .replace(".", "")})` : ""}`).join(", ") : "none (no NVIDIA driver)"}\n`);
    if (r.nvidiaDriver)
        out.write(`  driver      ${r.nvidiaDriver}\n`);
    const found = Object.entries(r.cudaRuntime).filter(([, p]) => p);
    out.write(`CUDA runtime  ${found.length ? found.map(([k, p]) => `${k} (${p})`).join(", ") : "none found (ldconfig -p, LD_LIBRARY_PATH)"}\n`);
    const v = r.versions;
    out.write(`versions      ppc-gpt ${v.ppcGpt}, Node ${v.node} (N-API ${v.napi}), node-llama-cpp ${v.nodeLlamaCpp ?? "?"} ` +
        `(llama.cpp ${v.llamaCppRelease ?? "?"}${v.llamaCppCommit ? `, commit ${v.llamaCppCommit.slice(0, 12)}` : ""})\n`);
    out.write(`cache         ${r.cacheDir}\n`);
    if (r.native.error)
        out.write(`\n${r.native.error}\n`);
}

export function doctorCommand(): Command {
    return new Command("doctor")
        .description("Show which native binary ppc-gpt uses here and why, with CPU features, GPUs, CUDA runtime and versions")
        .addOption(tableOption("--json", "doctor"))
        .addHelpText("after", `
Every candidate binary is listed in the order the loader tries them (PPC_GPT_NATIVE, user builds
from 'ppc-gpt build', the checkout's build/Release, platform packages, prebuilds/), with its verdict.
A CUDA binary is test-loaded in a child process; the verdict is cached in the cache folder.

Examples:
  ppc-gpt doctor
  ppc-gpt doctor --json | jq '.native.chosen.path'
Exit code 1 when no binary works here ('ppc-gpt build' compiles one).`)
        .action((opts: {json?: boolean}) => {
            const report = doctorReport();
            if (opts.json)
                printJson(report);
            else
                printHuman(report);
            if (!report.ok)
                process.exitCode = 1;
        });
}
