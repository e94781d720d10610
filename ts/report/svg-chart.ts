// The one SVG chart writer: Block Influence per layer (ts/cli/bi.ts), PruFed accuracy by round
// (ts/federated/prufed/plot.ts) and the experiment's ablation plots (ts/experiment/tables.ts) all
// draw through svgChart, with one palette, one layout (title, axes, y grid, legend on the right)
// and no dependencies: a standalone SVG a browser or a README shows as is.

/** The chart colours, in series order (Tableau 10). */
export const palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac", "#eeca3b"];

/** One plotted value; `err` draws a bar from y - err to y + err. */
export interface ChartPoint {
    x: number;
    y: number;
    err?: number;
}

export interface ChartSeries {
    name: string;
    points: ChartPoint[];
    /** "line" (default): a polyline with a dot per point; "bar": one bar per point from the axis. */
    kind?: "line" | "bar";
}

export interface ChartAxis {
    label: string;
    /** The values at the two ends of the axis. */
    range: [number, number];
    ticks: {value: number; label: string}[];
}

export interface ChartOptions {
    title: string;
    series: ChartSeries[];
    /** band: x values are slot indices, each point centred in its slot (bar charts); else linear. */
    x: ChartAxis & {band?: boolean};
    y: ChartAxis;
}

const width = 720, height = 360, left = 60, right = 170, top = 40, bottom = 50;

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
const num = (v: number) => Number(v.toFixed(2));

/** `count + 1` evenly spaced ticks from `from` to `to`, labelled by `format`. */
export function evenTicks(from: number, to: number, count: number, format: (v: number) => string): ChartAxis["ticks"] {
    return Array.from({length: count + 1}, (_, k) => from + ((to - from) * k) / count).map((value) => ({value, label: format(value)}));
}

/** Every `ceil(n / most)`-th index of 0..n-1 as a tick labelled by the index. */
export function indexTicks(n: number, most: number): ChartAxis["ticks"] {
    const step = Math.max(1, Math.ceil(n / most));
    return Array.from({length: Math.ceil(n / step)}, (_, k) => ({value: k * step, label: String(k * step)}));
}

function scales(o: ChartOptions): {sx: (x: number) => number; sy: (y: number) => number} {
    const [x0, x1] = o.x.range, [y0, y1] = o.y.range;
    const plotW = width - left - right, plotH = height - top - bottom;
    const sx = o.x.band
        ? (x: number) => left + ((x - x0 + 0.5) * plotW) / Math.max(1, x1 - x0 + 1)
        : (x: number) => left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * plotW;
    const sy = (y: number) => top + (1 - (y - y0) / Math.max(1e-12, y1 - y0)) * plotH;
    return {sx: (x) => num(sx(x)), sy: (y) => num(sy(y))};
}

function frame(o: ChartOptions, sx: (x: number) => number, sy: (y: number) => number): string[] {
    const midX = (left + width - right) / 2, midY = (top + height - bottom) / 2;
    const parts = [
        `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
        `<rect width="${width}" height="${height}" fill="white"/>`,
        `<text x="${midX}" y="22" text-anchor="middle" font-size="15">${esc(o.title)}</text>`,
    ];
    for (const t of o.y.ticks)
        parts.push(`<line x1="${left}" y1="${sy(t.value)}" x2="${width - right}" y2="${sy(t.value)}" stroke="#e5e5e5"/>`,
            `<text x="${left - 6}" y="${sy(t.value) + 4}" text-anchor="end">${esc(t.label)}</text>`);
    for (const t of o.x.ticks)
        parts.push(`<text x="${sx(t.value)}" y="${height - bottom + 16}" text-anchor="middle">${esc(t.label)}</text>`);
    parts.push(
        `<line x1="${left}" y1="${height - bottom}" x2="${width - right}" y2="${height - bottom}" stroke="black"/>`,
        `<line x1="${left}" y1="${top}" x2="${left}" y2="${height - bottom}" stroke="black"/>`,
        `<text x="${midX}" y="${height - 12}" text-anchor="middle">${esc(o.x.label)}</text>`,
        `<text x="16" y="${midY}" text-anchor="middle" transform="rotate(-90 16 ${midY})">${esc(o.y.label)}</text>`);
    return parts;
}

function seriesMarks(o: ChartOptions, s: ChartSeries, color: string, sx: (x: number) => number, sy: (y: number) => number): string[] {
    const parts: string[] = [];
    if (s.kind === "bar") {
        const slots = Math.max(1, o.x.range[1] - o.x.range[0] + 1);
        const bar = num((0.8 * (width - left - right)) / slots), base = sy(Math.max(o.y.range[0], 0));
        for (const p of s.points)
            parts.push(`<rect x="${num(sx(p.x) - bar / 2)}" y="${Math.min(sy(p.y), base)}" width="${bar}" height="${num(Math.abs(base - sy(p.y)))}" fill="${color}" opacity="0.6"/>`);
    } else {
        if (s.points.length > 1)
            parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${s.points.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ")}"/>`);
        for (const p of s.points)
            parts.push(`<circle cx="${sx(p.x)}" cy="${sy(p.y)}" r="3" fill="${color}"/>`);
    }
    for (const p of s.points)
        if (p.err !== undefined && Number.isFinite(p.err) && p.err > 0)
            parts.push(`<line class="stderr" x1="${sx(p.x)}" y1="${sy(p.y - p.err)}" x2="${sx(p.x)}" y2="${sy(p.y + p.err)}" stroke="${color}"/>`);
    return parts;
}

/** A chart as a standalone SVG document (ends with a newline). */
export function svgChart(o: ChartOptions): string {
    const {sx, sy} = scales(o);
    const parts = frame(o, sx, sy);
    o.series.forEach((s, k) => {
        const color = palette[k % palette.length];
        parts.push(...seriesMarks(o, s, color, sx, sy),
            `<rect x="${width - right + 15}" y="${top + 16 * k}" width="10" height="10" fill="${color}"/>`,
            `<text x="${width - right + 30}" y="${top + 16 * k + 9}">${esc(s.name)}</text>`);
    });
    parts.push("</svg>");
    return parts.join("\n") + "\n";
}
