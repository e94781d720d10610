// llama.cpp's own llama-quantize and llama-imatrix, built once from the bundled, patched source
// (the one the addon is built from) into build/llama-tools (gitignored), as references for the
// quantization tests. CPU only, x86-64-v3 code generation as the portable addon (never -march=native,
// so the binaries behave the same on every test machine); only these two targets, with -j2.
// Test files running in parallel share one build: a lock folder serializes it.
import {execFile} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {promisify} from "node:util";
import {repoRoot} from "./helpers.js";

const run = promisify(execFile);
const toolsDir = path.join(repoRoot, "build", "llama-tools");
const stampFile = path.join(toolsDir, "ppc-gpt-tools.json");

export interface LlamaTools {
    quantize: string;
    imatrix: string;
}

async function llamaSourceDir(): Promise<string> {
    const {ensureLlamaSource} = await import(path.join(repoRoot, "scripts", "llama-source.mjs")) as
        {ensureLlamaSource: (cache: string, log?: (s: string) => void) => string};
    return ensureLlamaSource(path.join(repoRoot, ".cache"), () => {});
}

function built(source: string): LlamaTools | undefined {
    const tools = {quantize: path.join(toolsDir, "bin", "llama-quantize"), imatrix: path.join(toolsDir, "bin", "llama-imatrix")};
    try {
        const stamp = JSON.parse(fs.readFileSync(stampFile, "utf8")) as {source?: string};
        return stamp.source === source && fs.existsSync(tools.quantize) && fs.existsSync(tools.imatrix) ? tools : undefined;
    } catch {
        return undefined;
    }
}

async function build(source: string): Promise<void> {
    const flags = ["GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"].map((f) => `-D${f}=${process.arch === "x64" ? "ON" : "OFF"}`);
    await run("cmake", ["-S", source, "-B", toolsDir, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=OFF", "-DGGML_CUDA=OFF", ...flags],
    {maxBuffer: 64 << 20});
    await run("cmake", ["--build", toolsDir, "--target", "llama-quantize", "llama-imatrix", "-j2"], {maxBuffer: 64 << 20});
    fs.writeFileSync(stampFile, JSON.stringify({source}) + "\n");
}

/** The reference tools, building them first where needed (minutes, once per source tree). */
export async function llamaTools(): Promise<LlamaTools> {
    const source = await llamaSourceDir();
    const ready = built(source);
    if (ready)
        return ready;
    fs.mkdirSync(path.dirname(toolsDir), {recursive: true});
    const lock = `${toolsDir}.lock`;
    for (;;) {
        try {
            fs.mkdirSync(lock);
            break;
        } catch {
            // a lock older than an hour belongs to a build that died
            const held = fs.statSync(lock, {throwIfNoEntry: false});
            if (held && Date.now() - held.mtimeMs > 3600_000)
                fs.rmSync(lock, {recursive: true, force: true});
            await new Promise((r) => setTimeout(r, 2000));
            const done = built(source);
            if (done)
                return done;
        }
    }
    try {
        const done = built(source);
        if (done)
            return done;
        await build(source);
        return built(source)!;
    } finally {
        fs.rmSync(lock, {recursive: true, force: true});
    }
}
