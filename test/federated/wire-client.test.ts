// The wire, recorded: a real `ppc-gpt client run` process talks to a real `ppc-gpt server` process
// through a recording TCP proxy. Everything the client sent is de-chunked, gunzipped and searched:
// none of the private questions, choices, answer keys, original ids or held-out items is in it;
// the perturbed texts are.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {hasShared, tempDir} from "../helpers.js";
import {createToken, RecordingProxy, spawnClient, startFederation, writePrivateItems} from "./client-helpers.js";

const maybe = hasShared ? test : test.skip;

maybe("what the client sends holds perturbed text under random ids and nothing private", async (t) => {
    const dir = tempDir(t);
    const {server, serverDir: srvDir} = await startFederation(t, dir);
    const token = await createToken(srvDir, "acme");
    const proxy = await RecordingProxy.start(server.url);
    t.teardown(() => proxy.close());
    const priv = writePrivateItems(dir, 10, "acme");
    const state = path.join(dir, "state");
    // The first two event streams are cut after their first bytes: the client must reconnect.
    proxy.cut = {match: /GET \/v1\/jobs\/[^/ ]+\/events /, afterBytes: 1, times: 2};
    const c = spawnClient(["run", "--server", proxy.url, "--data", priv.file, "--holdout", "0.3", "--epsilon", "2", "--k", "1",
        "--server-steps", "2", "--batch-size", "4", "--client-steps", "2", "--state-dir", state, "--threads", "2", "--json"], token);
    const r = await c.done;
    t.is(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout);
    t.is(summary.job_status.status, "succeeded");
    t.is(proxy.cuts, 2);
    const eventRequests = proxy.connections.filter((x) => /GET \/v1\/jobs\/[^/ ]+\/events /.test(Buffer.concat(x.up).toString("latin1")));
    t.true(eventRequests.length >= 3, "the event stream was reopened after each cut");

    const sent = proxy.sentDecoded();
    t.true(sent.length > 0);
    // Nothing private: questions, choice texts, ids, answers, and no distinctive word of them.
    for (const it of priv.items) {
        t.false(sent.includes(it.id), `original id ${it.id} was sent`);
        t.false(sent.includes(it.question), `question of ${it.id} was sent`);
        for (const ch of it.choices)
            t.false(sent.includes(ch.text), `choice ${ch.label} of ${it.id} was sent`);
    }
    for (const word of ["secret", "Zorblax", "Quintessa", "Marvolent", "Pellinore"])
        t.false(sent.includes(word), `${word} was sent`);
    t.false(/"answer"/.test(sent), "no answer field");
    t.false(/"rationale"|"source"|"original_id"/.test(sent));
    t.is(sent.split(token).length - 1, sent.split(`Bearer ${token}`).length - 1, "the token travels only in Authorization headers");

    // The upload is exactly the perturbed file: its texts are on the wire, under the random ids.
    const released = fs.readFileSync(path.join(state, "perturbed.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    t.is(released.length, summary.upload.items);
    const body = /\{"spec":.*\}/.exec(sent)?.[0];
    t.truthy(body, "the job body is in the recorded stream");
    const sentJob = JSON.parse(body!);
    t.deepEqual(sentJob.items, released);
    for (const it of sentJob.items) {
        t.deepEqual(Object.keys(it).sort(), ["choices", "id", "question"]);
        t.regex(it.id, /^[A-Za-z0-9_-]{22}$/);
        for (const ch of it.choices)
            t.deepEqual(Object.keys(ch).sort(), ["label", "text"]);
    }
    t.deepEqual(sentJob.spec.privacy, {mechanism: "custext", epsilon: 2});
    // The gzip body on the wire is not plain text.
    t.false(proxy.sentRaw().includes(Buffer.from(released[0].question)), "the body travelled compressed");

    // The id map and privacy report stayed local and link every released id to a private item.
    const map = fs.readFileSync(path.join(state, "idmap.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    t.deepEqual(map.map((m) => m.id), released.map((x) => x.id));
    const privIds = new Set(priv.items.map((x) => x.id));
    for (const m of map)
        t.true(privIds.has(m.original_id));
    const report = JSON.parse(fs.readFileSync(path.join(state, "privacy-report.json"), "utf8"));
    t.is(report.mechanism.epsilon, 2);
    t.false(sent.includes(report.mechanism.modelHash), "the privacy report never left");
    // Held-out items never left, and were not uploaded.
    t.is(summary.held_out_items + released.length, priv.items.length);
    // Byte counts reported by the client match what the proxy saw of the bodies (lower bound: heads add more).
    t.true(proxy.sentRaw().length > summary.traffic.sent_bytes);
    t.true(proxy.receivedRaw().length >= summary.traffic.received_bytes);
    t.is(summary.model.sha256, summary.job_status.model.sha256);
});
