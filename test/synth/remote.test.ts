// The OpenAI-compatible backend against a real local HTTP server with scripted misbehaviour.
import net from "node:net";
import test from "ava";
import {GeneratorError, type GenerateRequest} from "../../ts/synth/generator.js";
import {answerSchema} from "../../ts/synth/prompts.js";
import {chatCompletionsUrl, createRemoteGenerator, parseRetryAfter, type RetryInfo} from "../../ts/synth/remote.js";
import {ScriptedChatServer, type Reply} from "./openai-server.js";

const ok = (content = "hello"): Reply => ({content});
const req = (extra: Partial<GenerateRequest> = {}): GenerateRequest =>
    ({messages: [{role: "user", content: "Say hello"}], temperature: 0.7, maxTokens: 32, ...extra});
const fast = {retryBaseMs: 20, retryMaxMs: 100};

async function serve(t: any, script: (n: number) => Reply): Promise<ScriptedChatServer> {
    const server = await ScriptedChatServer.start((r) => script(r.n));
    t.teardown(() => server.stop());
    return server;
}

/** A port with nothing listening on it. */
async function deadPort(): Promise<number> {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    return port;
}

test("base URLs resolve to the chat-completions endpoint; Retry-After parses seconds and dates", (t) => {
    t.is(chatCompletionsUrl("http://h:8000/v1").href, "http://h:8000/v1/chat/completions");
    t.is(chatCompletionsUrl("http://h:8000/v1/").href, "http://h:8000/v1/chat/completions");
    t.is(chatCompletionsUrl("http://h:8000").href, "http://h:8000/v1/chat/completions");
    t.is(chatCompletionsUrl("https://h/openai/v1/chat/completions").href, "https://h/openai/v1/chat/completions");
    t.throws(() => chatCompletionsUrl("h:8000 /v1"), {instanceOf: GeneratorError});
    t.throws(() => chatCompletionsUrl("ftp://h/v1"), {message: /http/});
    t.is(parseRetryAfter("2"), 2000);
    t.is(parseRetryAfter("0.5"), 500);
    t.is(parseRetryAfter(new Date(10_000 + 3000).toUTCString(), 10_000), 3000);
    t.is(parseRetryAfter(null), undefined);
    t.is(parseRetryAfter("soon"), undefined);
});

test("a request carries model, messages, sampling fields, schema and the API key from the named variable", async (t) => {
    const server = await serve(t, () => ok(JSON.stringify({solution: "s", final_answer: "A"})));
    process.env.PPC_SYNTH_TEST_KEY = "sk-test-123";
    t.teardown(() => delete process.env.PPC_SYNTH_TEST_KEY);
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "teacher-70b", apiKeyEnv: "PPC_SYNTH_TEST_KEY"});
    const r = await gen.generate(req({jsonSchema: {name: "answer", schema: answerSchema(["A", "B"])}, seed: 42, stop: ["<end>"]}));
    t.is(r.text, JSON.stringify({solution: "s", final_answer: "A"}));
    t.is(r.finishReason, "stop");
    t.true(r.structured);
    t.is(r.completionTokens, 20);
    const sent = server.requests[0];
    t.is(sent.headers.authorization, "Bearer sk-test-123");
    t.is(sent.body.model, "teacher-70b");
    t.is(sent.body.temperature, 0.7);
    t.is(sent.body.max_tokens, 32);
    t.is(sent.body.seed, 42);
    t.deepEqual(sent.body.stop, ["<end>"]);
    t.is(sent.body.stream, false);
    t.is(sent.body.response_format.type, "json_schema");
    t.is(sent.body.response_format.json_schema.name, "answer");
    t.deepEqual(sent.body.response_format.json_schema.schema.properties.final_answer, {type: "string", enum: ["A", "B"]});
    t.is(gen.structuredOutput, "enforced");
    t.is(gen.name, `openai:teacher-70b@${new URL(server.baseUrl).host}`);
});

test("429 with Retry-After is retried after the server's delay, then succeeds", async (t) => {
    const server = await serve(t, (n) => n === 0 ? {status: 429, headers: {"retry-after": "1"}, body: {error: {message: "rate limited"}}} : ok("done"));
    const retries: RetryInfo[] = [];
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast, onRetry: (i) => retries.push(i)});
    const r = await gen.generate(req());
    t.is(r.text, "done");
    t.is(server.requests.length, 2);
    t.is(retries.length, 1);
    t.regex(retries[0].reason, /HTTP 429: rate limited/);
    t.true(retries[0].delayMs >= 1000, `delay ${retries[0].delayMs}`);
    // the client waited at least what Retry-After asked (a lower bound: load can only make it later)
    t.true(server.requests[1].at - server.requests[0].at >= 950);
    t.deepEqual(gen.stats.failures, {"429": 1});
});

test("retry-after-ms is honoured; an event stream sent despite stream:false is folded into one reply", async (t) => {
    const sse = [
        `data: ${JSON.stringify({choices: [{index: 0, delta: {role: "assistant", content: "FINAL "}}]})}`,
        `data: ${JSON.stringify({choices: [{index: 0, delta: {content: "ANSWER: C"}, finish_reason: "stop"}]})}`,
        "data: [DONE]", "", ""].join("\n");
    const server = await serve(t, (n) => n === 0 ? {status: 503, headers: {"retry-after-ms": "400", "retry-after": "60"}}
        : {status: 200, body: sse});
    const retries: RetryInfo[] = [];
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast, onRetry: (i) => retries.push(i)});
    const r = await gen.generate(req());
    t.is(r.text, "FINAL ANSWER: C");
    t.is(r.finishReason, "stop");
    t.true(retries[0].delayMs >= 400 && retries[0].delayMs < 60_000, `delay ${retries[0].delayMs}`);
});

test("5xx errors and dropped connections are retried with backoff", async (t) => {
    const script: Reply[] = [{status: 503, body: "<html>busy</html>"}, {drop: true}, {status: 500}, ok("finally")];
    const server = await serve(t, (n) => script[n]);
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast});
    const r = await gen.generate(req());
    t.is(r.text, "finally");
    t.is(server.requests.length, 4);
    t.is(gen.stats.retries, 3);
    t.deepEqual(gen.stats.failures, {"503": 1, network: 1, "500": 1});
});

test("a request that gets no reply within the timeout is retried", async (t) => {
    const server = await serve(t, (n) => n === 0 ? {hang: true} : ok("late but fine"));
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", timeoutMs: 300, ...fast});
    const r = await gen.generate(req());
    t.is(r.text, "late but fine");
    t.is(gen.stats.failures.timeout, 1);
    t.is(server.requests.length, 2);
});

test("retries run out: a persistent 5xx and a dead server are fatal errors naming the URL", async (t) => {
    const server = await serve(t, () => ({status: 502, body: {error: {message: "bad gateway"}}}));
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", maxRetries: 2, ...fast});
    const err = await t.throwsAsync(gen.generate(req()), {instanceOf: GeneratorError});
    t.true(err!.fatal);
    t.regex(err!.message, /chat\/completions: gave up after 3 tries: HTTP 502: bad gateway/);
    t.is(server.requests.length, 3);

    const port = await deadPort();
    const dead = createRemoteGenerator({baseUrl: `http://127.0.0.1:${port}/v1`, model: "m", maxRetries: 1, ...fast});
    const e2 = await t.throwsAsync(dead.generate(req()), {instanceOf: GeneratorError});
    t.true(e2!.fatal);
    t.regex(e2!.message, new RegExp(`127\\.0\\.0\\.1:${port}/v1/chat/completions: gave up after 2 tries: .*ECONNREFUSED`));
});

test("401 and 404 fail at once and are fatal; other 4xx fail only the request", async (t) => {
    const server = await serve(t, (n) => n === 0 ? {status: 401, body: {error: {message: "invalid api key"}}}
        : n === 1 ? {status: 404, body: {error: {message: "model not found"}}}
            : {status: 413, body: {error: {message: "too large"}}});
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast});
    const e401 = await t.throwsAsync(gen.generate(req()), {instanceOf: GeneratorError});
    t.true(e401!.fatal);
    t.regex(e401!.message, /HTTP 401 \(invalid api key\): check the API key \(environment variable PPC_GPT_API_KEY or OPENAI_API_KEY\)/);
    const e404 = await t.throwsAsync(gen.generate(req()), {instanceOf: GeneratorError});
    t.true(e404!.fatal);
    t.regex(e404!.message, /check --base-url and the model name "m"/);
    const e413 = await t.throwsAsync(gen.generate(req()), {instanceOf: GeneratorError});
    t.false(e413!.fatal);
    t.is(server.requests.length, 3);  // none of them retried
});

test("a 200 reply that is not a chat completion is retried, then fails the request only", async (t) => {
    const server = await serve(t, (n) => n < 2 ? {status: 200, body: "<html>proxy page</html>"} : {status: 200, body: {choices: []}});
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", maxRetries: 2, ...fast});
    const err = await t.throwsAsync(gen.generate(req()), {instanceOf: GeneratorError});
    t.false(err!.fatal);
    t.regex(err!.message, /has no choices\[0\]/);
    t.is(server.requests.length, 3);
});

test("a server that refuses response_format is asked again without it, and the downgrade sticks", async (t) => {
    const server = await serve(t, () => ok());
    server.script = (r) => r.body.response_format ? {status: 400, body: {error: {message: "response_format is not supported"}}}
        : ok("{\"final_answer\": \"A\"}");
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast});
    t.is(gen.structuredOutput, "unknown");
    const schema = {name: "answer", schema: answerSchema(["A", "B"])};
    const r = await gen.generate(req({jsonSchema: schema}));
    t.false(r.structured);
    t.deepEqual(server.requests.map((q) => q.body.response_format?.type), ["json_schema", "json_object", undefined]);
    t.is(gen.structuredOutput, "none");
    await gen.generate(req({jsonSchema: schema}));
    t.is(server.requests.length, 4);
    t.is(server.requests[3].body.response_format, undefined);
    t.deepEqual(gen.stats.downgrades, ["response_format json_schema -> none"]);
});

test("json_object accepted where json_schema is not; max_completion_tokens and seed downgrades", async (t) => {
    const server = await serve(t, () => ok());
    server.script = (r) => {
        if (r.body.response_format?.type === "json_schema")
            return {status: 400, body: {error: {message: "Unknown response_format type"}}};
        if ("max_tokens" in r.body)
            return {status: 400, body: {error: {message: "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."}}};
        if ("seed" in r.body)
            return {status: 422, body: {detail: "extra field not permitted: seed"}};
        return ok("{}");
    };
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast});
    await gen.generate(req({jsonSchema: {name: "answer", schema: answerSchema(["A"])}, seed: 7}));
    const last = server.requests[server.requests.length - 1].body;
    t.is(last.response_format.type, "json_object");
    t.is(last.max_completion_tokens, 32);
    t.false("seed" in last);
    t.is(gen.structuredOutput, "enforced");
    const n = server.requests.length;
    await gen.generate(req({jsonSchema: {name: "answer", schema: answerSchema(["A"])}, seed: 8}));
    t.is(server.requests.length, n + 1);  // every downgrade was kept: one request
});

test("a context-length 400 is not mistaken for a refused response_format", async (t) => {
    const server = await serve(t, () => ({status: 400, body: {error: {message: "This model's maximum context length is 4096 tokens"}}}));
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", ...fast});
    const err = await t.throwsAsync(gen.generate(req({jsonSchema: {name: "a", schema: answerSchema(["A"])}})), {instanceOf: GeneratorError});
    t.false(err!.fatal);
    t.is(server.requests.length, 1);
    t.is(gen.structuredOutput, "unknown");
});

test("no more than `concurrency` requests are in flight at once", async (t) => {
    const server = await serve(t, () => ({content: "x", delayMs: 60}));
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m", concurrency: 3});
    const results = await Promise.all(Array.from({length: 10}, () => gen.generate(req())));
    t.is(results.length, 10);
    t.is(server.requests.length, 10);
    t.true(server.maxActive <= 3, `max in flight ${server.maxActive}`);
    t.true(server.maxActive >= 2, `max in flight ${server.maxActive}`);
});

test("an aborted request stops waiting at once, even during a backoff", async (t) => {
    const server = await serve(t, () => ({status: 503, headers: {"retry-after": "30"}}));
    const gen = createRemoteGenerator({baseUrl: server.baseUrl, model: "m"});
    const ac = new AbortController();
    const p = gen.generate(req({signal: ac.signal}));
    while (server.requests.length === 0)
        await new Promise((r) => setTimeout(r, 10));
    ac.abort(new Error("stop now"));
    await t.throwsAsync(p, {message: "stop now"});
});
