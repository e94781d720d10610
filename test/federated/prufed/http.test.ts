// `fl server` and `fl client` as real processes over loopback: three clients cut to different
// depths run two rounds while the server is killed -9 mid-round and between rounds; the round files
// are recomputed from the clients' own uploads. Bad uploads (NaN, another layer's tensors, wrong
// shape) are refused with a reason and never aggregated; a straggler past the deadline is dropped.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {readLoraAdapter, writeLoraAdapter} from "../../../ts/train/adapter.js";
import {recomputeRound, roundFile} from "../../../ts/federated/prufed/rounds.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {makeToken} from "../server-process.js";
import {runCli, stories260K, tempDir} from "../../helpers.js";
import {clientTokens, models, spawnCli, startServer, type Proc} from "./http-process.js";

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

test.serial("three clients of depths 4, 3, 2 run two rounds over HTTP through kill -9 of the server mid-round and between rounds", async (t) => {
    const dir = tempDir(t);
    const {base, cut} = await models(dir);
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const ids = ["a-d4", "b-d3", "c-d2"];
    const tokens = await clientTokens(dataDir, ids);
    const common = ["--rounds", "2", "--clients-per-round", "3", "--min-clients", "2", "--round-timeout", "120", "--aggregation", "layerwise",
        "--plot", path.join(dir, "rounds.svg")];
    let server = await startServer(t, base, dataDir, common);
    // a restarted server listens where the clients know it
    const port = new URL(server.url).port;
    const clients: Proc[] = [];
    const startClient = (i: number, id: string) => spawnCli(t, ["fl", "client", "--server", server.url, "--model", cut[id.split("-")[1]],
        "--data", path.join(dir, `${id}.jsonl`), "--work-dir", path.join(dir, id), "--local-steps", "1", "--r", "4", "--lora-alpha", "8",
        "--batch", "4", "--threads", "1", "--seed", String(i + 1), "--eval-data", path.join(dir, "shared-eval.jsonl"), "--json"], {PPC_GPT_TOKEN: tokens[id]});
    await writeJsonlAtomic(path.join(dir, "shared-eval.jsonl"), copyTask(10, 99));
    for (const [i, id] of ids.entries()) {
        await writeJsonlAtomic(path.join(dir, `${id}.jsonl`), copyTask(16, 10 + i));
        clients.push(startClient(i, id));
    }
    // mid-round: the first accepted upload of round 1 is on disk; the server dies
    await server.proc.waitFor((e) => e.event === "upload_accepted" && e.round === 1, "a round-1 upload");
    await server.proc.kill9();
    server = await startServer(t, base, dataDir, [...common, "--port", port]);
    const resumed = server.proc.events.find((e) => e.event === "listening")!;
    t.is(resumed.resumed_round, 1, "the restarted server resumes round 1");
    // between rounds: round 1 closed, then the server dies again
    await server.proc.waitFor((e) => e.event === "round_closed" && e.round === 1, "round 1 closed");
    await server.proc.kill9();
    t.true(fs.existsSync(roundFile(dataDir, 1)));
    // a client dies too while the server is down, and is started again: it rejoins
    await clients[0].kill9();
    server = await startServer(t, base, dataDir, [...common, "--port", port]);
    clients[0] = startClient(0, ids[0]);
    t.is((await clients[0].waitFor((e) => e.event === "registered", "re-registration")).rejoined, true);
    await server.proc.waitFor((e) => e.event === "finished", "finished", 180_000);
    t.is(await server.proc.exited, 0, server.proc.stderr());
    for (const c of clients)
        t.is(await c.exited, 0, c.stderr());
    // --eval-data: every client scores the same 10 items before and after each local round, with standard errors
    for (const c of clients) {
        const uploads = c.events.filter((e) => e.event === "uploaded");
        t.true(uploads.length > 0);
        for (const e of uploads)
            t.true(e.evalSet.n === 10 && e.evalSetBefore.n === 10 && Number.isFinite(e.evalSet.acc_stderr), JSON.stringify(e));
    }

    for (const n of [1, 2]) {
        const summary = JSON.parse(fs.readFileSync(roundFile(dataDir, n).replace(/\.gguf$/, ".json"), "utf8"));
        t.true(summary.aggregated, `round ${n}: ${summary.note}`);
        t.deepEqual(summary.clients.map((c: {id: string}) => c.id).sort(), ids);
        t.deepEqual(summary.clients.map((c: {layerMap: number[]}) => c.layerMap.length).sort(), [2, 3, 4]);
        for (const c of summary.clients) {
            t.true(c.metrics.accuracy >= 0 && c.metrics.accuracy <= 1);
            t.true(Number.isFinite(c.metrics.trainLoss) && c.metrics.bytesUp > 0 && c.metrics.bytesDown > 0);
        }
        // anyone holding the clients' own copies of their uploads recomputes the server's round file
        const uploads = Object.fromEntries(ids.map((id) => [id, path.join(dir, id, `round-${n}.gguf`)]));
        const again = await recomputeRound(dataDir, n, uploads, "layerwise");
        const stored = await readLoraAdapter(roundFile(dataDir, n));
        const previous = await readLoraAdapter(roundFile(dataDir, n - 1));
        t.is(stored.tensors.length, again.tensors.length);
        for (const s of stored.tensors) {
            const r = again.tensors.find((x) => x.name === s.name)!;
            t.true(maxDiff(s.data, r.data) < 1e-6, `round ${n} ${s.name}`);
        }
        // and the round changed the global adapter (layer 1 is held only by the depth-4 client)
        t.true(stored.tensors.some((s) => maxDiff(s.data, previous.tensors.find((x) => x.name === s.name)!.data) > 0));
    }
    // privacy: nothing the server stored (uploads, state, round files, store) holds a client's item text
    const stored = Buffer.concat(fs.readdirSync(dataDir, {recursive: true, withFileTypes: true}).filter((e) => e.isFile())
        .map((e) => fs.readFileSync(path.join(e.parentPath, e.name))));
    t.true(stored.length > 10_000);
    for (const id of ids) {
        const own = fs.readFileSync(path.join(dir, `${id}.jsonl`));
        for (const line of own.toString("utf8").trim().split("\n")) {
            const item = JSON.parse(line) as {id: string; question: string};
            t.true(own.includes(item.question), "the search sees the text where it is");
            t.false(stored.includes(item.question), `${id}: "${item.question}" found in the server's folder`);
            t.false(stored.includes(item.id), `${id}: item id ${item.id} found in the server's folder`);
        }
    }
    const svg = fs.readFileSync(path.join(dir, "rounds.svg"), "utf8");
    t.regex(svg, /depth 4/);
    t.regex(svg, /depth 2/);
});

test.serial("bad uploads are refused with their reason and logged; a straggler past the deadline is dropped", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const good = await makeToken(dataDir, "good-d2");
    const slow = await makeToken(dataDir, "slow-d3");
    const server = await startServer(t, base, dataDir, ["--rounds", "1", "--clients-per-round", "2", "--min-clients", "1", "--round-timeout", "4"]);
    const call = (token: string, route: string, init: RequestInit = {}) =>
        fetch(`${server.url}${route}`, {...init, headers: {authorization: `Bearer ${token}`, ...(init.headers as Record<string, string> ?? {})}});
    const register = async (token: string, layers: number[]) => {
        const res = await call(token, "/v1/fl/clients", {method: "POST", headers: {"content-type": "application/json"},
            body: JSON.stringify({original_layers: layers, weight: 10, r: 4, lora_alpha: 8})});
        t.is(res.status, 201, await res.text());
    };
    t.is((await call("ppc_nottoken", "/v1/fl/rounds/current")).status, 401);
    await register(good, [0, 2]);
    await register(slow, [0, 2, 3]);
    // a re-registration with another declaration is refused
    const other = await call(good, "/v1/fl/clients", {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({original_layers: [0, 1], weight: 10, r: 4, lora_alpha: 8})});
    t.is(other.status, 409);
    let cur: any;
    for (let i = 0; i < 100 && !(cur?.round === 1); i++)
        cur = await (await call(good, "/v1/fl/rounds/current?wait=5")).json();
    t.is(cur.round, 1);
    t.true(cur.sampled);
    const got = await call(good, "/v1/fl/rounds/1/adapter");
    t.is(got.status, 200);
    const startFile = path.join(dir, "start.gguf");
    fs.writeFileSync(startFile, Buffer.from(await got.arrayBuffer()));
    const start = await readLoraAdapter(startFile);
    t.true(start.tensors.length > 0);
    t.true(start.tensors.every((x) => /^blk\.[01]\./.test(x.name) || !/^blk\./.test(x.name)), "the client's part is in its own numbering");
    const upload = async (token: string, adapter: typeof start, name: string) => {
        const file = path.join(dir, name);
        await writeLoraAdapter(file, adapter);
        return call(token, "/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream",
            "x-ppc-metrics": JSON.stringify({train_loss: 1})}, body: fs.readFileSync(file)});
    };
    const nan = structuredClone(start);
    nan.tensors[2].data[3] = NaN;
    let res = await upload(good, nan, "nan.gguf");
    t.is(res.status, 422);
    const nanBody = await res.json() as {error: string; code: string};
    t.is(nanBody.code, "nonfinite");
    t.regex(nanBody.error, new RegExp(nan.tensors[2].name.replace(/\./g, "\\.")));
    const wrong = structuredClone(start);
    wrong.tensors[0] = {...wrong.tensors[0], shape: [wrong.tensors[0].shape[0] - 1, wrong.tensors[0].shape[1]],
        data: wrong.tensors[0].data.slice(wrong.tensors[0].shape[1])};
    res = await upload(good, wrong, "wrong.gguf");
    t.is(res.status, 422);
    t.is((await res.json() as {code: string}).code, "shape");
    // a tensor of a layer this client does not hold (blk.2: it declared two layers)
    const extra = structuredClone(start);
    extra.tensors.push(...start.tensors.filter((x) => x.name.startsWith("blk.1.")).map((x) => ({...x, name: x.name.replace("blk.1.", "blk.2.")})));
    res = await upload(good, extra, "extra.gguf");
    t.is(res.status, 422);
    // a valid update is accepted
    const fine = structuredClone(start);
    for (const x of fine.tensors)
        x.data = x.data.map((v, i) => v + 0.01 * Math.sin(i));
    res = await upload(good, fine, "fine.gguf");
    t.is(res.status, 201, await res.text());
    t.is((await upload(good, fine, "again.gguf")).status, 409, "a second upload for the round is a duplicate");
    // the straggler downloads its part but uploads after the 4 s deadline
    const slowStart = await call(slow, "/v1/fl/rounds/1/adapter");
    const slowFile = path.join(dir, "slow-start.gguf");
    fs.writeFileSync(slowFile, Buffer.from(await slowStart.arrayBuffer()));
    await server.proc.waitFor((e) => e.event === "round_closed", "round closed at the deadline", 30_000);
    res = await upload(slow, await readLoraAdapter(slowFile), "slow.gguf");
    t.is(res.status, 409);
    await server.proc.exited;

    const summary = JSON.parse(fs.readFileSync(roundFile(dataDir, 1).replace(/\.gguf$/, ".json"), "utf8"));
    t.true(summary.aggregated);
    t.deepEqual(summary.clients.map((c: {id: string}) => c.id), ["good-d2"]);
    t.deepEqual(summary.missing, ["slow-d3"]);
    t.deepEqual(summary.rejected.map((r: {reason: string}) => r.reason), ["nonfinite", "shape", "layer", "duplicate"]);
    t.deepEqual(server.proc.events.filter((e) => e.event === "upload_rejected").map((e) => e.code), ["nonfinite", "shape", "layer", "duplicate"]);
    t.regex(server.proc.stderr(), /rejected \(nonfinite\)/);
    // the aggregate is the accepted update alone (recomputed from the valid file), with no NaN
    const stored = await readLoraAdapter(roundFile(dataDir, 1));
    const again = await recomputeRound(dataDir, 1, {"good-d2": path.join(dir, "fine.gguf")}, "layerwise");
    for (const s of stored.tensors) {
        t.true(s.data.every(Number.isFinite));
        t.true(maxDiff(s.data, again.tensors.find((x) => x.name === s.name)!.data) < 1e-6);
    }
});

test.serial("fl server / fl client: usage errors exit 2, a missing token exits 1 naming PPC_GPT_TOKEN", async (t) => {
    const dir = tempDir(t);
    const noBase = await runCli(["fl", "server", "--base", path.join(dir, "none.gguf"), "--data-dir", path.join(dir, "d")]);
    t.is(noBase.code, 2);
    t.regex(noBase.stderr, /--base .*none\.gguf does not exist/);
    const badPort = await runCli(["fl", "server", "--base", stories260K, "--data-dir", path.join(dir, "d"), "--port", "70000"]);
    t.is(badPort.code, 2);
    t.regex(badPort.stderr, /--port/);
    const lowT = await runCli(["fl", "server", "--base", stories260K, "--data-dir", path.join(dir, "d"), "--secure-aggregation", "--secagg-threshold", "1"]);
    t.is(lowT.code, 2);
    t.regex(lowT.stderr, /--secagg-threshold must be an integer >= 2/);
    const flex = await runCli(["fl", "server", "--base", stories260K, "--data-dir", path.join(dir, "d"), "--secure-aggregation", "--aggregation", "flexlora"]);
    t.is(flex.code, 2);
    t.regex(flex.stderr, /--secure-aggregation sums per-layer factors/);
    t.false(fs.existsSync(path.join(dir, "d", "state.json")), "a refused command creates no federation");
    const env = {...process.env};
    delete env.PPC_GPT_TOKEN;
    const noToken = await runCli(["fl", "client", "--server", "http://127.0.0.1:9", "--model", stories260K, "--data", stories260K,
        "--work-dir", path.join(dir, "w")], {env});
    t.is(noToken.code, 1);
    t.regex(noToken.stderr, /PPC_GPT_TOKEN/);
});

/** Reads a text/event-stream body to its end: [event name, parsed data] per event (comments skipped). */
async function readEventStream(res: Response): Promise<[string, any][]> {
    const out: [string, any][] = [];
    const text = await res.text();
    for (const block of text.split("\n\n")) {
        const name = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (name && data)
            out.push([name, JSON.parse(data)]);
    }
    return out;
}

test.serial("GET /v1/fl/events streams to registered clients the events fl server --json prints, as far as they are theirs, and ends after finished", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.join(dir, "server");
    fs.mkdirSync(dataDir);
    const token = await makeToken(dataDir, "solo");
    const otherToken = await makeToken(dataDir, "other");
    const server = await startServer(t, base, dataDir, ["--rounds", "1", "--clients-per-round", "2", "--round-timeout", "60"]);
    const callAs = (tok: string, route: string, init: RequestInit = {}) =>
        fetch(`${server.url}${route}`, {...init, headers: {authorization: `Bearer ${tok}`, ...(init.headers as Record<string, string> ?? {})}});
    const call = (route: string, init: RequestInit = {}) => callAs(token, route, init);
    const register = async (tok: string) => t.is((await callAs(tok, "/v1/fl/clients", {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({original_layers: [0, 2], weight: 10, r: 4, lora_alpha: 8})})).status, 201);
    t.is((await fetch(`${server.url}/v1/fl/events`)).status, 401);
    // the stream is for the federation's clients: a token not registered in it is refused
    const early = await call("/v1/fl/events");
    t.is(early.status, 403);
    t.is((await early.json() as {code: string}).code, "forbidden");
    await register(token);
    const stream = await call("/v1/fl/events");
    t.is(stream.status, 200);
    t.regex(stream.headers.get("content-type") ?? "", /^text\/event-stream/);
    const events = readEventStream(stream);
    await register(otherToken);
    let cur: any;
    for (let i = 0; i < 100 && cur?.round !== 1; i++)
        cur = await (await call("/v1/fl/rounds/current?wait=5")).json();
    const start = Buffer.from(await (await call("/v1/fl/rounds/1/adapter")).arrayBuffer());
    t.is((await call("/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream"}, body: start})).status, 201);
    const otherStart = Buffer.from(await (await callAs(otherToken, "/v1/fl/rounds/1/adapter")).arrayBuffer());
    t.is((await callAs(otherToken, "/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream"},
        body: otherStart})).status, 201);
    const got = await events;
    // the other client's registration and upload are not solo's business
    t.deepEqual(got.map(([name]) => name), ["status", "round_started", "upload_accepted", "round_closed", "finished"]);
    t.like(got[0][1], {event: "status", completed: 0, finished: false, registered: true});
    await server.proc.waitFor((e) => e.event === "finished", "finished");
    const printed = (name: string) => server.proc.events.find((e) => e.event === name)!;
    t.deepEqual(printed("round_started").sampled.sort(), ["other", "solo"]);
    t.deepEqual(got[1][1], {...printed("round_started"), sampled: ["solo"], sampled_count: 2});
    t.deepEqual(got[2][1], server.proc.events.find((e) => e.event === "upload_accepted" && e.client === "solo"));
    const closed = got[3][1];
    t.deepEqual(closed.clients.map((c: {id: string}) => c.id), ["solo"]);
    t.is(closed.contributor_count, 2);
    t.is(closed.file, "rounds/round-1.gguf", "no absolute server path");
    t.false(JSON.stringify(got).includes("other"), "no event names the other client");
    t.deepEqual(got[4][1], printed("finished"));
    // a stream opened after the last round gets the status and ends
    const late = await readEventStream(await call("/v1/fl/events"));
    t.deepEqual(late.map(([name]) => name), ["status"]);
    t.true(late[0][1].finished);
    // the closed round as each client reads it: its own metrics and the aggregate
    const summary = await (await call("/v1/fl/rounds/1")).json() as any;
    t.deepEqual(summary.clients.map((c: {id: string}) => c.id), ["solo"]);
    t.deepEqual(summary.sampled, ["solo"]);
    t.false(JSON.stringify(summary).includes("other"));
    // per matrix how many updates entered (both clients hold layers 0 and 2), never their weights
    t.true(summary.targets.some((x: {holder_count: number}) => x.holder_count === 2));
    t.true(summary.targets.every((x: {holder_count: number; weight?: number}) => [0, 2].includes(x.holder_count) && x.weight === undefined));
    // a token of this data dir that never registered reads no round, global or events
    const stranger = await makeToken(dataDir, "stranger");
    for (const route of ["/v1/fl/rounds/1", "/v1/fl/rounds/1/global", "/v1/fl/events"]) {
        const res = await callAs(stranger, route);
        t.is(res.status, 403, route);
        t.is((await res.json() as {code: string}).code, "forbidden");
    }
});
