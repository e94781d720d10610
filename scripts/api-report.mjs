#!/usr/bin/env node
// The API report: every subpath in package.json "exports", its exported values (with their kind, read
// from the built module) and types (read from the entry's `export type {...}` lists), so a change to
// the public surface shows in review as a change to api/ppc-gpt.api.json.
//
//   node scripts/api-report.mjs           check: exit 1 with the differences if the report is stale
//   node scripts/api-report.mjs --write   regenerate api/ppc-gpt.api.json (after `npx tsc -p tsconfig.json`)
//
// test/api/surface.test.ts runs the same check, plus: each stable value has a TSDoc comment.
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath, pathToFileURL} from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const reportPath = path.join(root, "api", "ppc-gpt.api.json");

/** The package's subpaths: name ("ppc-gpt/federated"), built module, TypeScript entry, stable or not. */
export function entries() {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
    return Object.entries(pkg.exports).map(([subpath, target]) => {
        const built = path.join(root, target.import);
        const source = path.join(root, target.import.replace(/^\.\/dist\//, "").replace(/\.js$/, ".ts"));
        const name = subpath === "." ? pkg.name : `${pkg.name}/${subpath.slice(2)}`;
        return {name, built, source, stable: !subpath.split("/").includes("internal")};
    });
}

function valueKind(value) {
    if (typeof value === "function")
        return /^class[\s{]/.test(Function.prototype.toString.call(value)) ? "class" : "function";
    return "const";
}

/** Type-only names of an entry file: `export type {A, B}` lists and `type X` members of value lists. */
function typeNames(source) {
    const text = fs.readFileSync(source, "utf8");
    const names = [];
    for (const m of text.matchAll(/export\s+(type\s+)?\{([^}]*)\}/g))
        for (const raw of m[2].split(",").map((s) => s.trim()).filter(Boolean))
            if (m[1] || raw.startsWith("type ")) names.push(raw.replace(/^type\s+/, "").split(/\s+as\s+/).pop());
    return names.sort();
}

/** The report as an object: {subpath: {values: {name: kind}, types: [names]}}. */
export async function buildReport() {
    const report = {};
    for (const entry of entries()) {
        const module = await import(pathToFileURL(entry.built).href);
        const values = Object.fromEntries(Object.keys(module).sort().map((k) => [k, valueKind(module[k])]));
        report[entry.name] = {stability: entry.stable ? "public" : "unstable", values, types: typeNames(entry.source)};
    }
    return report;
}

export const formatReport = (report) => JSON.stringify(report, null, 2) + "\n";

/** Lines describing how `current` differs from the committed report (empty when it matches). */
export function reportDifferences(committed, current) {
    const out = [];
    for (const name of new Set([...Object.keys(committed), ...Object.keys(current)])) {
        const a = committed[name] ?? {values: {}, types: []}, b = current[name] ?? {values: {}, types: []};
        for (const k of new Set([...Object.keys(a.values), ...Object.keys(b.values)]))
            if (a.values[k] !== b.values[k]) out.push(`${name}: value ${k}: ${a.values[k] ?? "(absent)"} -> ${b.values[k] ?? "(absent)"}`);
        const ta = new Set(a.types), tb = new Set(b.types);
        for (const k of tb) if (!ta.has(k)) out.push(`${name}: type ${k} added`);
        for (const k of ta) if (!tb.has(k)) out.push(`${name}: type ${k} removed`);
        if (a.stability !== b.stability) out.push(`${name}: stability ${a.stability} -> ${b.stability}`);
    }
    return out;
}

// Where a name is declared: follow `export {...} from` re-exports from the entry to the declaring file.
function declaringFile(file, name, seen = new Set()) {
    if (seen.has(file)) return undefined;
    seen.add(file);
    const text = fs.readFileSync(file, "utf8");
    const declared = new RegExp(`^export\\s+(?:declare\\s+)?(?:abstract\\s+)?(?:async\\s+)?(?:function\\*?|class|const|let)\\s+${name}\\b`, "m");
    if (declared.test(text)) return file;
    for (const m of text.matchAll(/export\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g)) {
        const member = m[1].split(",").map((s) => s.trim()).find((s) => s.split(/\s+as\s+/).pop() === name);
        if (member) return declaringFile(path.resolve(path.dirname(file), m[2].replace(/\.js$/, ".ts")), member.split(/\s+as\s+/)[0], seen);
    }
    return undefined;
}

/** Stable values without a TSDoc comment (`/** ... *\/`) right above their declaration. */
export function undocumented(report) {
    const missing = [];
    for (const entry of entries().filter((e) => e.stable))
        for (const name of Object.keys(report[entry.name].values)) {
            const file = declaringFile(entry.source, name);
            const text = file && fs.readFileSync(file, "utf8");
            const doc = new RegExp(`\\*/\\s*(?:@\\w+(?:\\([^)]*\\))?\\s*)*export\\s+(?:declare\\s+)?(?:abstract\\s+)?(?:async\\s+)?(?:function\\*?|class|const|let)\\s+${name}\\b`);
            if (!text || !doc.test(text)) missing.push(`${entry.name}: ${name}${file ? ` (${path.relative(root, file)})` : " (declaration not found)"}`);
        }
    return missing;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    const current = await buildReport();
    if (process.argv.includes("--write")) {
        fs.mkdirSync(path.dirname(reportPath), {recursive: true});
        const tmp = `${reportPath}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, formatReport(current));
        fs.renameSync(tmp, reportPath);
        console.log(`wrote ${path.relative(root, reportPath)}`);
    } else {
        const committed = fs.existsSync(reportPath) ? JSON.parse(fs.readFileSync(reportPath, "utf8")) : {};
        const diff = reportDifferences(committed, current);
        const docs = undocumented(current).map((m) => `no TSDoc: ${m}`);
        for (const line of [...diff, ...docs]) console.error(line);
        if (diff.length > 0) console.error("the public surface changed: review, then run `node scripts/api-report.mjs --write`");
        process.exitCode = diff.length + docs.length > 0 ? 1 : 0;
    }
}
