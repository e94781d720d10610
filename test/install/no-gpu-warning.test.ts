// Asking for GPU layers where the binary in use has no CUDA device runs on the CPU, and says so once
// (a Node warning with code PPC_GPT_NO_GPU; the CLI prints it as its own message, or as a JSON event
// with --json) instead of leaving a user to believe the GPU did the work. On a machine where the
// addon sees a GPU the same calls offload and warn nothing.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {loadModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";
import {hasShared, runCli, stories260K, tempDir} from "../helpers.js";

/** Where the addon sees a CUDA device (a GPU machine with a CUDA build), the layers are offloaded and nothing is said. */
const gpu = native().systemInfo().devices.some((d) => /^CUDA/i.test(d.name));

test("CLI: --gpu-layers on a binary without a CUDA device warns once, as text or as a JSON event; without it, nothing", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const text = path.join(tempDir(t), "texts.txt");
    fs.writeFileSync(text, "Once upon a time there was a little dog.\n");
    const plain = await runCli(["bi", stories260K, "--text", text, "--gpu-layers", "999"]);
    t.is(plain.code, 0, plain.stderr);
    const warnings = plain.stderr.split("\n").filter((l) => l.startsWith("ppc-gpt: warning:"));
    t.is(warnings.length, gpu ? 0 : 1, plain.stderr);
    if (!gpu)
        t.regex(warnings[0], /--gpu-layers 999 asks for the GPU, but .+ is a (CPU build|CUDA build but sees no CUDA device).*running on the CPU/);
    t.notRegex(plain.stderr, /\(node:\d+\)|--trace-warnings/);

    const json = await runCli(["bi", stories260K, "--text", text, "--gpu-layers", "999", "--json"]);
    t.is(json.code, 0, json.stderr);
    const events = json.stderr.trim().split("\n").map((l) => JSON.parse(l) as {event: string; code?: string; message?: string});
    const warning = events.filter((e) => e.event === "warning");
    t.deepEqual(warning.map((w) => w.code), gpu ? [] : ["PPC_GPT_NO_GPU"]);
    t.is(JSON.parse(json.stdout).bi.length, 5, "the scores are still computed, on the CPU");

    const none = await runCli(["bi", stories260K, "--text", text]);
    t.is(none.code, 0, none.stderr);
    t.notRegex(none.stderr, /warning/);
});

test("library: loadModel with gpuLayers emits one PPC_GPT_NO_GPU process warning, however many models load", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const seen: (Error & {code?: string})[] = [];
    const listener = (w: Error & {code?: string}) => seen.push(w);
    process.on("warning", listener);
    try {
        for (let i = 0; i < 2; i++)
            (await loadModel(stories260K, {gpuLayers: 999})).close();
        (await loadModel(stories260K)).close();
        await new Promise((resolve) => setImmediate(resolve));  // warnings are emitted on the next tick
    } finally {
        process.off("warning", listener);
    }
    const ours = seen.filter((w) => w.code === "PPC_GPT_NO_GPU");
    t.is(ours.length, gpu ? 0 : 1);
    if (!gpu)
        t.regex(ours[0].message, /--gpu-layers 999 asks for the GPU/);
});
