// The shared chart writer: points land where the axes say, error bars span ± err, names are
// escaped, and the three charts of the project (BI, PruFed rounds, ablations) draw in one palette.
import test from "ava";
import {ablationSvg} from "../../ts/experiment/tables.js";
import {roundsSvg} from "../../ts/federated/prufed/plot.js";
import {blockInfluenceSvg} from "../../ts/prune/block-influence.js";
import {evenTicks, palette, svgChart} from "../../ts/report/svg-chart.js";

const attrs = (svg: string, tag: string) => [...svg.matchAll(new RegExp(`<${tag} ([^>]*)/>`, "g"))]
    .map((m) => Object.fromEntries([...m[1].matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1], a[2]])));

test("points, error bars and legend follow the axes; text is escaped", (t) => {
    const svg = svgChart({title: "a < b & c", series: [{name: "s<1>", points: [{x: 0, y: 0}, {x: 10, y: 1, err: 0.5}]}],
        x: {label: "x", range: [0, 10], ticks: [{value: 0, label: "0"}, {value: 10, label: "10"}]},
        y: {label: "y", range: [0, 1], ticks: evenTicks(0, 1, 2, (v) => v.toFixed(1))}});
    t.regex(svg, /^<svg [^>]*>[\s\S]*<\/svg>\n$/);
    t.true(svg.includes("a &lt; b &amp; c") && svg.includes("s&lt;1>"));
    // plot area: x from 60 to 720 - 170 = 550, y from 360 - 50 = 310 (0) up to 40 (1)
    t.deepEqual(attrs(svg, "circle").map((c) => [Number(c.cx), Number(c.cy)]), [[60, 310], [550, 40]]);
    const bar = attrs(svg, "line").find((l) => l.stroke === palette[0])!;
    t.deepEqual([bar.x1, bar.y1, bar.y2].map(Number), [550, 175, -95]);
    t.deepEqual([...svg.matchAll(/text-anchor="end">([^<]*)</g)].map((m) => m[1]), ["0.0", "0.5", "1.0"]);
});

test("bars stand on the axis, one slot per x; BI, rounds and ablation plots use the one palette", (t) => {
    const bi = blockInfluenceSvg([{name: "bi", values: [1, 2]}, {name: "bi_label", values: [0.5, 1]}], "bi");
    const bars = attrs(bi, "rect").filter((r) => r.opacity === "0.6");
    t.deepEqual(bars.map((b) => Number(b.y) + Number(b.height)), [310, 310]);
    t.deepEqual(bars.map((b) => Number(b.height)), [135, 270]);
    const rounds = roundsSvg([{name: "depth 4", values: [0.2, 0.4]}, {name: "depth 2", values: [0.1, 0.3]}], "r");
    const cell = (mean: number) => ({mean, stderr: 2, seeds: 2});
    const ablation = ablationSvg({title: "t", rowName: "ratio", columns: ["S", "C"],
        rows: [{label: "0.1", cells: [cell(60), cell(50)]}, {label: "0.3", cells: [cell(55), cell(45)]}], notes: []}, "t");
    for (const svg of [bi, rounds, ablation]) {
        const colours = new Set([...svg.matchAll(/(?:fill|stroke)="(#[0-9a-f]{6})"/g)].map((m) => m[1]).filter((c) => c !== "#e5e5e5"));
        t.deepEqual([...colours].sort(), palette.slice(0, 2).sort());
    }
    t.is(attrs(ablation, "line").filter((l) => l.stroke === palette[0]).length, 2, "one error bar per point of S");
});
