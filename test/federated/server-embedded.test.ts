// The server with its embedded generator (stories260K generating for itself, on the addon's
// llama.cpp): a real job end to end. stories260K writes children's stories, so most synthesis
// attempts are rejected; the job either trains on what was accepted or fails naming that reason.
import test from "ava";
import type {JobStatus} from "../../ts/federated/protocol.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";
import {auth, getJson, makeToken, sha256, startServer, submit, waitJob} from "./server-process.js";

const maybe = hasShared ? test.serial : test.skip;

maybe("a job on the embedded generator ends succeeded with a downloadable model, or failed with the synthesis reason", async (t) => {
    const dir = tempDir(t);
    const token = await makeToken(dir, "acme");
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-model", stories260K, "--threads", "2",
        "--synth-max-tokens", "96"]);
    const info = (await getJson(server.url, undefined, "/v1/info")).json;
    t.deepEqual(info.generator, {kind: "embedded", name: "ppc-gpt:stories260K.gguf"});
    const r = await submit(server.url, token, {spec: {k: 1, server_steps: 2, batch_size: 2, r: 2, seed: 0}, items: [
        {id: "a1", question: "The sun is responsible for", choices: [{label: "A", text: "puppies learning tricks"}, {label: "B", text: "plants sprouting"}]},
    ]});
    t.is(r.status, 202);
    const s: JobStatus = await waitJob(server.url, token, r.json.id, undefined, 240_000);
    const synthStage = s.stages.find((x) => x.name === "synth")!;
    if (s.status === "succeeded") {
        t.log(`succeeded: ${s.synth!.accepted} accepted, ${s.synth!.rejected} rejected`);
        t.is(s.synth!.accepted, 1);
        t.deepEqual(s.stages.map((x) => x.status), ["done", "done", "done", "done", "done"]);
        const res = await fetch(`${server.url}/v1/jobs/${s.id}/model`, {headers: auth(token)});
        t.is(sha256(Buffer.from(await res.arrayBuffer())), s.model!.sha256);
        t.true(s.model!.layers < 5);
    } else {
        t.log(`failed: ${s.error}`);
        t.is(s.status, "failed");
        t.is(synthStage.status, "failed");
        t.regex(s.error!, /^synth stage: synthesis accepted no items from 1 perturbed item\(s\) with generator ppc-gpt:stories260K\.gguf/);
        t.is(s.model, null);
    }
    // the server goes on either way
    t.is((await getJson(server.url, token, "/v1/jobs")).json.jobs.length, 1);
    await server.stop();
    t.is(server.child.exitCode, 0);
});
