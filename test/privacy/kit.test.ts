// The perturbation kit: a GGUF with the model's metadata and token_embd.weight only. Perturbing with
// it must give exactly what perturbing with the full model gives for the same seed.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {readGguf} from "../../ts/gguf/read.js";
import {loadModel} from "../../ts/model.js";
import {fileSha256, isPerturbationKit, writePerturbationKit} from "../../ts/privacy/kit.js";
import {createPerturber} from "../../ts/privacy/perturb.js";
import {hasShared, llama2TinyRandom, stories260K, tempDir} from "../helpers.js";

const maybe = hasShared ? test : test.skip;

const texts = [
    "Which gas do plants absorb from the air during photosynthesis?",
    "Tom and Lily saw the big dog, and the cat ran away.",
    "A student measures 12.5 cm of rain; what tool did she use?",
    "",
];

for (const [name, model] of [["stories260K", stories260K], ["llama-2-tiny-random", llama2TinyRandom]] as const) {
    maybe(`kit of ${name}: all metadata, only token_embd.weight, byte-identical; perturbation identical to the model's`, async (t) => {
        const dir = tempDir(t);
        const kit = path.join(dir, "kit.gguf");
        const r = await writePerturbationKit(model, kit);
        t.deepEqual(r, await fileSha256(kit));
        t.is(r.size, fs.statSync(kit).size);
        t.deepEqual(fs.readdirSync(dir), ["kit.gguf"], "no temporary file is left");
        t.deepEqual(await writePerturbationKit(model, path.join(dir, "again.gguf")), r, "the kit is deterministic");
        fs.rmSync(path.join(dir, "again.gguf"));

        const src = await readGguf(model, {maxArrayValues: 1 << 30});
        const k = await readGguf(kit, {maxArrayValues: 1 << 30});
        t.deepEqual(k.tensors.map((x) => x.name), ["token_embd.weight"]);
        for (const e of src.metadata)
            t.deepEqual(k.entry(e.key)?.value, e.value, e.key);
        t.true(await isPerturbationKit(kit));
        t.false(await isPerturbationKit(model));
        t.true(r.size < fs.statSync(model).size);
        // The tensor's bytes are the model's.
        const st = src.tensors.find((x) => x.name === "token_embd.weight")!;
        const kt = k.tensors[0];
        t.deepEqual([kt.type, kt.shape], [st.type, st.shape]);
        const a = Buffer.alloc(st.nBytes), b = Buffer.alloc(kt.nBytes);
        const fa = fs.openSync(model, "r"), fb = fs.openSync(kit, "r");
        fs.readSync(fa, a, 0, a.length, src.info.dataOffset + st.offset);
        fs.readSync(fb, b, 0, b.length, k.info.dataOffset + kt.offset);
        fs.closeSync(fa);
        fs.closeSync(fb);
        t.true(a.equals(b));

        // The tokenizer loads vocab-only from the kit and tokenizes as the model does.
        const mv = await loadModel(model, {vocabOnly: true}), kv = await loadModel(kit, {vocabOnly: true});
        for (const s of texts)
            t.deepEqual(Array.from(kv.tokenize(s)), Array.from(mv.tokenize(s)));
        mv.close();
        kv.close();

        for (const mechanism of ["custext", "santext"] as const) {
            const opts = {mechanism, epsilon: 2, seed: 11, cacheDir: false as const, ...(mechanism === "custext" ? {k: 5} : {})};
            const pm = await createPerturber({...opts, embeddings: model});
            const pk = await createPerturber({...opts, embeddings: kit});
            try {
                t.is(pk.summary.modelHash, pm.summary.modelHash, "same cache key");
                const om = await pm.perturbTexts(texts), ok = await pk.perturbTexts(texts);
                t.deepEqual(ok, om);
                t.true(om.some((x, i) => x.text !== texts[i]), "the texts were perturbed");
            } finally {
                pm.close();
                pk.close();
            }
        }
    });
}

maybe("kit: a model without token_embd.weight or the output path equal to the input is refused", async (t) => {
    const dir = tempDir(t);
    const kit = path.join(dir, "kit.gguf");
    await writePerturbationKit(stories260K, kit);
    await t.throwsAsync(writePerturbationKit(kit, kit), {message: /is the model file/});
    const noEmbd = path.join(dir, "truncated.gguf");
    fs.writeFileSync(noEmbd, fs.readFileSync(kit).subarray(0, 100));
    await t.throwsAsync(writePerturbationKit(noEmbd, path.join(dir, "x.gguf")));
    t.false(fs.existsSync(path.join(dir, "x.gguf")));
});
