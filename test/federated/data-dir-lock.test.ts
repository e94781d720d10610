// One server per data dir (ts/federated/data-dir-lock.ts), with real processes: the lock goes with
// the process (kill -9 and restart at once, also when the killed server stays a zombie), a live
// holder is refused naming its pid, and server.pid is information only (a stale one naming a live
// unrelated process does not block).
import {spawn} from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import test from "ava";
import {cliPath, hasShared, runCli, stories260K, tempDir} from "../helpers.js";
import {ScriptedChatServer} from "../synth/openai-server.js";
import {startFederatedServer} from "../../ts/federated/server.js";
import {startFlServer as startFlServerInProcess} from "../../ts/federated/prufed/http-server.js";
import {startServer} from "./server-process.js";
import {models, serverArgs, startServer as startFlServer} from "./prufed/http-process.js";

const maybe = hasShared ? test.serial : test.skip;

const refusal = (pid: number) => new RegExp(`another server \\(pid ${pid}\\) is using`);

maybe("ppc-gpt server: kill -9 and restart at once; a live twin is refused naming the holder; a stale pid file does not block", async (t) => {
    const dir = tempDir(t);
    const gen = await ScriptedChatServer.start(() => ({hang: true}));
    t.teardown(() => gen.stop());
    const args = ["--model", stories260K, "--generator-url", gen.baseUrl, "--generator-remote-model", "teacher"];

    const first = await startServer(t, dir, args);
    t.is(fs.readFileSync(path.join(dir, "server.pid"), "utf8").trim(), String(first.child.pid), "server.pid names the holder");
    await first.kill9();
    // the killed server's pid file is still there, its lock is not
    t.is(fs.readFileSync(path.join(dir, "server.pid"), "utf8").trim(), String(first.child.pid));
    const second = await startServer(t, dir, args);

    const twin = await runCli(["server", "--data-dir", dir, "--port", "0", ...args]);
    t.is(twin.code, 1, twin.stderr);
    t.regex(twin.stderr, refusal(second.child.pid!));
    await second.stop();
    t.is(second.child.exitCode, 0, second.stderr());
    t.false(fs.existsSync(path.join(dir, "server.pid")), "a clean stop removes its pid file");

    // a pid file naming a live process that holds no lock (this test's own) is only information
    fs.writeFileSync(path.join(dir, "server.pid"), `${process.pid}\n`);
    const third = await startServer(t, dir, args);
    t.is(fs.readFileSync(path.join(dir, "server.pid"), "utf8").trim(), String(third.child.pid));
    await third.stop();
});

test.serial("fl server: kill -9 and restart at once; a live twin is refused naming the holder; a stale pid file does not block", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.join(dir, "server");

    const first = await startFlServer(t, base, dataDir, []);
    await first.proc.kill9();
    const second = await startFlServer(t, base, dataDir, []);
    const twin = await runCli(serverArgs(base, dataDir, ["--port", "0"]));
    t.is(twin.code, 1, twin.stderr);
    t.regex(twin.stderr, refusal(second.proc.child.pid!));
    await second.proc.kill9();

    fs.writeFileSync(path.join(dataDir, "server.pid"), `${process.pid}\n`);
    const third = await startFlServer(t, base, dataDir, []);
    t.is(fs.readFileSync(path.join(dataDir, "server.pid"), "utf8").trim(), String(third.proc.child.pid));
});

maybe("in process: a start that fails (its port in use) gives the data dir back, so the next start succeeds", async (t) => {
    const dir = tempDir(t);
    const gen = await ScriptedChatServer.start(() => ({hang: true}));
    t.teardown(() => gen.stop());
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    t.teardown(() => taken.close());
    const port = (taken.address() as net.AddressInfo).port;
    const options = {model: stories260K, dataDir: path.join(dir, "server"), host: "127.0.0.1", threads: 1, log: () => {},
        generator: {kind: "remote" as const, baseUrl: gen.baseUrl, model: "teacher"}};
    await t.throwsAsync(startFederatedServer({...options, port}), {code: "EADDRINUSE"});
    const server = await startFederatedServer({...options, port: 0});
    t.teardown(() => server.close());
    t.is((await fetch(`${server.url}/v1/info`)).status, 200);
});

test.serial("in process: an fl server start that fails (its port in use) gives the data dir back, so the next start succeeds", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    t.teardown(() => taken.close());
    const port = (taken.address() as net.AddressInfo).port;
    const options = {dataDir: path.join(dir, "server"), host: "127.0.0.1", log: () => {},
        config: {base, aggregation: "layerwise" as const, rounds: 1, seed: 5, r: 4, loraAlpha: 8}};
    await t.throwsAsync(startFlServerInProcess({...options, port}), {code: "EADDRINUSE"});
    const server = await startFlServerInProcess({...options, port: 0});
    t.teardown(() => server.close());
    t.is((await fetch(`${server.url}/v1/openapi.json`)).status, 200);
});

// a zombie: the server runs under a shell that execs `sleep`, which never reaps it, so after kill -9
// its pid stays in the process table (state Z) and `kill(pid, 0)` still succeeds
const linux = process.platform === "linux" ? test.serial : test.skip;
linux("fl server: a killed server left a zombie does not block the restart", async (t) => {
    const dir = tempDir(t);
    const {base} = await models(dir);
    const dataDir = path.join(dir, "server");
    const parent = spawn("sh", ["-c", `"$0" "$@" & exec sleep 600`, process.execPath, cliPath, ...serverArgs(base, dataDir, ["--port", "0"])],
        {stdio: ["ignore", "pipe", "pipe"]});
    let stderr = "";
    parent.stderr!.on("data", (d) => (stderr += d));
    const exited = new Promise<void>((resolve) => parent.once("exit", () => resolve()));
    t.teardown(async () => {
        parent.kill("SIGKILL");
        await exited;
    });
    const listening = await new Promise<{pid: number}>((resolve, reject) => {
        readline.createInterface({input: parent.stdout!}).once("line", (line) => resolve(JSON.parse(line)));
        void exited.then(() => reject(new Error(`the shell exited before the server listened:\n${stderr}`)));
    });
    process.kill(listening.pid, "SIGKILL");
    const state = async () => fs.readFileSync(`/proc/${listening.pid}/stat`, "utf8").split(") ")[1]![0];
    while (await state() !== "Z")
        await new Promise((r) => setTimeout(r, 20));
    t.notThrows(() => process.kill(listening.pid, 0), "the zombie's pid looks alive");

    const restarted = await startFlServer(t, base, dataDir, []);
    t.is(fs.readFileSync(path.join(dataDir, "server.pid"), "utf8").trim(), String(restarted.proc.child.pid));
});
