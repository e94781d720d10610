// Auth and input checks against the real server process: missing, wrong and revoked tokens, another
// client's job, malformed, oversized, gzip and zip-bomb bodies, leaked answers, item limits,
// concurrency limits and idempotent retries; after every rejection nothing new is stored.
import zlib from "node:zlib";
import test from "ava";
import {hasShared, runCli, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer} from "../synth/openai-server.js";
import {auth, getJson, items, makeToken, startServer, storedState, submit} from "./server-process.js";

const maybe = hasShared ? test.serial : test.skip;

maybe("tokens, ownership, validation, limits and idempotency; rejected requests store nothing", async (t) => {
    const dir = tempDir(t);
    // the generator never answers: submitted jobs stay queued or running in synth
    const gen = await ScriptedChatServer.start(() => ({hang: true}));
    t.teardown(() => gen.stop());
    const alice = await makeToken(dir, "alice");
    const bob = await makeToken(dir, "bob");
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--max-body-mb", "0.05", "--max-items", "4", "--max-concurrent-jobs", "2", "--threads", "1"]);
    const url = server.url;
    const kitOnly = storedState(dir);
    t.is(kitOnly.jobs, 0);
    t.is(kitOnly.artifacts.length, 1);

    // auth
    t.is((await getJson(url, undefined, "/v1/info")).status, 200);
    t.is((await getJson(url, undefined, "/v1/openapi.json")).status, 200);
    const none = await getJson(url, undefined, "/v1/jobs");
    t.is(none.status, 401);
    t.is(none.json.code, "unauthorized");
    t.is((await getJson(url, "ppc_" + "A".repeat(43), "/v1/jobs")).status, 401, "a well-formed unknown token");
    t.is((await getJson(url, "not-a-token", "/v1/jobs")).status, 401);
    t.is((await getJson(url, undefined, "/v1/perturbation-kit")).status, 401);
    t.is((await submit(url, "ppc_" + "B".repeat(43), {items: items(2)})).status, 401);

    // a job of alice's: bob sees nothing of it
    const first = await submit(url, alice, {spec: {k: 1}, items: items(2)});
    t.is(first.status, 202, JSON.stringify(first.json));
    const jobA = first.json.id as string;
    for (const route of [`/v1/jobs/${jobA}`, `/v1/jobs/${jobA}/model`, `/v1/jobs/${jobA}/events`])
        t.is((await getJson(url, bob, route)).status, 404, route);
    t.is((await fetch(`${url}/v1/jobs/${jobA}`, {method: "DELETE", headers: auth(bob)})).status, 404);
    t.deepEqual((await getJson(url, bob, "/v1/jobs")).json.jobs, []);
    t.deepEqual((await getJson(url, alice, "/v1/jobs")).json.jobs.map((j: {id: string}) => j.id), [jobA]);
    const notReady = await getJson(url, alice, `/v1/jobs/${jobA}/model`);
    t.is(notReady.status, 409);
    t.is(notReady.json.code, "not_ready");

    const baseline = storedState(dir);
    t.is(baseline.jobs, 1);
    const rejected = async (body: string | object, status: number, message: RegExp, extra: Record<string, string> = {}, who = alice) => {
        const r = await submit(url, who, typeof body === "string" ? body : JSON.stringify(body), extra);
        t.is(r.status, status, `${JSON.stringify(r.json)}`);
        if (r.json)
            t.regex(r.json.error, message);
        t.deepEqual(storedState(dir), baseline, "nothing of a rejected request is stored");
        return r;
    };

    // validation: the message names the field or item
    const good = items(3);
    await rejected("{not json", 400, /JSON/);
    await rejected({items: [good[0], {...good[1], answer: "A"}]}, 400, /^items\/1 must not have the property "answer"/);
    await rejected({items: [good[0], {...good[1], choices: [{label: "A", text: 3}, {label: "B", text: "x"}]}]}, 400, /^items\/1\/choices\/0\/text must be string/);
    await rejected({items: [good[0], {...good[1], id: good[0].id}]}, 400, /items\/1\/id .* repeats items\/0\/id/);
    await rejected({items: [{...good[0], choices: [{label: "A", text: "x"}, {label: "A", text: "y"}]}]}, 400, /items\/0\/choices\/1\/label/);
    await rejected({items: [{...good[0], source: {dataset: "arc"}}]}, 400, /"source"/);
    await rejected({items: good, spec: {ratio: 1.5}}, 400, /spec\/ratio/);
    await rejected({items: good, spec: {privacy: {mechanism: "custext", epsilon: 1000}}}, 400, /spec\/privacy\/epsilon/);
    await rejected({items: good, spec: {learning_rate: "5e-5"}}, 400, /spec\/learning_rate must be number/);
    await rejected({items: good, extra: 1}, 400, /must not have the property "extra"/);
    await rejected({items: []}, 400, /items/);
    // limits
    await rejected({items: items(5)}, 413, /at most 4/);
    const big = {items: [{...good[0], question: "x".repeat(19000)}, {...good[1], question: "y".repeat(19000)}, {...good[2], question: "z".repeat(19000)}]};
    await rejected(big, 413, /.*/);
    // gzip: a bomb (tiny compressed, huge decompressed) is cut off at the body limit; garbage is a 400
    const bomb = zlib.gzipSync(Buffer.from(JSON.stringify({items: [{...good[0], question: " ".repeat(20_000_000)}]})));
    t.true(bomb.length < 0.05 * 1024 * 1024 / 2, "the compressed body is well under the limit: only its decompressed size is over");
    const bombRes = await fetch(`${url}/v1/jobs`, {method: "POST", headers: {"content-type": "application/json", "content-encoding": "gzip", ...auth(alice)},
        body: bomb});
    t.is(bombRes.status, 413);
    t.deepEqual(storedState(dir), baseline);
    await rejected("this is not gzip", 400, /gzip/, {"content-encoding": "gzip"});
    await rejected(JSON.stringify({items: good}), 415, /br/, {"content-encoding": "br"});
    await rejected({items: good}, 400, /idempotency-key/, {"idempotency-key": "k".repeat(201)});

    // a gzip body is accepted; an idempotent retry returns the same job; the same key with another body is 422
    const gz = zlib.gzipSync(Buffer.from(JSON.stringify({spec: {k: 2}, items: good})));
    const sendGz = () => fetch(`${url}/v1/jobs`, {method: "POST", body: gz,
        headers: {"content-type": "application/json", "content-encoding": "gzip", "idempotency-key": "retry-1", ...auth(alice)}});
    const g1 = await sendGz();
    t.is(g1.status, 202);
    const id2 = ((await g1.json()) as {id: string}).id;
    const g2 = await sendGz();
    t.is(g2.status, 202);
    t.is(((await g2.json()) as {id: string}).id, id2, "the retry names the same job");
    const after = storedState(dir);
    t.is(after.jobs, 2, "two submissions with one key made one job");
    const mismatch = await submit(url, alice, {spec: {k: 3}, items: good}, {"idempotency-key": "retry-1"});
    t.is(mismatch.status, 422);
    t.is(mismatch.json.code, "idempotency_mismatch");
    // alice has 2 active jobs: a third is 429 and stores nothing; bob may still submit
    const third = await submit(url, alice, {items: items(2)});
    t.is(third.status, 429);
    t.is(third.json.code, "too_many_jobs");
    t.deepEqual(storedState(dir), after);
    t.is((await submit(url, bob, {items: items(2)})).status, 202);

    // deleting a running job (its generator request hangs) cancels it and erases it; the queue moves on
    t.is((await getJson(url, alice, `/v1/jobs/${jobA}`)).json.status, "running");
    const del = await fetch(`${url}/v1/jobs/${jobA}`, {method: "DELETE", headers: auth(alice)});
    t.is(del.status, 204);
    t.is((await getJson(url, alice, `/v1/jobs/${jobA}`)).status, 404);
    t.is(storedState(dir).jobs, 2);
    t.false(storedState(dir).workDirs.includes(jobA));
    t.is((await getJson(url, alice, `/v1/jobs/${id2}`)).json.status, "running");

    // revocation takes effect at once, while the server runs
    const revoke = await runCli(["server", "token", "revoke", "alice", "--data-dir", dir]);
    t.is(revoke.code, 0, revoke.stderr);
    t.is((await getJson(url, alice, "/v1/jobs")).status, 401);
    t.is((await getJson(url, bob, "/v1/jobs")).status, 200);
    // jobs belong to the client's name: alice's rotated token keeps her jobs; bob's token still does not see them
    const rotated = await makeToken(dir, "alice");
    const keptJobs = (await getJson(url, rotated, "/v1/jobs")).json.jobs.map((j: {id: string}) => j.id);
    t.deepEqual(keptJobs, [id2], "the new token lists the old token's job");
    t.is((await getJson(url, rotated, `/v1/jobs/${id2}`)).json.status, "running", "and reads it");
    t.is((await getJson(url, bob, `/v1/jobs/${id2}`)).status, 404, "another client's token does not");
    t.false(((await getJson(url, bob, "/v1/jobs")).json.jobs as {id: string}[]).some((j) => j.id === id2));
    t.is((await runCli(["server", "token", "revoke", "alice", "--data-dir", dir])).code, 0);
    const list = await runCli(["server", "token", "list", "--data-dir", dir, "--json"]);
    const tokens = JSON.parse(list.stdout).tokens as {name: string; revoked_at: string | null; token_sha256?: string}[];
    t.deepEqual(tokens.map((x) => [x.name, x.revoked_at !== null]), [["alice", true], ["bob", false], ["alice", true]]);
    t.false(list.stdout.includes(alice), "the token itself is never printed again");
    t.false(tokens.some((x) => "token_sha256" in x));

    // a second server on the same data dir would run the same jobs twice: it refuses to start
    const twin = await runCli(["server", "--data-dir", dir, "--model", stories260K, "--port", "0", "--generator-url", gen.baseUrl,
        "--generator-remote-model", "teacher"]);
    t.is(twin.code, 1);
    t.regex(twin.stderr, new RegExp(`another server \\(pid ${server.child.pid}\\) is using`));

    // SIGTERM with an event stream open: the stream ends and the server exits cleanly
    const bobJob = (await getJson(url, bob, "/v1/jobs")).json.jobs[0].id as string;
    const events = await fetch(`${url}/v1/jobs/${bobJob}/events`, {headers: auth(bob)});
    t.is(events.status, 200);
    const body = events.text();
    await server.stop();
    t.is(server.child.exitCode, 0, server.stderr());
    t.regex(await body, /^event: status\ndata: \{"id":"job_/);
});
