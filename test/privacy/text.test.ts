// Text handling: which fields are perturbed, which tokens are kept, decoding, and the privacy
// report's composition arithmetic.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {syntheticModel} from "../../ts/gguf/synthetic.js";
import {writeGguf} from "../../ts/gguf/write.js";
import {loadModel} from "../../ts/model.js";
import {createPerturber, perturbFile} from "../../ts/privacy/perturb.js";
import {readIdMap, releasedIdPattern} from "../../ts/privacy/release.js";
import {fileHash} from "../gguf-fixtures.js";
import {hasShared, llama2TinyRandom, runCli, stories260K, tempDir} from "../helpers.js";
import {refTextTokens} from "./reference.js";

const maybe = hasShared ? test : test.skip;

const items = [
    {id: "q1", question: "Which gas do plants absorb from the air?", choices: [{label: "A", text: "carbon dioxide"}, {label: "B", text: "oxygen"},
        {label: "C", text: "nitrogen"}], answer: "A", rationale: "Plants take in carbon dioxide for photosynthesis.", source: {stem: "Which gas do plants absorb?"}},
    {id: "q2", question: "", choices: [{label: "1", text: "yes"}, {label: "2", text: "no!"}]},
    {id: "q3", question: "Tom and <s> Lily </s> saw the big dog, and the cat ran away.", choices: [{label: "A", text: "the dog"}, {label: "B", text: "the cat"}],
        answer: "B", parent_id: "p9", votes: ["B", "B", "B"]},
];

function writeItems(dir: string): string {
    const file = path.join(dir, "private.jsonl");
    fs.writeFileSync(file, items.map((x) => JSON.stringify(x)).join("\n") + "\n");
    return file;
}

maybe("records: by default only perturbed texts leave, under fresh random ids in shuffled order; the id map stays beside it", async (t) => {
    const dir = tempDir(t);
    const input = writeItems(dir);
    const before = await fileHash(input);
    const output = path.join(dir, "perturbed.jsonl");
    const r = await perturbFile({embeddings: stories260K, input, output, epsilon: 1, seed: 5, cacheDir: false});
    t.is(await fileHash(input), before, "the input is never modified");
    t.is(r.released, "text-only");
    t.is(r.idMap, path.join(dir, "perturbed.idmap.jsonl"));
    const raw = fs.readFileSync(output, "utf8");
    const out = raw.trim().split("\n").map((l) => JSON.parse(l));
    for (const o of out) {
        t.deepEqual(Object.keys(o).sort(), ["choices", "id", "question"], "no answer, source or rationale");
        t.regex(o.id, releasedIdPattern);
        for (const c of o.choices)
            t.deepEqual(Object.keys(c).sort(), ["label", "text"]);
    }
    // (ids are left out: 128 random bits may spell "q1" by chance)
    const texts = out.map((o) => JSON.stringify({...o, id: ""})).join("\n");
    for (const s of ["q1", "q2", "q3", "photosynthesis", "Which gas do plants absorb?", "\"answer\"", "p9"])
        t.false(texts.includes(s), `${s} must not be released`);
    const map = await readIdMap(r.idMap!);
    t.deepEqual(map.map((m) => m.id), out.map((o) => o.id), "the map lists the released ids in the released order");
    t.deepEqual(map.map((m) => m.original_id).sort(), ["q1", "q2", "q3"]);
    const answerOf = Object.fromEntries(items.map((x) => [x.id, x.answer]));
    for (const m of map)
        t.is(m.answer, answerOf[m.original_id]);
    t.deepEqual(fs.readdirSync(dir).sort(), ["perturbed.idmap.jsonl", "perturbed.jsonl", "private.jsonl"], "no temporary file is left");

    // The same seed with keepLabels: the same perturbed texts, under the original ids and order, with answers.
    const kept = path.join(dir, "kept.jsonl");
    const rk = await perturbFile({embeddings: stories260K, input, output: kept, epsilon: 1, seed: 5, cacheDir: false, keepLabels: true});
    t.is(rk.released, "with-labels");
    t.is(rk.idMap, undefined);
    t.false(fs.existsSync(path.join(dir, "kept.idmap.jsonl")));
    const keptOut = fs.readFileSync(kept, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    t.deepEqual(keptOut.map((o) => o.id), ["q1", "q2", "q3"]);
    t.deepEqual(keptOut.map((o) => o.answer), ["A", undefined, "B"]);
    t.deepEqual(keptOut.map((o) => o.choices.map((c: {label: string}) => c.label)), [["A", "B", "C"], ["1", "2"], ["A", "B"]]);
    const byOriginal = new Map(keptOut.map((o) => [o.id, o]));
    for (const [n, m] of map.entries()) {
        const k = byOriginal.get(m.original_id)!;
        t.is(out[n].question, k.question);
        t.deepEqual(out[n].choices, k.choices);
        t.is(r.records[n].id, out[n].id, "report records name the released ids");
        t.deepEqual({...r.records[n], id: ""}, {...rk.records.find((x) => x.id === m.original_id)!, id: ""});
    }
    for (const o of keptOut)
        t.deepEqual(Object.keys(o).sort(), o.answer === undefined ? ["choices", "id", "question"] : ["answer", "choices", "id", "question"]);
    t.not(keptOut[0].question, items[0].question);
    t.not(keptOut[2].question, items[2].question);
    t.is(keptOut[1].question, "", "an empty text stays empty");
    t.deepEqual(r.droppedFields, {rationale: 1, source: 1, parent_id: 1, votes: 1});

    // Without a seed the ids and the order are fresh each time.
    const a = path.join(dir, "a.jsonl"), b = path.join(dir, "b.jsonl");
    await perturbFile({embeddings: stories260K, input, output: a, epsilon: 1, cacheDir: false});
    await perturbFile({embeddings: stories260K, input, output: b, epsilon: 1, cacheDir: false});
    const ids = (f: string) => fs.readFileSync(f, "utf8").trim().split("\n").map((l) => JSON.parse(l).id);
    t.is(new Set([...ids(a), ...ids(b)]).size, 6);

    // Report arithmetic: per record ε = perturbed tokens × ε; dataset = sums.
    t.is(r.records.length, 3);
    for (const rec of r.records) {
        t.is(rec.epsilon, rec.perturbed * 1);
        t.is(rec.tokens, rec.perturbed + rec.keptPunctuation + rec.keptStopwords + rec.dropped);
        t.true(rec.changed <= rec.perturbed);
    }
    t.is(r.dataset.tokens, r.records.reduce((n, x) => n + x.tokens, 0));
    t.is(r.dataset.perturbed, r.records.reduce((n, x) => n + x.perturbed, 0));
    t.is(r.dataset.epsilonTotal, r.dataset.perturbed * 1);
    t.is(r.dataset.epsilonPerRecord.max, Math.max(...r.records.map((x) => x.epsilon)));
    t.is(r.dataset.epsilonPerRecord.min, Math.min(...r.records.map((x) => x.epsilon)));
    t.is(r.dataset.texts, 3 + 3 + 2 + 2);
    t.is(r.dataset.dropped, 0, "every token of plain text is a text token");
    t.is(r.dataset.perturbed, r.dataset.tokens, "without keep options, every token goes through the mechanism");

    // The token counts are the tokenizer's own.
    const model = await loadModel(stories260K, {vocabOnly: true});
    try {
        const count = (it: typeof items[number]) => [it.question, ...it.choices.map((c) => c.text)]
            .reduce((n, s) => n + model.tokenize(s, {addSpecial: false}).length, 0);
        // records come in the released (shuffled) order: the id map says which item each is
        t.deepEqual(r.records.map((x) => x.tokens), map.map((m) => count(items.find((x) => x.id === m.original_id)!)));
    } finally {
        model.close();
    }
});

maybe("released ids are random whatever the seed: one seed, two runs, the same texts under unrelated ids", async (t) => {
    const dir = tempDir(t);
    const input = writeItems(dir);
    const run = async (name: string) => {
        const output = path.join(dir, `${name}.jsonl`);
        const r = await perturbFile({embeddings: stories260K, input, output, epsilon: 1, seed: 5, cacheDir: false});
        const map = await readIdMap(r.idMap!);
        const out = fs.readFileSync(output, "utf8").trim().split("\n").map((l) => JSON.parse(l) as {id: string; question: string});
        return {ids: out.map((o) => o.id), byOriginal: Object.fromEntries(map.map((m, n) => [m.original_id, out[n].question]).sort())};
    };
    const [a, b] = [await run("a"), await run("b")];
    t.deepEqual(a.byOriginal, b.byOriginal, "the seed reproduces the perturbed texts");
    t.deepEqual(a.ids.filter((id) => b.ids.includes(id)), [], "but not a single id");
    // nothing derived from a seed (any small one) and a position, as ids were once: a guessed seed cannot be checked against them
    const derived = new Set<string>();
    for (let seed = 0; seed <= 1000; seed++)
        for (let i = 0; i < items.length; i++)
            derived.add(crypto.createHash("sha256").update(`ppc-gpt/release-id/v1\n${seed}\n${i}\n`).digest().subarray(0, 16).toString("base64url"));
    for (const id of [...a.ids, ...b.ids]) {
        t.false(derived.has(id), `${id} is derived from a seed`);
        t.false(items.some((x) => id === x.id), `${id} is an original id`);
        t.regex(id, releasedIdPattern);
    }
});

maybe("CLI: the default release writes the id map and says where; --keep-labels warns on stderr", async (t) => {
    const dir = tempDir(t);
    const input = writeItems(dir);
    const out = path.join(dir, "p.jsonl"), map = path.join(dir, "private-map.jsonl");
    const r = await runCli(["perturb", "--embeddings", stories260K, "--in", input, "--out", out, "--id-map", map, "--no-cache", "--json"]);
    t.is(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    t.is(report.idMap, map);
    t.is(report.released, "text-only");
    t.false(r.stderr.includes("warning"));
    t.deepEqual((await readIdMap(map)).map((m) => m.id), fs.readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l).id));
    const k = await runCli(["perturb", "--embeddings", stories260K, "--in", input, "--out", path.join(dir, "k.jsonl"), "--keep-labels", "--no-cache"]);
    t.is(k.code, 0, k.stderr);
    t.regex(k.stderr, /warning: --keep-labels: the output keeps answer keys and original ids/);
    t.regex(k.stdout, /WITH original ids and answer keys/);
    t.is(JSON.parse(fs.readFileSync(path.join(dir, "k.jsonl"), "utf8").split("\n")[0]).answer, "A");
});

maybe("special-token strings in the text are plain text: never parsed as control tokens, and no control token is emitted", async (t) => {
    const text = new Set(await refTextTokens(stories260K));
    const control = new Set(Array.from({length: 512}, (_, i) => i).filter((i) => !text.has(i)));
    t.deepEqual([...control], [0, 1, 2]);
    const p = await createPerturber({embeddings: stories260K, epsilon: 1e-6, seed: 1, cacheDir: false});
    try {
        const texts = Array.from({length: 50}, () => "<s> Lily </s> <unk> hello");
        const r = await p.perturbTexts(texts);
        for (const x of r) {
            t.is(x.dropped, 0);
            t.is(x.perturbed, x.tokens);
        }
        // Even parsing special-token text, the outputs hold no control token.
        for (const x of r)
            for (const tok of p.model.tokenize(x.text, {addSpecial: false, parseSpecial: true}))
                t.false(control.has(tok), `control token ${tok} in ${JSON.stringify(x.text)}`);
        for (const c of control)
            t.false(p.mechanism.has(c));
    } finally {
        p.close();
    }
});

maybe("--keep-punctuation keeps punctuation tokens in place and never emits one; stopwords are kept as whole words", async (t) => {
    const text = "Tom, the boy, saw a cat; the cat ran. Then the dog barked!";
    const p = await createPerturber({embeddings: stories260K, epsilon: 1e-6, seed: 2, cacheDir: false, keepPunctuation: true,
        stopwords: ["the", "a", "then"]});
    try {
        const ids = p.model.tokenize(text, {addSpecial: false});
        const pieces = Array.from(ids, (t) => p.vocabulary.pieces[t]);
        const punct = pieces.filter((s) => /^[\s\p{P}\p{S}]+$/u.test(s)).length;
        t.true(punct >= 5);
        for (let tok = 0; tok < p.vocabulary.size; tok++)
            if (/^[\s\p{P}\p{S}]+$/u.test(p.vocabulary.pieces[tok]) && p.vocabulary.pieces[tok] !== "")
                t.false(p.mechanism.has(tok), `punctuation token ${tok} ${JSON.stringify(p.vocabulary.pieces[tok])} is in the domain`);
        const runs = await p.perturbTexts(Array.from({length: 20}, () => text));
        for (const r of runs) {
            t.is(r.keptPunctuation, punct);
            // "the" x3, "a", "Then" (the tokenizer adds the leading space of each word).
            const stopTokens = ["the", "the", "the", "a", "Then"].reduce((n, w) => n + p.model.tokenize(w, {addSpecial: false}).length, 0);
            t.is(r.keptStopwords, stopTokens);
            t.is(r.tokens, r.perturbed + r.keptPunctuation + r.keptStopwords);
            // Punctuation survives in order; the kept words survive.
            t.is(r.text.replace(/[^,;.!]/g, ""), ",,;.!");
            t.is((r.text.match(/ the/g) ?? []).length >= 3, true);
        }
        t.true(runs.some((r) => r.changed > 0));
        t.is(p.summary.domainSize, 509 - p.vocabulary.pieces.filter((s, i) => p.vocabulary.texts[i] !== "" && i > 2 &&
            /^[\s\p{P}\p{S}]+$/u.test(s)).length);
    } finally {
        p.close();
    }
});

maybe("a 32k SentencePiece vocabulary (llama-2-tiny-random, F16 embeddings) round-trips text at large ε and perturbs it at small ε", async (t) => {
    const p = await createPerturber({embeddings: llama2TinyRandom, epsilon: 1000, seed: 4, cacheDir: false, k: 8});
    try {
        t.is(p.vocabulary.size, 32000);
        t.is(p.embeddings.type, "f16");
        const texts = ["Which gas do plants absorb from the air?", "  two  spaces\nand a newline", "café ☃ 123"];
        const same = await p.perturbTexts(texts);
        t.deepEqual(same.map((r) => r.text), texts);
        t.is(p.summary.custext!.k, 8);
        t.true(p.summary.custext!.largestCluster === 8);
    } finally {
        p.close();
    }
    const q = await createPerturber({embeddings: llama2TinyRandom, epsilon: 0.5, seed: 4, cacheDir: false});
    try {
        const [r] = await q.perturbTexts(["Which gas do plants absorb from the air?"]);
        t.not(r.text, "Which gas do plants absorb from the air?");
        t.true(r.changed > 0);
    } finally {
        q.close();
    }
});

test("a user-defined (added) token found in the text is dropped, never emitted, and counted", async (t) => {
    const dir = tempDir(t);
    const file = path.join(dir, "added-token.gguf");
    const m = syntheticModel({architecture: "llama", layers: 1, embedding: 32, heads: 4, feedForward: 32, vocab: 700, seed: 2});
    const tokens = m.metadata.find((kv) => kv.key === "tokenizer.ggml.tokens")!.value as string[];
    const types = m.metadata.find((kv) => kv.key === "tokenizer.ggml.token_type")!.value as number[];
    tokens[650] = "<tool>";
    types[650] = 4;  // USER_DEFINED
    await writeGguf(file, m.metadata, m.tensors);
    const p = await createPerturber({embeddings: file, epsilon: 1, seed: 3, k: 5, cacheDir: false});
    try {
        t.false(p.mechanism.has(650));
        const ids = p.model.tokenize("ab <tool> cd", {addSpecial: false});
        t.true(Array.from(ids).includes(650), "llama.cpp matches added tokens even without special-token parsing");
        const runs = await p.perturbTexts(Array.from({length: 30}, () => "ab <tool> cd"));
        for (const r of runs) {
            t.is(r.dropped, 1);
            t.is(r.perturbed, r.tokens - 1);
            t.false(r.text.includes("<tool>"));
        }
        for await (const d of p.table())
            t.false(d.outputs.includes(650));
    } finally {
        p.close();
    }
});
