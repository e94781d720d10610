// HTTPS with --tls-cert/--tls-key (a self-signed certificate made by openssl for the test), two
// jobs at once with --workers 2, and the OpenAPI document generated from the same schemas that
// validate requests.
import {execFileSync} from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import path from "node:path";
import test from "ava";
import {jobSpecDefaults, submitJobSchema} from "../../ts/federated/protocol.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer} from "../synth/openai-server.js";
import {makeToken, startServer} from "./server-process.js";

const maybe = hasShared ? test.serial : test.skip;

function httpsGet(url: string, ca: Buffer, headers: Record<string, string> = {}, post?: string): Promise<{status: number; body: string}> {
    return new Promise((resolve, reject) => {
        const req = https.request(url, {ca, headers: post === undefined ? headers : {...headers, "content-type": "application/json"},
            method: post === undefined ? "GET" : "POST"}, (res) => {
            let body = "";
            res.on("data", (d) => body += d);
            res.on("end", () => resolve({status: res.statusCode!, body}));
        });
        req.on("error", reject);
        req.end(post);
    });
}

maybe("the server speaks HTTPS with the given certificate and serves its OpenAPI document", async (t) => {
    const dir = tempDir(t);
    const cert = path.join(dir, "cert.pem"), key = path.join(dir, "key.pem");
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], {stdio: "ignore"});
    const gen = await ScriptedChatServer.start(() => ({hang: true}));
    t.teardown(() => gen.stop());
    const token = await makeToken(path.join(dir, "data"), "acme");
    const server = await startServer(t, path.join(dir, "data"), ["--model", stories260K, "--generator-url", gen.baseUrl,
        "--generator-remote-model", "teacher", "--tls-cert", cert, "--tls-key", key, "--workers", "2"]);
    t.regex(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const ca = fs.readFileSync(cert);
    const info = await httpsGet(`${server.url}/v1/info`, ca);
    t.is(info.status, 200);
    t.deepEqual(JSON.parse(info.body).generator, {kind: "remote", name: "teacher"});
    // plain HTTP to the TLS port gets no API
    await t.throwsAsync(fetch(server.url.replace("https:", "http:") + "/v1/info"));
    // an unknown CA is refused by the client
    await t.throwsAsync(httpsGet(`${server.url}/v1/info`, Buffer.from("")));
    t.is((await httpsGet(`${server.url}/v1/jobs`, ca)).status, 401);

    // --workers 2: two jobs run at once (their generator requests hang, so both stay in synth)
    const authz = {authorization: `Bearer ${token}`};
    const job = (q: string) => JSON.stringify({items: [{id: q, question: `${q}?`, choices: [{label: "A", text: "a"}, {label: "B", text: "b"}]}]});
    for (const q of ["one", "two"])
        t.is((await httpsGet(`${server.url}/v1/jobs`, ca, authz, job(q))).status, 202);
    const deadline = Date.now() + 30_000;
    let states: string[] = [];
    while (Date.now() < deadline) {
        states = JSON.parse((await httpsGet(`${server.url}/v1/jobs`, ca, authz)).body).jobs.map((j: {status: string}) => j.status);
        if (states.every((x) => x === "running"))
            break;
        await new Promise((r) => setTimeout(r, 100));
    }
    t.deepEqual(states, ["running", "running"]);

    const doc = JSON.parse((await httpsGet(`${server.url}/v1/openapi.json`, ca)).body);
    t.regex(doc.openapi, /^3\./);
    for (const route of ["/v1/info", "/v1/perturbation-kit", "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/jobs/{id}/model"])
        t.truthy(doc.paths[route], route);
    const body = doc.paths["/v1/jobs"].post.requestBody.content["application/json"].schema;
    t.deepEqual(body.required, [...submitJobSchema.required]);
    t.is(body.properties.items.items.additionalProperties, false);
    t.is(body.properties.spec.properties.k.default, jobSpecDefaults.k);
    t.truthy(doc.paths["/v1/jobs/{id}"].delete);
});
