// Accuracy by round, one line per client depth, as a standalone SVG (the style of blockInfluenceSvg);
// with `stderr`, a bar of ± one standard error at every point.

export function roundsSvg(series: {name: string; values: number[]; stderr?: number[]}[], title: string): string {
    const w = 720, h = 360, left = 60, right = 170, top = 40, bottom = 50;
    const n = Math.max(1, ...series.map((s) => s.values.length));
    const x = (i: number) => left + (i * (w - left - right)) / Math.max(1, n - 1);
    const y = (v: number) => top + (1 - v) * (h - top - bottom);
    const colors = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"];
    const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const parts: string[] = [
        `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="12">`,
        `<rect width="${w}" height="${h}" fill="white"/>`,
        `<text x="${(w - right + left) / 2}" y="22" text-anchor="middle" font-size="15">${esc(title)}</text>`,
        `<line x1="${left}" y1="${h - bottom}" x2="${w - right}" y2="${h - bottom}" stroke="black"/>`,
        `<line x1="${left}" y1="${top}" x2="${left}" y2="${h - bottom}" stroke="black"/>`,
        `<text x="${(w - right + left) / 2}" y="${h - 12}" text-anchor="middle">round</text>`,
        `<text x="16" y="${(top + h - bottom) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(top + h - bottom) / 2})">held-out accuracy</text>`,
    ];
    for (let k = 0; k <= 4; k++) {
        const v = k / 4;
        parts.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(2)}</text>`,
            `<line x1="${left}" y1="${y(v)}" x2="${w - right}" y2="${y(v)}" stroke="#ddd"/>`);
    }
    series.forEach((s, k) => {
        const color = colors[k % colors.length];
        parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${s.values.map((v, i) => `${x(i)},${y(v)}`).join(" ")}"/>`);
        s.values.forEach((v, i) => parts.push(`<circle cx="${x(i)}" cy="${y(v)}" r="3" fill="${color}"/>`));
        s.stderr?.forEach((e, i) => {
            if (Number.isFinite(e) && e > 0)
                parts.push(`<line class="stderr" x1="${x(i)}" y1="${y(Math.min(1, s.values[i] + e))}" x2="${x(i)}" y2="${y(Math.max(0, s.values[i] - e))}" stroke="${color}"/>`);
        });
        parts.push(`<rect x="${w - right + 15}" y="${top + 16 * k}" width="10" height="10" fill="${color}"/>`,
            `<text x="${w - right + 30}" y="${top + 16 * k + 9}">${esc(s.name)}</text>`);
    });
    const step = Math.max(1, Math.ceil(n / 20));
    for (let i = 0; i < n; i += step)
        parts.push(`<text x="${x(i)}" y="${h - bottom + 16}" text-anchor="middle">${i}</text>`);
    parts.push("</svg>");
    return parts.join("\n") + "\n";
}
