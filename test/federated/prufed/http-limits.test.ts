// `fl server` limits over real HTTP (an in-process server on loopback, tokens from the real
// `server token` verb): a 1 MiB JSON limit while uploads take the large one and stream to disk, a
// rate limit per token on writes, a cap on open streams and long polls per token, revocation
// ending them, the data dir created 0700, the compressed global cached, and error messages without
// the server's paths.
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import test from "ava";
import {startFlServer, type FlServer} from "../../../ts/federated/prufed/http-server.js";
import type {HttpLimits} from "../../../ts/federated/http-wire.js";
import {runCli, tempDir} from "../../helpers.js";
import {makeToken} from "../server-process.js";
import {models} from "./http-process.js";

async function flServer(t: import("ava").ExecutionContext, dir: string, limits: Partial<HttpLimits> = {}, rounds = 1): Promise<FlServer> {
    const {base} = await models(dir);
    const server = await startFlServer({
        dataDir: path.join(dir, "server"), port: 0, limits, log: () => {},
        config: {base, aggregation: "layerwise", rounds, clientsPerRound: 2, roundTimeout: 600, seed: 1, r: 4, loraAlpha: 8,
            maxUploadBytes: 4 * 1024 * 1024},
    });
    t.teardown(() => server.close());
    return server;
}

const caller = (url: string, token: string) => (route: string, init: RequestInit = {}) =>
    fetch(`${url}${route}`, {...init, headers: {authorization: `Bearer ${token}`, ...(init.headers as Record<string, string> ?? {})}});
const registration = (extra: Record<string, unknown> = {}) => ({method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({original_layers: [0, 2], weight: 10, r: 4, lora_alpha: 8, ...extra})});

test.serial("JSON routes take 1 MiB, uploads the large limit and go to disk; the data dir is 0700; the global is compressed once", async (t) => {
    const dir = tempDir(t);
    const dataDir = path.join(dir, "server");
    const a = await makeToken(dataDir, "a");
    const b = await makeToken(dataDir, "b");
    t.is(fs.statSync(dataDir).mode & 0o777, 0o700, "server token create made the data dir owner-only");
    const server = await flServer(t, dir);
    const callA = caller(server.url, a), callB = caller(server.url, b);
    // a registration padded past 1 MiB (a tensors map of many names) is refused before it is parsed
    const tensors = Object.fromEntries(Array.from({length: 40_000}, (_, i) => [`blk.0.pad_${"x".repeat(20)}_${i}.weight`, [4, 4]]));
    const big = await callA("/v1/fl/clients", registration({tensors}));
    t.is(big.status, 413);
    t.is((await big.json() as {code: string}).code, "payload_too_large");
    t.is((await callA("/v1/fl/clients", registration())).status, 201);
    t.is((await callB("/v1/fl/clients", registration())).status, 201);
    let cur: {round?: number} = {};
    for (let i = 0; i < 50 && cur.round !== 1; i++)
        cur = await (await callA("/v1/fl/rounds/current?wait=2")).json() as {round?: number};
    t.is(cur.round, 1);
    // an upload over 1 MiB (the adapter padded with a tail the GGUF reader ignores) is received, then judged
    const start = Buffer.from(await (await callA("/v1/fl/rounds/1/adapter")).arrayBuffer());
    const padded = Buffer.concat([start, Buffer.alloc(1536 * 1024)]);
    const up = await callA("/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream"}, body: padded});
    t.not(up.status, 413, await up.clone().text());
    // over --max-upload-mb (4 MiB here, decompressed): 413 while streaming
    const huge = zlib.gzipSync(Buffer.alloc(5 * 1024 * 1024));
    const over = await callB("/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream", "content-encoding": "gzip"},
        body: huge});
    t.is(over.status, 413);
    // a bad upload's reason names no server path
    const bad = await callB("/v1/fl/rounds/1/upload", {method: "PUT", headers: {"content-type": "application/octet-stream"}, body: Buffer.from("not a gguf")});
    const badBody = await bad.json() as {error: string; code: string};
    t.true(bad.status >= 400, JSON.stringify(badBody));
    t.false(badBody.error.includes(dir), badBody.error);
    // the global of round 0: compressed once into rounds/round-0.gguf.gz, then served from there
    const first = Buffer.from(await (await callA("/v1/fl/rounds/0/global", {headers: {"accept-encoding": "identity"}})).arrayBuffer());
    const cached = path.join(dataDir, "rounds", "round-0.gguf.gz");
    t.true(fs.existsSync(cached));
    t.deepEqual(zlib.gunzipSync(fs.readFileSync(cached)), fs.readFileSync(path.join(dataDir, "rounds", "round-0.gguf")));
    t.true(first.length > 0);
    fs.writeFileSync(cached, zlib.gzipSync(Buffer.from("the cached copy")));
    const second = Buffer.from(await (await callA("/v1/fl/rounds/0/global")).arrayBuffer());
    t.is(second.toString(), "the cached copy", "the second download is the cached file, not a fresh compression");
});

test.serial("writes are rate limited per token; open streams and long polls are capped per token and end when the token is revoked", async (t) => {
    const dir = tempDir(t);
    const dataDir = path.join(dir, "server");
    const a = await makeToken(dataDir, "a");
    const b = await makeToken(dataDir, "b");
    const server = await flServer(t, dir, {writesPerMinute: 3, maxStreamsPerToken: 2});
    const callA = caller(server.url, a), callB = caller(server.url, b);
    for (let i = 0; i < 3; i++)
        t.true([200, 201].includes((await callA("/v1/fl/clients", registration())).status));
    const limited = await callA("/v1/fl/clients", registration());
    t.is(limited.status, 429);
    t.is((await limited.json() as {code: string}).code, "rate_limited");
    // another token has its own budget (b stays unregistered: its empty declaration is refused, not limited); reads are not counted
    t.is((await callB("/v1/fl/clients", {method: "POST", headers: {"content-type": "application/json"}, body: "{}"})).status, 400);
    t.is((await callA("/v1/fl/rounds/current")).status, 200);

    // two open at once (a stream and a long poll; one client is registered, the round waits for a second)
    const stream = await callA("/v1/fl/events");
    t.is(stream.status, 200);
    const poll = callA("/v1/fl/rounds/current?wait=60");
    await new Promise((r) => setTimeout(r, 300));
    const third = await callA("/v1/fl/events");
    t.is(third.status, 429);
    t.is((await third.json() as {code: string}).code, "too_many_streams");
    const text = stream.text();
    const revoked = await runCli(["server", "token", "revoke", "a", "--data-dir", dataDir]);
    t.is(revoked.code, 0, revoked.stderr);
    // the stream ends, the long poll answers 401
    t.regex(await text, /event: status/);
    const polled = await poll;
    t.is(polled.status, 401);
    t.is((await polled.json() as {code: string}).code, "token_revoked");
});
