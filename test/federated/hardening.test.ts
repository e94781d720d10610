// The job server and both clients against a curious operator and a bad network: plain HTTP off
// loopback refused without --insecure (servers and clients, exit 2), private folders 0700, a
// revoked token's event stream ended, job errors without the generator's URL or server paths, and
// a client that checks the names a server chooses and caps the event-stream line length.
import {spawn} from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import type {AddressInfo} from "node:net";
import path from "node:path";
import test from "ava";
import {FederatedClient, FederatedError} from "../../ts/federated/client/http.js";
import {openState} from "../../ts/federated/client/flow.js";
import {EventStreamError, readEventStream, sanitizeMessage} from "../../ts/federated/http-wire.js";
import {cliPath, hasShared, runCli, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer} from "../synth/openai-server.js";
import {auth, getJson, items, makeToken, startServer, submit} from "./server-process.js";
import {models} from "./prufed/http-process.js";

const maybe = hasShared ? test.serial : test.skip;

/** A real HTTP server answering every request with `handler` (a server that misbehaves on purpose). */
async function rogueServer(t: import("ava").ExecutionContext, handler: http.RequestListener): Promise<string> {
    const server = http.createServer(handler);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    t.teardown(() => new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
    }));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test.serial("servers refuse plain HTTP off loopback without --insecure and warn with it; clients refuse http:// to another host", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const fl = ["fl", "server", "--base", base, "--data-dir", path.join(dir, "fl"), "--host", "0.0.0.0", "--port", "0", "--rounds", "1", "--json"];
    const refused = await runCli(fl);
    t.is(refused.code, 2, refused.stderr);
    t.regex(refused.stderr, /--insecure/);
    t.regex(refused.stderr, /--tls-cert/);
    // with --insecure it starts, warns, and is stopped
    const child = spawn(process.execPath, [cliPath, ...fl, "--insecure"], {stdio: ["ignore", "pipe", "pipe"]});
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    const listening = await new Promise<string>((resolve, reject) => {
        child.stdout!.once("data", (d) => resolve(String(d)));
        child.once("exit", (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    t.regex(listening, /"listening"/);
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    t.regex(stderr, /warning: serving plain HTTP on 0\.0\.0\.0 \(--insecure\)/);

    const env = {PPC_GPT_TOKEN: "ppc_" + "A".repeat(43)};
    const info = await runCli(["client", "info", "--server", "http://192.0.2.7:8080"], {env});
    t.is(info.code, 2, info.stderr);
    t.regex(info.stderr, /cleartext.*--insecure/);
    const flClient = await runCli(["fl", "client", "--server", "http://example.invalid:8090", "--model", base, "--data", base,
        "--work-dir", path.join(dir, "w")], {env});
    t.is(flClient.code, 2, flClient.stderr);
    t.regex(flClient.stderr, /--insecure/);
    // https:// and loopback http:// stay allowed; --insecure lets a client through (it then fails to connect, exit 1)
    t.notThrows(() => new FederatedClient({server: "https://192.0.2.7:8443", token: ""}));
    t.notThrows(() => new FederatedClient({server: "http://localhost:8080", token: ""}));
    t.notThrows(() => new FederatedClient({server: "http://192.0.2.7:8080", token: "", insecure: true}));
    t.throws(() => new FederatedClient({server: "http://192.0.2.7:8080", token: ""}), {instanceOf: FederatedError});
});

test("a client's state folder is created 0700", (t) => {
    const dir = tempDir(t);
    const data = path.join(dir, "items.jsonl");
    fs.writeFileSync(data, JSON.stringify({id: "q", question: "Q?", choices: [{label: "A", text: "x"}], answer: "A"}) + "\n");
    openState("http://127.0.0.1:8080", {data: {data}, perturb: {mechanism: "custext", epsilon: 3}, spec: {}, finish: {}, stateDir: path.join(dir, "a", "state")});
    t.is(fs.statSync(path.join(dir, "a", "state")).mode & 0o777, 0o700);
});

maybe("the job server: a revoked token's event stream ends; a job's error names neither the generator's URL nor a server path", async (t) => {
    const dir = tempDir(t);
    // the generator refuses every request: the job fails in synth with the generator's error
    const gen = await ScriptedChatServer.start(() => ({status: 400, body: {error: {message: "model not found"}}}));
    t.teardown(() => gen.stop());
    const hang = await ScriptedChatServer.start(() => ({hang: true}));
    t.teardown(() => hang.stop());
    const alice = await makeToken(dir, "alice");
    t.is(fs.statSync(dir).mode & 0o777, 0o700);
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "1"]);
    const job = await submit(server.url, alice, {spec: {k: 1}, items: items(2)});
    t.is(job.status, 202, JSON.stringify(job.json));
    let status: {status: string; error: string | null} | undefined;
    for (let i = 0; i < 300 && !["failed", "succeeded"].includes(status?.status ?? ""); i++) {
        status = (await getJson(server.url, alice, `/v1/jobs/${job.json.id}`)).json;
        await new Promise((r) => setTimeout(r, 100));
    }
    t.is(status!.status, "failed");
    t.truthy(status!.error);
    const port = new URL(gen.baseUrl).port;
    t.false(status!.error!.includes(port), status!.error!);
    t.false(status!.error!.includes(dir), status!.error!);
    await server.stop();

    // a job that stays in synth: its event stream is open until the token is revoked
    const again = await startServer(t, dir, ["--model", stories260K, "--generator-url", hang.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "1"]);
    const second = await submit(again.url, alice, {spec: {k: 1}, items: items(2)});
    t.is(second.status, 202);
    const stream = await fetch(`${again.url}/v1/jobs/${second.json.id}/events`, {headers: auth(alice)});
    t.is(stream.status, 200);
    const body = stream.text();
    const revoke = await runCli(["server", "token", "revoke", "alice", "--data-dir", dir]);
    t.is(revoke.code, 0, revoke.stderr);
    t.regex(await body, /event: status/, "the stream ended after the revocation");
});

test("the client checks names the server chooses before they go into paths, and caps event-stream lines", async (t) => {
    const dir = tempDir(t);
    const evil = await rogueServer(t, (req, res) => {
        res.writeHead(req.url === "/v1/jobs" ? 202 : 200, {"content-type": "application/json"});
        res.end(JSON.stringify({id: "../../../etc/job", status: "queued", location: "/v1/jobs/x"}));
    });
    const client = new FederatedClient({server: evil, token: "ppc_" + "A".repeat(43)});
    const submitted = await t.throwsAsync(client.submit({items: items(1)}, "key-1"), {instanceOf: FederatedError});
    t.regex(submitted!.message, /job id.*refused/);
    const kit = await t.throwsAsync(client.perturbationKit(dir, {sha256: "../../outside", size: 10}), {instanceOf: FederatedError});
    t.regex(kit!.message, /\^\[0-9a-f\]\{64\}\$/);
    t.false(fs.existsSync(path.join(dir, "..", "outside")));

    // an event stream whose line never ends: refused at the cap, not buffered without bound
    const endless = await rogueServer(t, (_req, res) => {
        res.writeHead(200, {"content-type": "text/event-stream"});
        const chunk = "x".repeat(64 * 1024);
        const timer = setInterval(() => res.write(chunk), 1);
        res.on("close", () => clearInterval(timer));
        res.write("event: status\ndata: ");
    });
    const res = await fetch(endless);
    await t.throwsAsync(readEventStream(res.body!, {onEvent: () => {}, maxLineBytes: 256 * 1024}), {instanceOf: EventStreamError});
});

test("error messages for clients lose absolute paths and URLs, keep the protocol's routes", (t) => {
    t.is(sanitizeMessage("ENOENT: no such file or directory, open '/srv/ppc/jobs/job_1/items.jsonl'"),
        "ENOENT: no such file or directory, open '…/items.jsonl'");
    t.is(sanitizeMessage("/srv/ppc/incoming/a-1.gguf: not a GGUF file"), "…/a-1.gguf: not a GGUF file");
    t.is(sanitizeMessage("generator http://10.0.0.2:8000/v1/chat/completions answered 500"), "generator <url> answered 500");
    t.is(sanitizeMessage("no route GET /v1/fl/rounds/1/x"), "no route GET /v1/fl/rounds/1/x");
});

maybe("the job server caps job specs, fails a job past its time budget, and erases finished jobs after --retention", async (t) => {
    const dir = tempDir(t);
    const hang = await ScriptedChatServer.start(() => ({hang: true}));
    t.teardown(() => hang.stop());
    const alice = await makeToken(dir, "alice");
    // retention 0.00005 days = 4.3 s
    const server = await startServer(t, dir, ["--model", stories260K, "--generator-url", hang.baseUrl, "--generator-remote-model", "teacher",
        "--threads", "1", "--max-k", "4", "--max-steps", "50", "--job-time-budget", "1", "--retention", "0.00005"]);
    for (const [spec, flag] of [[{k: 5}, "--max-k"], [{server_steps: 51}, "--max-steps"]] as const) {
        const over = await submit(server.url, alice, {spec, items: items(2)});
        t.is(over.status, 422, JSON.stringify(over.json));
        t.is(over.json.code, "spec_over_limit");
        t.true(over.json.error.includes(flag), over.json.error);
    }
    const job = await submit(server.url, alice, {spec: {k: 4, server_steps: 50}, items: items(2)});
    t.is(job.status, 202, JSON.stringify(job.json));
    // the generator never answers: the budget ends the job
    let status: {status: string; error: string | null} | undefined;
    for (let i = 0; i < 200 && status?.status !== "failed"; i++) {
        status = (await getJson(server.url, alice, `/v1/jobs/${job.json.id}`)).json;
        await new Promise((r) => setTimeout(r, 100));
    }
    t.is(status!.status, "failed");
    t.regex(status!.error!, /time budget of 1 s/);
    // and once --retention has passed, nothing of it is left
    let gone = 0;
    for (let i = 0; i < 200 && gone !== 404; i++) {
        gone = (await getJson(server.url, alice, `/v1/jobs/${job.json.id}`)).status;
        await new Promise((r) => setTimeout(r, 100));
    }
    t.is(gone, 404);
    t.false(fs.existsSync(path.join(dir, "jobs", job.json.id)));
});
