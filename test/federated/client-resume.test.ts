// A client killed with SIGKILL is run again with the same arguments: it continues the same job
// (no second job on the server), and a download cut mid-way resumes with Range + If-Range from the
// bytes already on disk, then checks the sha256.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {hasShared, tempDir} from "../helpers.js";
import {createToken, jsonLine, RecordingProxy, spawnClient, startFederation, writePrivateItems} from "./client-helpers.js";

const maybe = hasShared ? test : test.skip;

maybe("kill -9 during submission and during the download: re-runs continue the same job and resume the download", async (t) => {
    const dir = tempDir(t);
    const {server, serverDir: srvDir} = await startFederation(t, dir);
    const token = await createToken(srvDir, "acme");
    const proxy = await RecordingProxy.start(server.url);
    t.teardown(() => proxy.close());
    const priv = writePrivateItems(dir, 8, "acme");
    const state = path.join(dir, "state");
    const args = ["run", "--server", proxy.url, "--data", priv.file, "--holdout", "0.25", "--epsilon", "3", "--k", "1",
        "--server-steps", "2", "--batch-size", "4", "--client-steps", "2", "--state-dir", state, "--threads", "2", "--json"];

    // 1. Killed right after the job was accepted.
    let job = "";
    const first = spawnClient(args, token, {onStderr: (line, child) => {
        const e = jsonLine(line);
        if (e.event === "submitted") {
            job = e.job;
            child.kill("SIGKILL");
        }
    }});
    const r1 = await first.done;
    t.is(r1.signal, "SIGKILL");
    t.regex(job, /^job_/);

    // 2. Killed during the download: the proxy slows the model's bytes after the first 96 KiB.
    proxy.throttle = {match: /GET \/v1\/jobs\/[^/ ]+\/model /, afterBytes: 96 * 1024, delayMs: 150, chunk: 16 * 1024};
    let killedAt = 0;
    const second = spawnClient(args, token, {onStderr: (line, child) => {
        const e = jsonLine(line);
        if (e.event === "submitted")
            t.is(e.job, job, "the re-run names the same job");
        if (e.event === "progress" && e.stage === "download" && e.done >= 128 * 1024 && !killedAt) {
            killedAt = e.done;
            child.kill("SIGKILL");
        }
    }});
    const r2 = await second.done;
    t.is(r2.signal, "SIGKILL", r2.stderr);
    t.true(killedAt > 0);
    const part = path.join(state, "model.gguf.part");
    const have = fs.statSync(part).size;
    t.true(have >= killedAt, `the partial file keeps what arrived (${have} >= ${killedAt})`);
    t.false(fs.existsSync(path.join(state, "model.gguf")));

    // 3. Run again, unthrottled: it resumes from the partial file and checks the hash.
    proxy.throttle = undefined;
    const before = proxy.connections.length;
    const third = spawnClient(args, token);
    const r3 = await third.done;
    t.is(r3.code, 0, r3.stderr);
    const summary = JSON.parse(r3.stdout);
    t.is(summary.job, job);
    const requests = proxy.connections.slice(before).map((c) => Buffer.concat(c.up).toString("latin1")).join("\n");
    const range = /GET \/v1\/jobs\/[^/ ]+\/model [^]*?\r\nrange: bytes=(\d+)-\r\n/i.exec(requests);
    t.truthy(range, `a Range request was sent:\n${requests.slice(0, 2000)}`);
    t.is(Number(range![1]), have, "the range starts where the partial file ends");
    t.regex(requests, new RegExp(`if-range: "${summary.job_status.model.sha256}"`, "i"));
    const events = r3.stderr.trim().split("\n").map(jsonLine);
    const downloaded = events.find((e) => e.event === "downloaded")!;
    t.is(downloaded.resumedFrom, have);
    const model = fs.readFileSync(summary.model.path);
    t.is(crypto.createHash("sha256").update(model).digest("hex"), summary.job_status.model.sha256);
    t.is(model.length, summary.job_status.model.size);
    t.false(fs.existsSync(part));

    // One job on the server for all three runs.
    const list = spawnClient(["jobs", "--server", server.url, "--json"], token);
    const jobs = JSON.parse((await list.done).stdout).jobs;
    t.deepEqual(jobs.map((j: {id: string}) => j.id), [job]);

    // A fourth run finds everything done and only reports.
    const fourth = await spawnClient(args, token).done;
    t.is(fourth.code, 0, fourth.stderr);
    t.deepEqual(JSON.parse(fourth.stdout).finish, summary.finish);
});

maybe("fetch: a corrupted partial download fails the hash check, is removed, and the next fetch gets the right file", async (t) => {
    const dir = tempDir(t);
    const {server, serverDir: srvDir} = await startFederation(t, dir);
    const token = await createToken(srvDir, "acme");
    const priv = writePrivateItems(dir, 6, "acme");
    const sub = await spawnClient(["submit", "--server", server.url, "--data", priv.file, "--holdout", "0.2", "--k", "1",
        "--server-steps", "1", "--batch-size", "2", "--state-dir", path.join(dir, "state"), "--threads", "2"], token).done;
    t.is(sub.code, 0, sub.stderr);
    const job = sub.stdout.trim();
    const waited = await spawnClient(["wait", job, "--server", server.url, "--json"], token).done;
    t.is(waited.code, 0, waited.stderr);
    const status = JSON.parse(waited.stdout);
    const out = path.join(dir, "model.gguf");
    // A partial file whose bytes are wrong, claiming the right ETag.
    fs.writeFileSync(`${out}.part`, Buffer.alloc(1000, 7));
    fs.writeFileSync(`${out}.part.json`, JSON.stringify({etag: `"${status.model.sha256}"`, sha256: status.model.sha256}));
    const bad = await spawnClient(["fetch", job, "--server", server.url, "-o", out], token).done;
    t.is(bad.code, 1);
    t.regex(bad.stderr, /sha256 [0-9a-f]{64} does not match the expected/);
    t.false(fs.existsSync(out));
    t.false(fs.existsSync(`${out}.part`));
    const good = await spawnClient(["fetch", job, "--server", server.url, "-o", out, "--json"], token).done;
    t.is(good.code, 0, good.stderr);
    t.is(crypto.createHash("sha256").update(fs.readFileSync(out)).digest("hex"), status.model.sha256);
});
