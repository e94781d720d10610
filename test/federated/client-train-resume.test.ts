// `client run` killed with SIGKILL during the client's label retraining: the re-run keeps the
// job, the model and the perturbed items, and continues training from the last checkpoint.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {hasShared, tempDir} from "../helpers.js";
import {createToken, jsonLine, spawnClient, startFederation, writePrivateItems} from "./client-helpers.js";

const maybe = hasShared ? test : test.skip;

maybe("kill -9 during client retraining: the re-run resumes training from its checkpoint, same job, same upload", async (t) => {
    const dir = tempDir(t);
    const {server, serverDir: srvDir} = await startFederation(t, dir);
    const token = await createToken(srvDir, "acme");
    const priv = writePrivateItems(dir, 8, "acme");
    const state = path.join(dir, "state");
    const args = ["run", "--server", server.url, "--data", priv.file, "--holdout", "0.25", "--k", "1", "--server-steps", "1",
        "--batch-size", "2", "--client-steps", "24", "--client-batch-size", "2", "--state-dir", state, "--threads", "2", "--json"];
    let job = "";
    const first = spawnClient(args, token, {onStderr: (line, child) => {
        const e = jsonLine(line);
        if (e.event === "submitted")
            job = e.job;
        if (e.event === "progress" && e.stage === "client-train" && e.type === "step" && e.step >= 15)
            child.kill("SIGKILL");
    }});
    t.is((await first.done).signal, "SIGKILL");
    const upload = fs.readFileSync(path.join(state, "perturbed.jsonl"), "utf8");
    t.true(fs.existsSync(path.join(state, "client-train", "checkpoint.json")));
    t.false(fs.existsSync(path.join(state, "report.json")));

    const second = await spawnClient(args, token).done;
    t.is(second.code, 0, second.stderr);
    const s = JSON.parse(second.stdout);
    t.is(s.job, job);
    t.is(s.finish.training.steps, 24);
    const steps = second.stderr.trim().split("\n").map(jsonLine)
        .filter((e) => e.event === "progress" && e.stage === "client-train" && e.type === "step").map((e) => e.step);
    t.true(steps.length > 0);
    t.true(Math.min(...steps) > 10, `training resumed after the step-10 checkpoint (steps seen: ${steps.join(", ")})`);
    t.false(second.stderr.includes("\"event\":\"perturbed\""), "nothing is perturbed again (no ε spent twice)");
    t.false(second.stderr.includes("\"event\":\"submitted\""), "no submission");
    t.is(fs.readFileSync(path.join(state, "perturbed.jsonl"), "utf8"), upload);
    t.true(fs.existsSync(path.join(state, "report.json")));
});
