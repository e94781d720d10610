// Shared CLI plumbing: errors with exit codes, progress on a TTY or as JSON lines, tables.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type {Command} from "commander";

/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
    override name = "UsageError";
}

export interface OutputMode {
    json: boolean;
}

/** Progress reporter: a bar on a TTY, JSON lines on stderr with --json, silent otherwise. */
export function progressReporter(mode: OutputMode, stage: string, unit: "bytes" | "items" | "tokens" = "items"): {
    update: (done: number, total: number) => void;
    finish: () => void;
} {
    const tty = process.stderr.isTTY && !mode.json;
    let last = 0;
    const started = Date.now();
    const fmt = (x: number) => unit === "bytes" ? formatBytes(x) : Math.round(x).toLocaleString("en-US");
    return {
        update(done, total) {
            const now = Date.now();
            if (now - last < 100 && done < total)
                return;
            last = now;
            if (mode.json) {
                process.stderr.write(JSON.stringify({event: "progress", stage, done, total, unit}) + "\n");
            } else if (tty) {
                const width = 30;
                const frac = total > 0 ? Math.min(1, done / total) : 0;
                const filled = Math.round(frac * width);
                const elapsed = (now - started) / 1000;
                const eta = frac > 0 ? elapsed / frac - elapsed : 0;
                process.stderr.write(`\r${stage} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ` +
                    `${(frac * 100).toFixed(0).padStart(3)}% ${fmt(done)}/${fmt(total)} eta ${eta.toFixed(0)}s `);
            }
        },
        finish() {
            if (tty && last > 0)
                process.stderr.write("\n");
        },
    };
}

export function formatBytes(n: number): string {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
        n /= 1024;
        i++;
    }
    return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

export function formatCount(n: number): string {
    return n.toLocaleString("en-US");
}

/** Left-aligned text table with a header row. */
export function table(header: string[], rows: (string | number)[][]): string {
    const cells = [header, ...rows.map((r) => r.map(String))];
    const widths = header.map((_, c) => Math.max(...cells.map((r) => (r[c] ?? "").length)));
    const line = (r: string[]) => r.map((x, c) => x.padEnd(widths[c])).join("  ").trimEnd();
    return [line(cells[0]), line(widths.map((w) => "-".repeat(w))), ...cells.slice(1).map(line)].join("\n") + "\n";
}

export function printJson(value: unknown): void {
    process.stdout.write(JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v), 2) + "\n");
}

/** Parses "2,5,7-9" into integers (ranges expanded, order kept); `option` names the flag in errors. */
export function parseIndexList(text: string, option: string, what = "indices"): number[] {
    const out: number[] = [];
    for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
        const range = /^(\d+)-(\d+)$/.exec(part);
        if (range) {
            const a = Number(range[1]), b = Number(range[2]);
            if (b < a)
                throw new UsageError(`${option}: bad range "${part}"`);
            for (let i = a; i <= b; i++)
                out.push(i);
        } else if (/^\d+$/.test(part)) {
            out.push(Number(part));
        } else {
            throw new UsageError(`${option} takes comma-separated ${what} or ranges like 2,5,7-9 (got "${part}")`);
        }
    }
    if (out.length === 0)
        throw new UsageError(`${option} needs at least one value`);
    return out;
}

export function parseNumber(text: string, name: string, check: (x: number) => boolean, expect: string): number {
    const x = Number(text);
    if (text.trim() === "" || !Number.isFinite(x) || !check(x))
        throw new UsageError(`${name} must be ${expect} (got "${text}")`);
    return x;
}

/**
 * An option with a second name (`--batch-size` for `--batch`): the value given under either name,
 * and the flag an error about it should name. Both given with different values is a usage error;
 * the first name's default never counts against the second.
 */
export function aliasedOption(cmd: Command, name: string, alias: string): {value: string | undefined; flag: string} {
    const flag = (key: string) => cmd.options.find((o) => o.attributeName() === key)?.long ?? `--${key}`;
    const value = cmd.getOptionValue(name) as string | undefined;
    const aliasValue = cmd.getOptionValue(alias) as string | undefined;
    if (aliasValue === undefined)
        return {value, flag: flag(name)};
    if (cmd.getOptionValueSource(name) === "cli" && value !== aliasValue)
        throw new UsageError(`give ${flag(name)} or ${flag(alias)} (the same option), not both`);
    return {value: aliasValue, flag: flag(alias)};
}

/**
 * Checks --tls-cert and --tls-key (both or neither) before a server starts, so a wrong file is named
 * with its flag (Node's own errors say "ENOENT" or "PEM routines::no start line" and name neither).
 */
export function checkTlsFiles(certFile: string | undefined, keyFile: string | undefined): void {
    if (certFile === undefined && keyFile === undefined)
        return;
    if (certFile === undefined || keyFile === undefined)
        throw new UsageError("give --tls-cert and --tls-key together");
    const read = (file: string, flag: string): Buffer => {
        try {
            return fs.readFileSync(file);
        } catch (err) {
            const e = err as NodeJS.ErrnoException;
            throw new Error(`${flag} ${file}: cannot read (${e.code === "ENOENT" ? "no such file" : e.message})`);
        }
    };
    const certPem = read(certFile, "--tls-cert"), keyPem = read(keyFile, "--tls-key");
    let cert: crypto.X509Certificate;
    try {
        cert = new crypto.X509Certificate(certPem);
    } catch {
        throw new Error(`--tls-cert ${certFile}: not a PEM certificate`);
    }
    let key: crypto.KeyObject;
    try {
        key = crypto.createPrivateKey(keyPem);
    } catch {
        throw new Error(`--tls-key ${keyFile}: not a PEM private key (an encrypted key is not supported)`);
    }
    if (!cert.checkPrivateKey(key))
        throw new Error(`--tls-key ${keyFile} is not the private key of --tls-cert ${certFile}`);
}

/**
 * Checks, before any work, that the folder an output file goes to exists: a typo in a path must
 * not cost a long run, nor leave some outputs written and others not.
 */
export function checkOutputFolder(file: string | undefined, flag: string): void {
    if (file === undefined)
        return;
    const dir = path.dirname(path.resolve(file));
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
        throw new Error(`${flag} ${file}: the folder ${dir} does not exist`);
}

/**
 * Reads a UTF-8 text file (a byte order mark dropped). A binary file (a NUL byte) or another
 * encoding (Latin-1 files are common) is an error naming the byte, instead of being scored as
 * replacement characters.
 */
export function readTextFile(file: string): string {
    let bytes: Buffer;
    try {
        if (fs.statSync(file).isDirectory())
            throw new Error("it is a folder, not a file");
        bytes = fs.readFileSync(file);
    } catch (err) {
        const e = err as NodeJS.ErrnoException;
        throw new Error(`${file}: cannot read: ${e.code === "ENOENT" ? "no such file" : e.message}`);
    }
    const nul = bytes.indexOf(0);
    if (nul >= 0)
        throw new Error(`${file}: not a text file (a NUL byte at byte ${nul})`);
    try {
        return new TextDecoder("utf-8", {fatal: true, ignoreBOM: false}).decode(bytes);
    } catch {
        const at = firstInvalidUtf8(bytes);
        throw new Error(`${file}: not UTF-8 text (byte ${at} is 0x${bytes[at]!.toString(16)}); convert it first, e.g. iconv -f latin1 -t utf-8`);
    }
}

function firstInvalidUtf8(bytes: Buffer): number {
    for (let i = 0; i < bytes.length;) {
        const b = bytes[i]!;
        const n = b < 0x80 ? 1 : (b & 0xe0) === 0xc0 ? 2 : (b & 0xf0) === 0xe0 ? 3 : (b & 0xf8) === 0xf0 ? 4 : 0;
        if (n === 0 || i + n > bytes.length)
            return i;
        for (let k = 1; k < n; k++)
            if ((bytes[i + k]! & 0xc0) !== 0x80)
                return i;
        i += n;
    }
    return 0;
}
