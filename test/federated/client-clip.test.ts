// A perturbed text can come out longer than its original (a replacement token may be longer than the
// token it replaces); the client cuts it to the protocol's field limits before it is stored for upload,
// so the server never refuses an upload the client could not have avoided.
import test from "ava";
import {preparePerturbedUpload} from "../../ts/federated/client/flow.js";
import {jobItemSchema} from "../../ts/federated/protocol.js";
import type {TaskItem} from "../../ts/data/task-item.js";
import {stories260K} from "../helpers.js";

const questionLimit = jobItemSchema.properties.question.maxLength;
const textLimit = jobItemSchema.properties.choices.items.properties.text.maxLength;

test("perturbed texts longer than the protocol's limits are cut to them, and counted", async (t) => {
    // Texts at the limit made of the shortest tokens; at ε = 0.5 most are replaced, mostly by longer ones.
    const short = (n: number) => "a b ".repeat(n).slice(0, n);
    const items: TaskItem[] = [
        {id: "q-long", question: short(questionLimit), choices: [{label: "A", text: short(textLimit)}, {label: "B", text: "b"}], answer: "A"},
        {id: "q-short", question: "Which is a star?", choices: [{label: "A", text: "the sun"}, {label: "B", text: "the moon"}], answer: "A"},
    ];
    const up = await preparePerturbedUpload(items, stories260K, {mechanism: "custext", epsilon: 0.5, seed: 7, threads: 2});
    t.is(up.items.length, 2);
    for (const it of up.items) {
        t.true(it.question.length <= questionLimit, `question of ${it.question.length} characters`);
        t.true(it.choices.every((c) => c.text.length <= textLimit));
        t.false(/[\uD800-\uDBFF]$/.test(it.question), "no cut inside a surrogate pair");
    }
    // The fixture must actually overflow, or this test would prove nothing.
    t.true(up.clipped >= 1, `clipped ${up.clipped}`);
    t.false(up.items.some((it) => it.question === items[0].question));
});
