// `ppc-gpt run`: a server process and a client process on loopback, end to end, with the scripted
// generator for speed; the summary says what went where and the temporary folder is removed.
import fs from "node:fs";
import os from "node:os";
import test from "ava";
import {formatBytes} from "../../ts/cli/output.js";
import {runSummaryRows} from "../../ts/cli/client.js";
import type {RunSummary} from "../../ts/federated/client/flow.js";
import {hasShared, runCli} from "../helpers.js";
import {clientEnv, startGenerator} from "./client-helpers.js";

const maybe = hasShared ? test : test.skip;

maybe("ppc-gpt run: the whole flow, a summary of bytes, ε, layers, S and C; no folder left behind", async (t) => {
    const gen = await startGenerator();
    t.teardown(() => gen.stop());
    const before = new Set(fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("ppc-gpt-run-")));
    const r = await runCli(["run", "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher", "--limit", "6", "--eval-limit", "8",
        "--server-steps", "2", "--batch-size", "4", "--client-steps", "2", "--threads", "2", "--json"], {env: clientEnv()});
    t.is(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout);
    t.is(s.job_status.status, "succeeded");
    t.is(s.upload.items, 6);
    t.is(s.held_out_items, 8);
    t.true(s.traffic.sent_bytes >= s.upload.bytes && s.upload.bytes > 0);
    t.true(s.traffic.received_bytes >= s.model.size);
    t.is(s.privacy.epsilon_per_token, 3);
    t.is(s.privacy.mechanism, "custext");
    t.true(s.privacy.epsilon_per_record.max >= s.privacy.epsilon_per_record.min && s.privacy.epsilon_per_record.min > 0);
    t.is(s.layers.before, 5);
    t.is(s.layers.before - s.layers.after, s.layers.removed.length);
    t.true(s.layers.removed.length >= 1, "ratio 0.3 of stories260K removes at least one layer");
    for (const stage of ["S", "C"]) {
        t.is(s.finish[stage].items, 8);
        t.true(s.finish[stage].acc >= 0 && s.finish[stage].acc <= 1);
    }
    t.true(s.server_data_bytes > 0);
    t.is(s.quantization, null, "no quantize in the job spec: no quantization");
    t.false(runSummaryRows(s).some(([name]) => name === "quantized"));
    // The generator saw perturbed text only: no ARC question verbatim (the scripted teacher records requests).
    const arc = fs.readFileSync(`${process.env.PPC_SHARED_DIR ?? "../shared"}/data/arc/ARC-Easy-Train.jsonl`, "utf8").split("\n").slice(0, 6)
        .map((l) => JSON.parse(l).question.stem as string);
    const prompts = gen.requests.map((q) => JSON.stringify(q.body)).join("\n");
    t.true(gen.requests.length > 0);
    for (const q of arc)
        t.false(prompts.includes(JSON.stringify(q).slice(1, -1)), `private question reached the generator: ${q}`);
    const after = fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("ppc-gpt-run-") && !before.has(f));
    t.deepEqual(after, [], "the temporary folder is removed");
});

maybe("ppc-gpt run --quantize q4_k_m: the summary gives the model's size before and after the server's quantization", async (t) => {
    const gen = await startGenerator();
    t.teardown(() => gen.stop());
    const r = await runCli(["run", "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher", "--limit", "4", "--eval-limit", "4",
        "--server-steps", "1", "--batch-size", "4", "--client-steps", "1", "--threads", "2", "--quantize", "q4_k_m", "--json"], {env: clientEnv()});
    t.is(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as RunSummary;
    t.is(s.job_status.status, "succeeded");
    const q = s.quantization!;
    t.is(q.type, "q4_k_m");
    t.true(q.imatrix_entries > 0);
    // after: the file the client received; before: the merged model, in the source's f32 (stories260K)
    t.is(q.size_after, s.model.size);
    t.true(q.size_before > 2 * q.size_after, `${q.size_before} -> ${q.size_after}`);
    t.deepEqual(s.job_status.quantization, q);
    const row = runSummaryRows(s).find(([name]) => name === "quantized");
    t.truthy(row, "the human summary has a quantized row");
    t.is(row![1], `q4_k_m with a task importance matrix (${q.imatrix_entries} tensors) on the server: ` +
        `${formatBytes(q.size_before)} -> ${formatBytes(q.size_after)} (${(100 * q.size_after / q.size_before).toFixed(1)}%)`);
});
