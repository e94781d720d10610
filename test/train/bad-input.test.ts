// The trainer refuses bad adapters and malformed micro-batches with errors (never a crash), and
// a failed step changes nothing.
import path from "node:path";
import test from "ava";
import {readGguf} from "../../ts/gguf/read.js";
import type {NativeMicroBatch} from "../../ts/native.js";
import {initLoraAdapter, writeLoraAdapter} from "../../ts/train/adapter.js";
import {trainLora} from "../../ts/train/train.js";
import {LoraTrainer} from "../../ts/train/trainer.js";
import {tempDir} from "../helpers.js";
import {makeAdapter, makeModel, microBatch} from "./helpers.js";

test("adapters that do not fit are refused when the trainer opens", async (t) => {
    const dir = tempDir(t);
    const model = await makeModel(t);
    const other = await makeModel(t, {embedding: 64}, "wide.gguf");
    const wrong = path.join(dir, "wide-adapter.gguf");
    await makeAdapter(other, wrong);
    await t.throwsAsync(LoraTrainer.open(model, wrong), {message: /wide-adapter\.gguf: llama\.cpp cannot load this LoRA adapter/});

    const f16 = path.join(dir, "f16.gguf");
    const {writeGguf} = await import("../../ts/gguf/write.js");
    const adapter = initLoraAdapter(await readGguf(model), {r: 2, loraAlpha: 4, targetModules: ["attn_q"]}, 1);
    const q = (await import("../../ts/native.js")).native();
    await writeGguf(f16, [
        {key: "general.type", type: "string", value: "adapter"},
        {key: "general.architecture", type: "string", value: "llama"},
        {key: "adapter.type", type: "string", value: "lora"},
        {key: "adapter.lora.alpha", type: "float32", value: 4},
    ], adapter.tensors.map((x) => ({name: x.name, shape: x.shape, type: "f16", data: () => q.quantize(1, x.data, x.shape[0])})));
    await t.throwsAsync(LoraTrainer.open(model, f16), {message: /is f16; training needs F32 LoRA matrices/});
    await t.throwsAsync(LoraTrainer.open(model, path.join(dir, "none.gguf")), {message: /none\.gguf/});
    const ok = path.join(dir, "ok.gguf");
    await writeLoraAdapter(ok, adapter);
    await t.throwsAsync(LoraTrainer.open(model, ok, {contextSize: 16, sequences: 32}), {message: /sequences per micro-batch \(32\) exceed its tokens \(16\)/});
    await t.throwsAsync(LoraTrainer.open(model, ok, {sequences: 300}), {message: /sequences must be/});
});

test("malformed micro-batches are errors and leave the adapter as it was", async (t) => {
    const dir = tempDir(t);
    const model = await makeModel(t);
    const file = path.join(dir, "adapter.gguf");
    await makeAdapter(model, file);
    const trainer = await LoraTrainer.open(model, file, {contextSize: 32, sequences: 2, threads: 2});
    t.teardown(() => trainer.close());
    const before = trainer.state();
    const good = (): NativeMicroBatch => microBatch([{tokens: [5, 6, 7, 8], targets: [-1, 7, 8, 9], weights: 1}]);
    const cases: [NativeMicroBatch[], RegExp][] = [
        [[], /at least one micro-batch/],
        [[{...good(), tokens: Int32Array.of(5, 6, 7, 300)}], /micro-batch 0: token 300 is outside the vocabulary \(300\)/],
        [[good(), {...good(), targets: Int32Array.of(-1, 7, 8, 1000)}], /micro-batch 1: target 1000 is outside the vocabulary/],
        [[{...good(), seqIds: Int32Array.of(0, 0, 2, 2)}], /sequence id 2 is outside \[0, 2\)/],
        [[{...good(), targets: Int32Array.of(-1, -1, -1, -1)}], /no position has a target/],
        [[{...good(), positions: Int32Array.of(0, 1, 2)}], /differ in length/],
        [[{...good(), weights: Float32Array.of(1, NaN, 1, 1)}], /loss weight is not finite/],
        [[microBatch([{tokens: Array(40).fill(5), targets: Array(40).fill(6), weights: 1}])], /40 tokens exceed the training context \(32\)/],
        [[{...good(), positions: Int32Array.of(3, 4, 5, 6)}], /position 3 at index 0; each sequence's positions must run 0, 1, 2/],
        [[{...good(), positions: Int32Array.of(0, 1, 1, 2)}], /position 1 at index 2/],
        [[{...good(), seqIds: Int32Array.of(0, 1, 0, 0), positions: Int32Array.of(0, 0, 0, 1)}], /tokens of sequence 0 are not contiguous/],
    ];
    for (const [batches, message] of cases)
        await t.throwsAsync(trainer.step(batches, {lr: 1e-2}), {message});
    await t.throwsAsync(trainer.step([{...good(), tokens: new Float32Array(4) as never}], {lr: 1e-2}), {message: /tokens must be a Int32Array/});
    await t.throwsAsync(trainer.step([good()], {lr: -1}), {message: /lr must be/});
    const after = trainer.state();
    t.is(after.step, before.step);
    t.deepEqual(after.tensors.map((x) => x.value), before.tensors.map((x) => x.value));
    // and the trainer still works
    const r = await trainer.step([good()], {lr: 1e-2});
    t.true(Number.isFinite(r.loss));
    t.is(trainer.state().step, before.step + 1);
});

test("trainLora checks its options", async (t) => {
    const model = await makeModel(t);
    const items = [{id: "a", question: "q", choices: [{label: "A", text: "x"}], answer: "A", rationale: "r"}];
    const out = path.join(tempDir(t), "out.gguf");
    await t.throwsAsync(trainLora({model, data: items, output: out, r: 0}), {message: /r must be an integer in \[1, 4096\]/});
    await t.throwsAsync(trainLora({model, data: items, output: out, steps: 2, epochs: 1}), {message: /steps or epochs/});
    await t.throwsAsync(trainLora({model, data: items, output: out, resume: true}), {message: /resume needs checkpointDir/});
    await t.throwsAsync(trainLora({model, data: items, output: out, validationSplit: 0.5}), {message: /at least two items/});
    await t.throwsAsync(trainLora({model, data: items, output: out, microBatchTokens: 4}), {message: /below the longest example/});
    await t.throwsAsync(trainLora({model, data: [{...items[0], answer: undefined}], output: out}), {message: /item "a" has no answer/});
    await t.throwsAsync(trainLora({model, data: items, output: path.join(path.dirname(out), "no", "out.gguf")}), {message: /output folder .* does not exist/});
    await t.throwsAsync(trainLora({model, data: items, output: model}), {message: /would overwrite the base model/});
});
