// The paper's table shapes from cell results: the main table (methods × tasks, S and C columns)
// and one table per ablation factor, as Markdown and JSON, each number the mean over seeds with its
// standard error (the spread over seeds and the evaluation's sampling error combined), and an SVG
// line plot for each numeric ablation (ε, k, pruning ratio).
import fs from "node:fs";
import path from "node:path";
import {writeJsonAtomic} from "./cache.js";
import {quantizeSetting, type ExperimentConfig, type MethodName, type Settings} from "./config.js";
import type {FlowResult} from "./flows.js";
import {svgChart} from "../report/svg-chart.js";
import {writeFileDurableSync} from "../durable-file.js";
import {formatBytes} from "../cli/output.js";

export interface CellRecord extends FlowResult {
    key: string;
    method: MethodName;
    task: string;
    seed: number;
    group: string;
    settings: Settings;
    seconds: number;
}

export interface Stat {
    /** Accuracy in percent, mean over seeds. */
    mean: number;
    /** Standard error in percent. */
    stderr: number;
    seeds: number;
}

/**
 * Mean accuracy over seeds and its standard error. Every seed is scored on the same items, so the
 * evaluation's sampling error does not shrink with more seeds: se² = s²_seeds / n + mean(se²_eval).
 * With one seed that is the evaluation's standard error (lm-evaluation-harness's acc_stderr).
 */
function stat(records: CellRecord[], stage: "S" | "C"): Stat | null {
    const xs = records.map((r) => r[stage]).filter((x) => x !== null && x !== undefined);
    if (xs.length === 0)
        return null;
    const accs = xs.map((x) => 100 * x!.acc);
    const n = accs.length;
    const mean = accs.reduce((a, b) => a + b, 0) / n;
    const seedVar = n > 1 ? accs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1) : 0;
    const evalVar = xs.reduce((a, x) => a + (100 * (x!.acc_stderr ?? NaN)) ** 2, 0) / n;
    return {mean, stderr: Math.sqrt(seedVar / n + evalVar), seeds: n};
}

const fmt = (s: Stat | null) => (s ? `${s.mean.toFixed(1)} ± ${Number.isFinite(s.stderr) ? s.stderr.toFixed(1) : "n/a"}` : "—");

export interface Table {
    title: string;
    /** Row label column name. */
    rowName: string;
    columns: string[];
    rows: {label: string; cells: (Stat | null)[]; sizes?: (number | null)[]}[];
    /** Columns after the accuracies giving the rows' `sizes`: the delivered model's bytes (mean over seeds). */
    sizeColumns?: string[];
    notes: string[];
}

function markdown(t: Table): string {
    const columns = [...t.columns, ...(t.sizeColumns ?? [])];
    const head = `| ${t.rowName} | ${columns.join(" | ")} |\n|${["", ...columns].map(() => "---").join("|")}|\n`;
    const sizes = (r: Table["rows"][number]) => (r.sizes ?? []).map((b) => ` ${b === null ? "—" : formatBytes(b)} |`).join("");
    const body = t.rows.map((r) => `| ${r.label} | ${r.cells.map(fmt).join(" | ")} |${sizes(r)}`).join("\n");
    return `### ${t.title}\n\n${head}${body}\n${t.notes.map((n) => `\n${n}`).join("")}\n`;
}

const methodLabels: Record<MethodName, string> = {"zero-shot": "Source, zero-shot", "dense-sft": "DenseSFT", "plain-c": "Plain-C",
    "dp-instruct-c": "DP-Instruct-C", "ppc-gpt": "PPC-GPT"};
const factorTitles: Record<keyof Settings, string> = {epsilon: "privacy budget ε", k: "synthetic ratio k", rationales: "rationales",
    serverRetrain: "server-side retraining", metric: "layer importance (BI vs Seq)", ratio: "pruning ratio",
    quantize: "quantization of the delivered model (what the task importance matrix buys)"};

/** A row of an ablation table: the value, or for quantize what it means. */
function valueLabel(factor: keyof Settings, v: unknown): string {
    if (factor !== "quantize")
        return String(v);
    const q = quantizeSetting(v as string);
    return q ? `quantized (${q.type}, ${q.imatrix ? "task imatrix" : "no imatrix"})` : "unquantized";
}

/** Mean bytes of the model the server handed over, over the records that have it (cells cached before it was recorded do not). */
function meanModelBytes(records: CellRecord[]): number | null {
    const xs = records.map((r) => r.details.modelBytes).filter((x): x is number => typeof x === "number");
    return xs.length ? Math.round(xs.reduce((a, b) => a + b, 0) / xs.length) : null;
}

/** The tables of a set of cell results. */
export function buildTables(config: ExperimentConfig, records: CellRecord[]): Table[] {
    const tables: Table[] = [];
    const main = records.filter((r) => sameSettings(r.settings, config.defaults));
    const d = config.defaults;
    tables.push({
        title: `Main results (ε = ${d.epsilon}, k = ${d.k}, ${Math.round(d.ratio * 100)}% pruned by ${d.metric.toUpperCase()}): accuracy %, S = server stage, C = after client retraining`,
        rowName: "method",
        columns: config.tasks.flatMap((t) => [`${t.name} S`, `${t.name} C`]),
        rows: config.methods.map((m) => ({
            label: methodLabels[m],
            cells: config.tasks.flatMap((t) => {
                const rs = main.filter((r) => r.method === m && r.task === t.name);
                return [stat(rs, "S"), stat(rs, "C")];
            }),
        })),
        notes: notesOf(main),
    });
    for (const factor of Object.keys(config.ablations) as (keyof Settings)[]) {
        const values = config.ablations[factor] ?? [];
        if (values.length === 0)
            continue;
        const rs = records.filter((r) => r.method === "ppc-gpt" && config.ablationTasks.includes(r.task) && config.ablationSeeds.includes(r.seed));
        const at = (t: string, v: unknown) => rs.filter((r) => r.task === t && sameSettings(r.settings, {...config.defaults, [factor]: v}));
        tables.push({
            title: `Ablation: ${factorTitles[factor]} (PPC-GPT; other settings as the main table)`,
            rowName: factor,
            columns: config.ablationTasks.flatMap((t) => [`${t} S`, `${t} C`]),
            rows: values.map((v) => ({
                label: valueLabel(factor, v),
                cells: config.ablationTasks.flatMap((t) => [stat(at(t, v), "S"), stat(at(t, v), "C")]),
                ...(factor === "quantize" ? {sizes: config.ablationTasks.map((t) => meanModelBytes(at(t, v)))} : {}),
            })),
            ...(factor === "quantize" ? {sizeColumns: config.ablationTasks.map((t) => `${t} model size`)} : {}),
            notes: values.flatMap((v) => config.ablationTasks.flatMap((t) => at(t, v).filter((r) => r.error)
                .map((r) => `- ${factor} = ${v}, ${t}, seed ${r.seed}: ${r.error}`))),
        });
    }
    return tables;
}

function sameSettings(a: Settings, b: Settings): boolean {
    // no quantize (a config or a cell from before the factor) is unquantized
    const value = (s: Settings, k: keyof Settings) => (k === "quantize" ? s.quantize ?? "none" : s[k]);
    const keys = new Set([...Object.keys(a), ...Object.keys(b), "quantize"]) as Set<keyof Settings>;
    return [...keys].every((k) => value(a, k) === value(b, k));
}

function notesOf(records: CellRecord[]): string[] {
    return records.filter((r) => r.error).map((r) => `- ${methodLabels[r.method]} on ${r.task}, seed ${r.seed}: ${r.error}`);
}

/** A line plot of S and C per task against a numeric factor, with ± one standard error. */
export function ablationSvg(table: Table, title: string): string {
    const xs = table.rows.map((r) => Number(r.label));
    const series = table.columns.map((name, j) => ({name, points: table.rows.flatMap((r, i) => r.cells[j]
        ? [{x: xs[i], y: r.cells[j]!.mean, err: Number.isFinite(r.cells[j]!.stderr) ? r.cells[j]!.stderr : undefined}] : [])}));
    const ys = series.flatMap((s) => s.points.flatMap((p) => [p.y - (p.err ?? 0), p.y + (p.err ?? 0)]));
    const [y0, y1] = ys.length ? [Math.max(0, Math.floor(Math.min(...ys) / 10) * 10), Math.min(100, Math.ceil(Math.max(...ys) / 10) * 10)] : [0, 100];
    const step = Math.max(5, Math.round((y1 - y0) / 5 / 5) * 5);
    const yTicks = Array.from({length: Math.floor((y1 - y0) / step) + 1}, (_, k) => ({value: y0 + k * step, label: String(y0 + k * step)}));
    return svgChart({
        title, series,
        x: {label: table.rowName, range: [Math.min(...xs), Math.max(...xs)], ticks: xs.map((x) => ({value: x, label: String(x)}))},
        y: {label: "accuracy %", range: [y0, y1], ticks: yTicks},
    });
}

/** Writes tables.md, tables.json and plots/<factor>.svg; returns the files written. */
export function writeTables(config: ExperimentConfig, records: CellRecord[], out: string): string[] {
    const tables = buildTables(config, records);
    const files: string[] = [];
    const md = [`# Experiment "${config.name}"\n\n${config.description}\n\nSource ${config.source}; seeds ${config.seeds.join(", ")} ` +
        `(ablations: ${config.ablationSeeds.join(", ")}). Each number: mean accuracy (%) over seeds ± its standard error ` +
        `(se² = variance over seeds / seeds + the evaluation's se², as every seed is scored on the same items).\n`, ...tables.map(markdown)].join("\n");
    const write = (name: string, text: string) => {
        const file = path.join(out, name);
        fs.mkdirSync(path.dirname(file), {recursive: true});
        writeFileDurableSync(file, text);
        files.push(file);
    };
    write("tables.md", md);
    writeJsonAtomic(path.join(out, "tables.json"), {config: config.name, tables, cells: records});
    files.push(path.join(out, "tables.json"));
    for (const t of tables) {
        const factor = t.rowName as keyof Settings;
        if (!["epsilon", "k", "ratio"].includes(factor))
            continue;
        write(path.join("plots", `${factor}.svg`), ablationSvg(t, t.title.replace(/ \(PPC-GPT.*$/, "")));
    }
    return files;
}
