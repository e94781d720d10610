// A whole job through the real server process: stories260K as the source model, a scripted
// OpenAI-compatible generator (a real HTTP server) for deterministic synthetic data, SSE progress,
// a model download in two Range requests checked against its sha256, and DELETE erasing every byte.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {readGguf} from "../../ts/gguf/read.js";
import type {JobStatus} from "../../ts/federated/protocol.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer, Teacher} from "../synth/openai-server.js";
import {auth, getJson, items, makeToken, sha256, startServer, storedState, submit} from "./server-process.js";

const maybe = hasShared ? test.serial : test.skip;

/** Reads the job's server-sent events until the stream ends. */
async function readEvents(url: string, token: string, id: string): Promise<{event: string; data: any}[]> {
    const res = await fetch(`${url}/v1/jobs/${id}/events`, {headers: auth(token)});
    if (res.status !== 200 || !res.headers.get("content-type")?.startsWith("text/event-stream"))
        throw new Error(`events: ${res.status} ${res.headers.get("content-type")}`);
    const text = await res.text();
    return text.split("\n\n").filter((b) => b.startsWith("event:")).map((block) => {
        const lines = block.split("\n");
        return {event: lines[0].slice("event: ".length), data: JSON.parse(lines[1].slice("data: ".length))};
    });
}

maybe("a job runs synth -> bi -> prune -> train -> merge; the model downloads in ranges with its sha256; DELETE erases it", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await makeToken(dir, "acme");
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "2"]);

    const sent = items(3);
    const spec = {k: 1, ratio: 0.3, server_steps: 3, batch_size: 2, r: 4, lora_alpha: 8, max_input_length: 48, max_target_length: 32,
        privacy: {mechanism: "custext" as const, epsilon: 3}};
    const r = await submit(server.url, token, {spec, items: sent});
    t.is(r.status, 202, JSON.stringify(r.json));
    t.regex(r.json.id, /^job_/);
    t.is(r.headers.get("location"), `/v1/jobs/${r.json.id}`);
    const id: string = r.json.id;

    const events = await readEvents(server.url, token, id);
    t.is(events[0].event, "status");
    const last = events.at(-1)!;
    t.is(last.event, "status");
    t.is(last.data.status, "succeeded", JSON.stringify(last.data.error) + server.stderr());
    t.true(events.some((e) => e.event === "progress" && e.data.stage === "train"), "train progress was streamed");

    const s = (await getJson(server.url, token, `/v1/jobs/${id}`)).json as JobStatus;
    t.is(s.status, "succeeded");
    t.deepEqual(s.stages.map((x) => [x.name, x.status]), [["synth", "done"], ["bi", "done"], ["prune", "done"], ["train", "done"], ["merge", "done"], ["quantize", "skipped"]]);
    for (const st of s.stages.filter((x) => x.status !== "skipped"))
        t.true(st.seconds !== null && st.seconds >= 0 && st.started_at !== null && st.finished_at !== null);
    t.is(s.items, 3);
    t.is(s.spec.k, 1);
    t.is(s.spec.learning_rate, 5e-5, "defaults are filled in");
    t.deepEqual(s.spec.privacy, {mechanism: "custext", epsilon: 3});
    t.deepEqual(s.synth, {accepted: 3, rejected: 0});
    const bi = s.bi_report as any;
    t.is(bi.n_layer, 5);
    t.is(bi.bi.length, 5);
    t.is(bi.items.label, 3);
    t.is(bi.items.rationale, 3, "BI scores the rationales too");
    t.false(String(bi.model.path).includes("/"), "no server path leaks into the report");
    const plan = s.plan as any;
    t.true(plan.removed.length >= 1);
    t.is(plan.strategy, "bi");
    // the BI plan removes the lowest-scoring layers first
    const order = [...bi.bi.keys()].sort((a: number, b: number) => bi.bi[a] - bi.bi[b]);
    t.deepEqual([...plan.removed].sort(), order.slice(0, plan.removed.length).sort());
    t.is(s.model!.layers, 5 - plan.removed.length);

    // every generator request carried the perturbed questions the client sent, nothing else
    const questions = gen.of("question").map((q) => JSON.stringify(q.body.messages));
    t.is(questions.length, 3);
    for (const item of sent)
        t.true(questions.some((q) => q.includes(item.question)));

    // download in two ranges, then check it is one file with the advertised hash
    const modelUrl = `${server.url}/v1/jobs/${id}/model`;
    const head = await fetch(modelUrl, {headers: {...auth(token), range: "bytes=0-999"}});
    t.is(head.status, 206);
    const etag = head.headers.get("etag")!;
    t.is(etag, `"${s.model!.sha256}"`);
    t.is(head.headers.get("content-range"), `bytes 0-999/${s.model!.size}`);
    const part1 = Buffer.from(await head.arrayBuffer());
    t.is(part1.length, 1000);
    const tail = await fetch(modelUrl, {headers: {...auth(token), range: "bytes=1000-", "if-range": etag}});
    t.is(tail.status, 206);
    const part2 = Buffer.from(await tail.arrayBuffer());
    const whole = Buffer.concat([part1, part2]);
    t.is(whole.length, s.model!.size);
    t.is(sha256(whole), s.model!.sha256);
    // a stale If-Range gets the whole file; a range past the end is 416
    const stale = await fetch(modelUrl, {headers: {...auth(token), range: "bytes=1000-", "if-range": '"0000"'}});
    t.is(stale.status, 200);
    t.is(sha256(Buffer.from(await stale.arrayBuffer())), s.model!.sha256);
    const past = await fetch(modelUrl, {headers: {...auth(token), range: `bytes=${s.model!.size}-`}});
    t.is(past.status, 416);
    t.is(((await past.json()) as {code: string}).code, "range_not_satisfiable");
    const file = path.join(dir, "model.gguf");
    fs.writeFileSync(file, whole);
    const g = await readGguf(file, {maxArrayValues: 1});
    t.is(g.blockCount, s.model!.layers);

    // the kit: a GGUF with the source's metadata and only the token embeddings
    const info = (await getJson(server.url, undefined, "/v1/info")).json;
    const kitRes = await fetch(`${server.url}/v1/perturbation-kit`, {headers: auth(token)});
    t.is(kitRes.status, 200);
    const kit = Buffer.from(await kitRes.arrayBuffer());
    t.is(sha256(kit), info.perturbation_kit.sha256);
    t.is(kitRes.headers.get("x-content-sha256"), info.perturbation_kit.sha256);
    fs.writeFileSync(path.join(dir, "kit.gguf"), kit);
    t.deepEqual((await readGguf(path.join(dir, "kit.gguf"), {maxArrayValues: 1})).tensors.map((x) => x.name), ["token_embd.weight"]);

    // DELETE: 204, then the job is gone and only the kit is left among the artifacts
    const del = await fetch(`${server.url}/v1/jobs/${id}`, {method: "DELETE", headers: auth(token)});
    t.is(del.status, 204);
    t.is((await getJson(server.url, token, `/v1/jobs/${id}`)).status, 404);
    const stored = storedState(dir);
    t.is(stored.jobs, 0);
    t.deepEqual(stored.artifacts, [info.perturbation_kit.sha256]);
    t.deepEqual(stored.workDirs, []);
    await server.stop();
    t.is(server.child.exitCode, 0, server.stderr());
});

maybe("a job with quantize: q4_k_m delivers the merged model quantized with a task importance matrix; /v1/info lists the types", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await makeToken(dir, "acme");
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "2"]);
    const info = (await getJson(server.url, token, "/v1/info")).json as {quantization_types: string[]; job_spec_defaults: {quantize: string}};
    t.true(info.quantization_types.includes("q4_k_m"));
    t.is(info.job_spec_defaults.quantize, "none");
    const bad = await submit(server.url, token, {spec: {quantize: "q9_z"} as any, items: items(3)});
    t.is(bad.status, 400);
    const spec = {k: 1, ratio: 0.3, server_steps: 2, batch_size: 2, r: 4, lora_alpha: 8, max_input_length: 48, max_target_length: 32,
        quantize: "q4_k_m" as const, privacy: {mechanism: "custext" as const, epsilon: 3}};
    const r = await submit(server.url, token, {spec, items: items(3)});
    t.is(r.status, 202, JSON.stringify(r.json));
    await readEvents(server.url, token, r.json.id);
    const s = (await getJson(server.url, token, `/v1/jobs/${r.json.id}`)).json as JobStatus;
    t.is(s.status, "succeeded", String(s.error));
    t.deepEqual(s.stages.map((x) => [x.name, x.status]).slice(-2), [["merge", "done"], ["quantize", "done"]]);
    const res = await fetch(`${server.url}/v1/jobs/${r.json.id}/model`, {headers: auth(token)});
    const file = path.join(dir, "received.gguf");
    fs.writeFileSync(file, Buffer.from(await res.arrayBuffer()));
    t.is(sha256(fs.readFileSync(file)), s.model!.sha256);
    const g = await readGguf(file);
    t.is(g.value("ppc_gpt.quantization.type"), "q4_k_m");
    t.is(g.value("ppc_gpt.quantization.imatrix"), "task");
    t.true(g.tensors.some((x) => x.type !== "f32" && x.type !== "f16"), "quantized tensors");
    t.true(s.model!.size < fs.statSync(stories260K).size / 2);
});

maybe("a job whose synthesis yields nothing ends failed with the reason; the server takes the next job", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    let storyteller = true;
    const gen = await ScriptedChatServer.start((r) => storyteller ? {content: "Once upon a time there was a little dog."} : teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await makeToken(dir, "acme");
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "2"]);
    const spec = {k: 1, strategy: "top" as const, server_retraining: false};
    const bad = await submit(server.url, token, {spec, items: items(2)});
    const failed = (await readEvents(server.url, token, bad.json.id)).at(-1)!.data as JobStatus;
    t.is(failed.status, "failed");
    t.regex(failed.error!, /^synth stage: synthesis accepted no items from 2 perturbed item\(s\) .*\(4 attempts rejected: /);
    t.deepEqual(failed.stages.map((x) => x.status), ["failed", "skipped", "pending", "skipped", "skipped", "skipped"]);
    t.is((await getJson(server.url, token, `/v1/jobs/${bad.json.id}/model`)).status, 409);
    t.deepEqual(storedState(dir).workDirs, [], "a failed job leaves no work files");

    storyteller = false;
    const good = await submit(server.url, token, {spec, items: items(2)});
    const done = (await readEvents(server.url, token, good.json.id)).at(-1)!.data as JobStatus;
    t.is(done.status, "succeeded", done.error ?? "");
    // without BI and retraining: the top layers go, and the pruned model is the result
    t.deepEqual(done.stages.map((x) => x.status), ["done", "skipped", "done", "skipped", "skipped", "skipped"]);
    t.is(done.bi_report, null);
    t.deepEqual((done.plan as {removed: number[]; order: number[]}).order.slice(0, 2), [4, 3]);
    t.deepEqual((done.plan as {removed: number[]}).removed, [3, 4]);
    t.is(done.model!.layers, 3);
});
