// kill -9 of the server process in the middle of synthesis and in the middle of training, then a
// restart on the same data dir: the job continues from where it stopped (synth from its journal,
// training from its last checkpoint) and finishes with a model that downloads with its sha256.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {SqliteJobStore} from "../../ts/federated/store.js";
import {hasShared, llama2TinyRandom, runCli, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer, Teacher} from "../synth/openai-server.js";
import {auth, claimFile, getJson, items, makeToken, sha256, startServer, submit, waitJob} from "./server-process.js";

const maybe = hasShared ? test.serial : test.skip;

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(await check())) {
        if (Date.now() > end)
            throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 25));
    }
}

async function downloadChecked(t: import("ava").ExecutionContext, url: string, token: string, id: string, sha: string): Promise<void> {
    const res = await fetch(`${url}/v1/jobs/${id}/model`, {headers: auth(token)});
    t.is(res.status, 200);
    t.is(sha256(Buffer.from(await res.arrayBuffer())), sha);
}

maybe("kill -9 during synthesis: the restarted server resumes from the journal and finishes the job", async (t) => {
    const dir = tempDir(t);
    // every request takes a moment, so the kill lands in the middle of synthesis
    const teacher = new Teacher((r) => `Generated question for seed ${r.body.seed}: which choice is right?`);
    const gen = await ScriptedChatServer.start((r) => ({...teacher.reply(r), delayMs: 60}));
    t.teardown(() => gen.stop());
    const token = await makeToken(dir, "acme");
    const args = ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher", "--threads", "2",
        "--generator-concurrency", "2"];
    const first = await startServer(t, dir, args);
    const k = 3, n = 4;
    const r = await submit(first.url, token, {spec: {k, server_steps: 2, batch_size: 2, r: 2, max_input_length: 32, max_target_length: 24}, items: items(n)});
    t.is(r.status, 202);
    const id: string = r.json.id;
    const output = () => claimFile(dir, id, "synthetic.jsonl");
    const lines = () => fs.existsSync(output()) ? fs.readFileSync(output(), "utf8").split("\n").filter(Boolean).length : 0;
    await until("two synthetic items on disk", () => lines() >= 2);
    const before = lines();
    await first.kill9();
    t.true(before < n * k, "the kill came before synthesis finished");
    const questionsBefore = gen.of("question").length;

    // the unfinished job belongs to this source model: another one is refused
    const other = await runCli(["server", "--data-dir", dir, "--port", "0", ...args.map((a) => a === stories260K ? llama2TinyRandom : a)]);
    t.is(other.code, 1);
    t.regex(other.stderr, /1 unfinished job\(s\) .* started on the source model with sha256 [0-9a-f]{64}; --model has sha256/);

    const second = await startServer(t, dir, args);
    const s = await waitJob(second.url, token, id);
    t.is(s.status, "succeeded", `${s.error}\n${second.stderr()}`);
    t.deepEqual(s.synth, {accepted: n * k, rejected: 0});
    // items already on disk were not generated again
    const questionsAfter = gen.of("question").length - questionsBefore;
    t.true(questionsAfter <= n * k - before, `${questionsAfter} new questions after ${before} of ${n * k} were kept`);
    const store = SqliteJobStore.open(dir);
    const synth = store.stages(id).find((x) => x.name === "synth")!;
    store.close();
    const synthetic = fs.readFileSync(path.join(dir, "artifacts", synth.artifact_sha256!.slice(0, 2), synth.artifact_sha256!), "utf8")
        .split("\n").filter(Boolean).map((l) => JSON.parse(l) as {id: string});
    t.is(synthetic.length, n * k);
    t.is(new Set(synthetic.map((x) => x.id)).size, n * k, "no item twice");
    await downloadChecked(t, second.url, token, id, s.model!.sha256);
    t.false(fs.existsSync(path.join(dir, "jobs", id)), "the work folder is gone once the job is done");
});

maybe("kill -9 during training: the restarted server resumes from the last checkpoint", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    const gen = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => gen.stop());
    const token = await makeToken(dir, "acme");
    const args = ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher", "--threads", "2",
        "--checkpoint-every", "2"];
    const first = await startServer(t, dir, args);
    const steps = 40;
    const r = await submit(first.url, token, {spec: {k: 1, server_steps: steps, batch_size: 2, r: 2, max_input_length: 32, max_target_length: 24},
        items: items(4)});
    t.is(r.status, 202);
    const id: string = r.json.id;
    const checkpoint = () => claimFile(dir, id, "checkpoint/checkpoint.json");
    await until("a training checkpoint", () => fs.existsSync(checkpoint()), 90_000);
    const running = (await getJson(first.url, token, `/v1/jobs/${id}`)).json;
    t.is(running.stage, "train");
    await first.kill9();
    const savedStep = JSON.parse(fs.readFileSync(checkpoint(), "utf8")).step as number;
    t.true(savedStep > 0 && savedStep < steps, `checkpoint at step ${savedStep}`);

    const second = await startServer(t, dir, args);
    const s = await waitJob(second.url, token, id);
    t.is(s.status, "succeeded", `${s.error}\n${second.stderr()}`);
    const store = SqliteJobStore.open(dir);
    const train = store.stages(id).find((x) => x.name === "train")!;
    store.close();
    const result = train.result as {steps: number; resumed_from: number | null};
    t.is(result.steps, steps);
    t.is(result.resumed_from, savedStep, "training continued from the checkpoint the kill left");
    t.deepEqual(s.stages.map((x) => x.status), ["done", "done", "done", "done", "done", "skipped"]);
    await downloadChecked(t, second.url, token, id, s.model!.sha256);
});
