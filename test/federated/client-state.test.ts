// The client's state folder: a folder that holds another run is refused with the ways out
// (another folder, the same arguments, or cancel + remove), and is left as it was.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {openState, saveState, type ClientSettings} from "../../ts/federated/client/flow.js";
import {tempDir} from "../helpers.js";

function settings(dir: string, data: string, epsilon: number): ClientSettings {
    return {data: {data}, perturb: {mechanism: "custext", epsilon}, spec: {}, finish: {}, stateDir: path.join(dir, "state")};
}

test("a state folder holding another run is refused, naming how to continue or start over", (t) => {
    const dir = tempDir(t);
    const data = path.join(dir, "items.jsonl");
    fs.writeFileSync(data, JSON.stringify({id: "q", question: "Q?", choices: [{label: "A", text: "x"}], answer: "A"}) + "\n");
    const first = openState("http://127.0.0.1:8080", settings(dir, data, 3));
    t.deepEqual(openState("http://127.0.0.1:8080", settings(dir, data, 3)), first);

    const state = path.join(dir, "state");
    const otherServer = t.throws(() => openState("http://127.0.0.1:9090", settings(dir, data, 3)));
    t.regex(otherServer!.message, new RegExp(`${state} holds another run \\(job not yet submitted, server http://127.0.0.1:8080\\)`));
    t.regex(otherServer!.message, new RegExp(`give another --state-dir, the same arguments to continue it, or remove ${state} to start over$`));

    saveState(state, {...first, job: "job_abc"});
    const before = fs.readFileSync(path.join(state, "state.json"), "utf8");
    const otherEpsilon = t.throws(() => openState("http://127.0.0.1:8080", settings(dir, data, 1)));
    t.regex(otherEpsilon!.message, /cancel job_abc \(ppc-gpt client cancel job_abc --server http:\/\/127\.0\.0\.1:8080\) and remove .*state to start over$/);
    t.is(fs.readFileSync(path.join(state, "state.json"), "utf8"), before);
});
