// The flags both servers (`server`, `fl server`) share for their HTTP limits and the cleartext
// rule; defaults from http-common.ts, error codes in docs/federated.md "Limits".
import type {Command} from "commander";
import {CleartextRefused, httpLimitDefaults, type HttpLimits} from "../federated/http-wire.js";
import {parseNumber, UsageError} from "./output.js";

export interface HttpLimitCliOptions {
    insecure?: boolean;
    maxJsonKb: string;
    requestTimeout: string;
    connectionTimeout: string;
    maxStreamsPerToken: string;
    writeRate: string;
}

export function addHttpLimitOptions(cmd: Command): Command {
    const d = httpLimitDefaults;
    return cmd
        .option("--insecure", "allow plain HTTP on an address other machines reach (without it, such a --host needs --tls-cert/--tls-key)")
        .option("--max-json-kb <n>", "largest JSON body of every route but the uploads, KiB after decompression (413 payload_too_large)",
            String(d.jsonBodyBytes / 1024))
        .option("--request-timeout <s>", "seconds a client may take to send a whole request, upload included (408)", String(d.requestTimeoutMs / 1000))
        .option("--connection-timeout <s>", "seconds an idle connection is kept", String(d.connectionTimeoutMs / 1000))
        .option("--max-streams-per-token <n>", "open event streams and long polls per token (429 too_many_streams)", String(d.maxStreamsPerToken))
        .option("--write-rate <n>", "write requests (POST, PUT, DELETE) per token per minute (429 rate_limited)", String(d.writesPerMinute));
}

export function httpLimitsOf(o: HttpLimitCliOptions): HttpLimits {
    const positive = (v: string, name: string) => parseNumber(v, name, (x) => x > 0, "a positive number");
    const count = (v: string, name: string) => parseNumber(v, name, (x) => Number.isInteger(x) && x >= 1, "an integer >= 1");
    return {
        jsonBodyBytes: Math.floor(parseNumber(o.maxJsonKb, "--max-json-kb", (x) => x >= 1 && x <= 1024 * 1024, "in [1, 1048576]") * 1024),
        requestTimeoutMs: Math.round(positive(o.requestTimeout, "--request-timeout") * 1000),
        connectionTimeoutMs: Math.round(positive(o.connectionTimeout, "--connection-timeout") * 1000),
        maxStreamsPerToken: count(o.maxStreamsPerToken, "--max-streams-per-token"),
        writesPerMinute: count(o.writeRate, "--write-rate"),
    };
}

/** Starts a server; its refusal to serve plain HTTP off loopback is a usage error (exit 2). */
export async function startRefusingCleartext<T>(start: () => Promise<T>): Promise<T> {
    try {
        return await start();
    } catch (err) {
        if (err instanceof CleartextRefused)
            throw new UsageError(err.message);
        throw err;
    }
}
