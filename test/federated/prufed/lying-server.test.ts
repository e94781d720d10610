// A real `fl client` process against a real HTTP server that speaks the secure-aggregation protocol
// but lies (lying-server.ts): it replaces the client's keys in the roster, lowers the threshold to 1,
// sends a roster of two, relays no share boxes, leaves the client out of the survivor set, runs the
// round a second time after the client answered its unmask phase, states another secure-aggregation
// version, or runs no secure aggregation against --require-secure-aggregation. The client refuses
// each (exit 1, the reason on stderr) and sends nothing past the point where it refused; in the
// honest run its masked upload carries no loss or accuracy in the clear.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeJsonlAtomic} from "../../../ts/data/jsonl.js";
import {copyTask} from "../../../scripts/prufed/copy-task.js";
import {tempDir} from "../../helpers.js";
import {models, spawnCli} from "./http-process.js";
import {startLyingServer, type Lie, type Recorded} from "./lying-server.js";

const sent = (requests: Recorded[], method: string, pattern: RegExp) => requests.filter((r) => r.method === method && pattern.test(r.url));

async function runAgainst(t: import("ava").ExecutionContext, lie: Lie, extra: string[] = [], options: {again?: boolean} = {}) {
    const dir = tempDir(t);
    const {base, cut} = await models(dir);
    const server = await startLyingServer(dir, base, lie, options);
    t.teardown(() => server.close());
    await writeJsonlAtomic(path.join(dir, "items.jsonl"), copyTask(16, 3));
    const client = spawnCli(t, ["fl", "client", "--server", server.url, "--model", cut.d3, "--data", path.join(dir, "items.jsonl"),
        "--work-dir", path.join(dir, "w"), "--local-steps", "1", "--r", "4", "--lora-alpha", "8", "--batch", "4", "--threads", "1", "--json", ...extra],
    {PPC_GPT_TOKEN: "any"});
    const code = await client.exited;
    return {code, stderr: client.stderr(), requests: server.requests, dir};
}

const refusals: [Lie, RegExp, RegExp][] = [
    ["replaced-key", /other public keys under its id/, /\/secagg\/shares$/],
    ["low-threshold", /threshold 1 for a roster of 3 is below 2/, /\/secagg\/shares$/],
    ["small-roster", /the roster has 2 member\(s\), fewer than --secagg-min-clients 3/, /\/secagg\/shares$/],
];
for (const [lie, reason, never] of refusals)
    test(`a lying server (${lie}): the client refuses before sending its shares`, async (t) => {
        const r = await runAgainst(t, lie);
        t.is(r.code, 1, r.stderr);
        t.regex(r.stderr, reason);
        t.is(sent(r.requests, "POST", /\/secagg\/keys$/).length, 1, "it sent its public keys (nothing secret)");
        t.deepEqual(sent(r.requests, "POST", never), [], "no share box left the client");
        t.deepEqual(sent(r.requests, "PUT", /\/secagg\/masked$/), []);
    });

test("a lying server (no share boxes relayed): the client refuses before its masked input", async (t) => {
    const r = await runAgainst(t, "no-shares");
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /share boxes from 0 other member\(s\), fewer than t - 1 = 1/);
    t.is(sent(r.requests, "POST", /\/secagg\/shares$/).length, 1);
    t.deepEqual(sent(r.requests, "PUT", /\/secagg\/masked$/), [], "no masked input");
});

test("a lying server (the client listed as dropped): the client refuses to unmask", async (t) => {
    const r = await runAgainst(t, "not-survivor");
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /refuses to unmask: it is not in the survivor set/);
    t.is(sent(r.requests, "PUT", /\/secagg\/masked$/).length, 1);
    t.deepEqual(sent(r.requests, "POST", /\/secagg\/unmask$/), [], "no unmasking share (it would release its own key)");
});

test("a lying server that runs the round again after the client unmasked: no second answer, no second keys; metrics only masked", async (t) => {
    const r = await runAgainst(t, "none", [], {again: true});
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /refuses round 1: it already answered its unmask phase/);
    t.is(sent(r.requests, "POST", /\/secagg\/unmask$/).length, 1, "one unmask answer");
    t.is(sent(r.requests, "POST", /\/secagg\/keys$/).length, 1, "the second run of round 1 got no keys");
    t.true(fs.existsSync(path.join(r.dir, "w", "round-1.secagg-unmask.json")), "the answer is recorded on disk");
    // the masked upload: loss and accuracy travel only as masked coordinates
    const masked = sent(r.requests, "PUT", /\/secagg\/masked$/);
    t.is(masked.length, 1);
    const clear = JSON.parse(String(masked[0].headers["x-ppc-metrics"])) as Record<string, number>;
    t.deepEqual(Object.keys(clear).sort(), ["bytes_down", "bytes_up", "seconds"]);
    // every secure message carried the protocol version
    for (const m of r.requests.filter((x) => x.url.includes("/secagg/")))
        t.is(m.headers["x-ppc-secagg-version"], "prufed-secagg/1", `${m.method} ${m.url}`);
});

test("--share-metrics sends the loss and accuracy in the clear beside the masked input", async (t) => {
    const r = await runAgainst(t, "none", ["--share-metrics"]);
    t.is(r.code, 0, r.stderr);
    const masked = sent(r.requests, "PUT", /\/secagg\/masked$/);
    const clear = JSON.parse(String(masked[0].headers["x-ppc-metrics"])) as Record<string, number>;
    t.true(Number.isFinite(clear.train_loss) && Number.isFinite(clear.accuracy), JSON.stringify(clear));
});

test("--require-secure-aggregation against a server without it: refused at registration, nothing downloaded or uploaded", async (t) => {
    const r = await runAgainst(t, "plain", ["--require-secure-aggregation"]);
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /does not use secure aggregation; --require-secure-aggregation refuses/);
    t.deepEqual(r.requests.map((x) => `${x.method} ${x.url}`), ["POST /v1/fl/clients"]);
});

test("a server stating another secure-aggregation version is refused at registration", async (t) => {
    const r = await runAgainst(t, "old-version");
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /speaks secure-aggregation protocol "prufed-secagg\/0"; this client speaks prufed-secagg\/1/);
    t.deepEqual(r.requests.map((x) => `${x.method} ${x.url}`), ["POST /v1/fl/clients"]);
});
