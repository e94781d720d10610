// What both federated servers and both clients share on the wire and that must not load Fastify
// (a client process never does): the one server-sent-events writer and the one event-stream
// reader, the cleartext rule (no plain HTTP off loopback without --insecure), the check of names a
// server chooses that a client puts in a path, and the sanitizer of error messages sent to clients.
import type {ServerResponse} from "node:http";
import net from "node:net";

/** Milliseconds between `: ping` comments of an open event stream; a reader drops a stream silent for 3 pings. */
export const eventStreamPingMs = 15_000;

export interface EventStreamWriter {
    /** `event: <name>` + `data: <json>`; nothing after the stream ended. */
    send(name: string, data: unknown): void;
    /** Ends the stream (idempotent); `onEnd` runs once. */
    end(): void;
    readonly ended: boolean;
}

/**
 * Starts a text/event-stream answer on `res`: a `: ping` comment every 15 s keeps proxies from
 * closing it; `onEnd` runs once, when the server or the client ends it.
 */
export function openEventStream(res: ServerResponse, onEnd: () => void = () => {}): EventStreamWriter {
    res.writeHead(200, {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive",
        "x-accel-buffering": "no"});
    let ended = false;
    const ping = setInterval(() => {
        if (!ended)
            res.write(": ping\n\n");
    }, eventStreamPingMs);
    const writer: EventStreamWriter = {
        get ended() {
            return ended;
        },
        send(name, data) {
            if (!ended)
                res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
        },
        end() {
            if (ended)
                return;
            ended = true;
            clearInterval(ping);
            res.end();
            onEnd();
        },
    };
    res.on("close", () => writer.end());
    return writer;
}

/** Longest event-stream line a client accepts (a server cannot make it buffer without bound). */
export const maxEventLineBytes = 1024 * 1024;

export class EventStreamError extends Error {
    override name = "EventStreamError";
}

export interface ReadEventStreamOptions {
    /** Called per event; returning true stops reading (the stream is cancelled). */
    onEvent: (name: string, data: string) => boolean | void | Promise<boolean | void>;
    /** Bytes as they arrive (traffic counters). */
    onBytes?: (n: number) => void;
    /** A stream silent this long (no event, no ping) is dropped (ms; default 3 pings). */
    idleMs?: number;
    /** Longest line accepted (bytes; default 1 MiB); a longer one is an EventStreamError. */
    maxLineBytes?: number;
}

/**
 * Reads a text/event-stream body to its end (or until `onEvent` says stop): `event:` and `data:`
 * fields, comments skipped, events dispatched at the blank line.
 */
export async function readEventStream(body: ReadableStream<Uint8Array>, o: ReadEventStreamOptions): Promise<void> {
    const maxLine = o.maxLineBytes ?? maxEventLineBytes;
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
        clearTimeout(idle);
        idle = setTimeout(() => reader.cancel().catch(() => {}), o.idleMs ?? 3 * eventStreamPingMs);
    };
    let buffer = "", event = "message", data: string[] = [], eventChars = 0;
    // returns true when the reader should stop
    const line = async (text: string): Promise<boolean> => {
        if (text === "") {
            const stop = data.length > 0 && await o.onEvent(event, data.join("\n"));
            event = "message";
            data = [];
            eventChars = 0;
            return Boolean(stop);
        }
        if (text.startsWith(":"))
            return false;
        eventChars += text.length;
        if (eventChars > maxLine)
            throw new EventStreamError(`the event stream sent an event over ${maxLine} bytes; refused`);
        const colon = text.indexOf(":");
        const field = colon < 0 ? text : text.slice(0, colon);
        const value = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
        if (field === "event")
            event = value;
        else if (field === "data")
            data.push(value);
        return false;
    };
    arm();
    try {
        for (;;) {
            const {value, done} = await reader.read();
            if (done)
                return;
            arm();
            o.onBytes?.(value.length);
            buffer += decoder.decode(value, {stream: true});
            let nl: number;
            while ((nl = buffer.indexOf("\n")) >= 0) {
                const text = buffer.slice(0, nl).replace(/\r$/, "");
                buffer = buffer.slice(nl + 1);
                if (await line(text)) {
                    await reader.cancel().catch(() => {});
                    return;
                }
            }
            if (buffer.length > maxLine)
                throw new EventStreamError(`the event stream sent a line over ${maxLine} bytes; refused`);
        }
    } catch (err) {
        await reader.cancel().catch(() => {});
        throw err;
    } finally {
        clearTimeout(idle);
    }
}

/** The limits every server applies, each a flag of `server` and `fl server`. */
export interface HttpLimits {
    /** Largest JSON body (decompressed) of every route but the item and adapter uploads (bytes). */
    jsonBodyBytes: number;
    /** Time to receive a whole request, upload included (ms; Fastify requestTimeout). */
    requestTimeoutMs: number;
    /** A connection idle this long is closed (ms; Fastify connectionTimeout). */
    connectionTimeoutMs: number;
    /** Open event streams and long polls per token. */
    maxStreamsPerToken: number;
    /** Write requests (POST, PUT, DELETE) per token per minute. */
    writesPerMinute: number;
}

export const httpLimitDefaults: HttpLimits = {
    jsonBodyBytes: 1024 * 1024,
    requestTimeoutMs: 600_000,
    connectionTimeoutMs: 120_000,
    maxStreamsPerToken: 4,
    writesPerMinute: 120,
};

/** A server asked to serve plain HTTP to the network without --insecure. */
export class CleartextRefused extends Error {
    override name = "CleartextRefused";
}

/** A loopback host name or address (127.0.0.0/8, ::1, localhost): traffic that never leaves the machine. */
export function isLoopbackHost(host: string): boolean {
    const h = host.replace(/^\[|\]$/g, "").toLowerCase();
    if (h === "localhost" || h.endsWith(".localhost"))
        return true;
    if (net.isIPv4(h))
        return h.startsWith("127.");
    if (net.isIPv6(h))
        return h === "::1" || /^::ffff:127\./.test(h);
    return false;
}

/**
 * Why a server must not listen here: plain HTTP on an address other machines reach, without
 * `--insecure` (Flower's convention). Undefined when it may.
 */
export function cleartextListenProblem(host: string, tls: boolean, insecure: boolean): string | undefined {
    if (tls || insecure || isLoopbackHost(host))
        return undefined;
    return `--host ${host} without --tls-cert/--tls-key would send tokens and data in cleartext to the network; ` +
        "give --tls-cert and --tls-key, or --insecure to serve plain HTTP anyway (e.g. behind a TLS proxy)";
}

/** The warning a server prints when --insecure lets it serve plain HTTP off loopback. */
export const insecureListenWarning = (host: string) =>
    `warning: serving plain HTTP on ${host} (--insecure): bearer tokens and uploads cross the network unencrypted`;

/** Why a client must not connect to this URL: http:// to a host off loopback without `--insecure`. */
export function cleartextUrlProblem(url: URL, insecure: boolean): string | undefined {
    if (url.protocol !== "http:" || insecure || isLoopbackHost(url.hostname))
        return undefined;
    return `--server ${url.origin}: plain http:// to another machine would send the token and data in cleartext; ` +
        "use https://, or give --insecure to connect anyway";
}

/** Hashes (sha256, hex) that a server names and a client puts into a file path. */
export const sha256Pattern = /^[0-9a-f]{64}$/;

/** Job ids a server makes (`job_` + base64url) that a client puts into routes and its state. */
export const jobIdPattern = /^job_[A-Za-z0-9_-]{1,64}$/;

/** Round numbers an `fl server` names, put into the client's file names (round-N.gguf). */
export const roundNumberPattern = /^[0-9]{1,6}$/;

/**
 * Checks a name a server chose before it goes into a local path or route: a path separator,
 * `..`, or anything but the expected shape would let a server write outside the client's folder.
 */
export function checkServerName(value: unknown, pattern: RegExp, what: string): string {
    if (typeof value !== "string" || !pattern.test(value))
        throw new RangeError(`the server sent ${what} ${JSON.stringify(value)?.slice(0, 80)}, not of the form ${pattern.source}; refused`);
    return value;
}

/**
 * An error message fit for a client or an event stream: absolute paths become their last part
 * (`…/name`), URLs (a remote generator's address) become `<url>`. The operator's log keeps the full text.
 */
export function sanitizeMessage(message: string): string {
    return message
        .replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>)]+/gi, "<url>")
        // an absolute path (not one of the protocol's /v1/ routes) after a space, quote, bracket, = or :
        .replace(/(^|[\s"'(=:])((?:\/[^\s/"'():,]+)+\/?)/g, (whole, lead: string, p: string) => {
            if (p.startsWith("/v1/") || p === "/v1")
                return whole;
            const last = p.replace(/\/$/, "").split("/").pop() ?? "";
            return `${lead}…/${last}`;
        });
}
