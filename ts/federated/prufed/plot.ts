// Accuracy by round, one line per client depth, as a standalone SVG (ts/report/svg-chart.ts);
// with `stderr`, a bar of ± one standard error at every point.
import {evenTicks, indexTicks, svgChart} from "../../report/svg-chart.js";

export function roundsSvg(series: {name: string; values: number[]; stderr?: number[]}[], title: string): string {
    const n = Math.max(1, ...series.map((s) => s.values.length));
    return svgChart({
        title,
        series: series.map((s) => ({name: s.name, points: s.values.map((y, x) => ({x, y, ...(s.stderr?.[x] !== undefined ? {err: s.stderr[x]} : {})}))})),
        x: {label: "round", range: [0, Math.max(1, n - 1)], ticks: indexTicks(n, 20)},
        y: {label: "held-out accuracy", range: [0, 1], ticks: evenTicks(0, 1, 4, (v) => v.toFixed(2))},
    });
}
