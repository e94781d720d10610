// The public surface: what "ppc-gpt" and "ppc-gpt/federated" export is the committed API report
// (api/ppc-gpt.api.json), small, documented, and free of the helpers that live in the unstable
// "ppc-gpt/internal" subpaths. Regenerate the report after a deliberate change:
//   npx tsc -p tsconfig.json && node scripts/api-report.mjs --write
import fs from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";
import test from "ava";
import {repoRoot} from "../helpers.js";

interface SubpathReport {stability: string; values: Record<string, string>; types: string[]}
type Report = Record<string, SubpathReport>;
interface ApiReportModule {
    reportPath: string;
    buildReport(): Promise<Report>;
    reportDifferences(committed: Report, current: Report): string[];
    undocumented(report: Report): string[];
}
const api = await import(pathToFileURL(path.join(repoRoot, "scripts", "api-report.mjs")).href) as ApiReportModule;
const current = await api.buildReport();
const committed = JSON.parse(fs.readFileSync(api.reportPath, "utf8")) as Report;

test("the exported surface matches the committed API report", (t) => {
    const diff = api.reportDifferences(committed, current);
    t.deepEqual(diff, [], `${diff.join("\n")}\nreview, then: node scripts/api-report.mjs --write`);
});

test("a change to the surface shows as a difference", (t) => {
    const changed = structuredClone(current);
    changed["ppc-gpt"].values.argmax = "function";
    delete changed["ppc-gpt/federated"].values.startFlServer;
    changed["ppc-gpt"].types.push("Extra");
    t.deepEqual(api.reportDifferences(current, changed), ["ppc-gpt: value argmax: (absent) -> function", "ppc-gpt: type Extra added",
        "ppc-gpt/federated: value startFlServer: function -> (absent)"]);
});

test("the stable subpaths export under 80 values, none of them an internal helper", (t) => {
    const stable = Object.values(current).filter((r) => r.stability === "public");
    t.is(stable.length, 2);
    const values = stable.flatMap((r) => Object.keys(r.values));
    t.true(values.length < 80, `${values.length} values`);
    const helpers = ["native", "argmax", "mean", "Semaphore", "applyAdamW", "journalPath", "tokenHash", "roundFile", "meanStderr",
        "GaussianNoise", "PairEncoder", "extractJsonObject", "authenticate", "clientPart", "roundsSvg"];
    t.deepEqual(values.filter((v) => helpers.includes(v)), []);
    // Each helper is still reachable, from an internal subpath.
    const internal = Object.values(current).filter((r) => r.stability === "unstable").flatMap((r) => Object.keys(r.values));
    t.deepEqual(helpers.filter((h) => !internal.includes(h)), []);
});

test("every stable value has a TSDoc comment", (t) => {
    t.deepEqual(api.undocumented(current), []);
});

test("the subpaths resolve through the package's exports map", async (t) => {
    // Self-reference by package name: what an installed consumer's import resolves to.
    const internal = await import("ppc-gpt/internal") as Record<string, unknown>;
    t.is(typeof internal.argmax, "function");
    const federatedInternal = await import("ppc-gpt/federated/internal") as Record<string, unknown>;
    t.is(typeof federatedInternal.tokenHash, "function");
    const main = await import("ppc-gpt") as Record<string, unknown>;
    t.is(main.argmax, undefined);
});
