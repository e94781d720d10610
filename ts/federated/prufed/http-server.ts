// `ppc-gpt fl server`: the PruFed round machine (round-machine.ts over rounds.ts' FederationServer)
// behind HTTP, on the job server's conventions: Fastify with a JSON schema on every body, bearer
// tokens checked against the same SQLite store (`ppc-gpt server token create --data-dir D`), errors
// as {error, code}, gzip on the wire, OpenAPI at /v1/openapi.json. A client is its token's name.
// The routes are plugins in routes/ (clients, rounds, uploads, results, secagg, events); this file
// only assembles them. All state lives in the data dir (state.json, rounds/, uploads/), so a server
// killed -9 resumes the open round.
// With --secure-aggregation every round is a secure round (secure-host.ts): clients send keys,
// sealed shares, masked matrices and unmasking shares instead of an upload; its journal in
// secagg/round-N/ lets a restarted server resume it too.
import fs from "node:fs";
import path from "node:path";
import type {FastifyInstance} from "fastify";
import {routes as fedRoutes} from "../protocol.js";
import {claimDataDir} from "../server.js";
import {SqliteJobStore} from "../store.js";
import {checkCleartextListen, createProtocolApp, httpLimitDefaults, TokenSessions, type HttpLimits} from "../http-common.js";
import {makePrivateDir} from "../private-dir.js";
import {flRoutes, metricsHeader} from "./http-protocol.js";
import {RoundMachine, type FlServerEvent} from "./round-machine.js";
import {configDifferences, FederationServer, type FederationConfig} from "./rounds.js";
import type {FlRoutesContext} from "./routes/context.js";
import {clientRoutes} from "./routes/clients.js";
import {eventRoutes} from "./routes/events.js";
import {resultRoutes} from "./routes/results.js";
import {roundRoutes} from "./routes/rounds.js";
import {secaggRoutes} from "./routes/secagg.js";
import {uploadRoutes} from "./routes/uploads.js";

export {flRoutes, metricsHeader};
export type {FlServerEvent};

export interface FlServerOptions {
    dataDir: string;
    /** The federation (a new data dir); ignored when the data dir already holds one (it is resumed). */
    config: FederationConfig;
    host?: string;
    port?: number;
    tls?: {cert: string; key: string};
    /** Serve plain HTTP on an address off loopback (a warning is logged); without it, such a host needs tls. */
    insecure?: boolean;
    /** Body, timeout, stream and rate limits (http-common.ts httpLimitDefaults). */
    limits?: Partial<HttpLimits>;
    /** accuracy by round, one line per client depth, rewritten after every round */
    plot?: string;
    onEvent?: (e: FlServerEvent) => void;
    log?: (line: string) => void;
    /** Timer period of the round machine (ms, default 200). */
    tickMs?: number;
}

export interface FlServer {
    app: FastifyInstance;
    url: string;
    federation: FederationServer;
    /** The open secure round's phase (after a restart: the phase its journal was replayed to), or null. */
    securePhase(): string | null;
    /** Resolves when every round is closed. */
    done: Promise<void>;
    close(): Promise<void>;
}

/** `fl server` started on a data dir whose saved configuration differs from its flags: it names each difference. */
export class ConfigMismatch extends Error {
    override name = "ConfigMismatch";
}


/** The data dir's federation (a new one, or the saved one resumed); flags that contradict the saved configuration are refused. */
async function openFederation(dataDir: string, config: FederationConfig): Promise<FederationServer> {
    const federation = fs.existsSync(path.join(dataDir, "state.json"))
        ? await FederationServer.open(dataDir)
        : await FederationServer.create(dataDir, config);
    // a resumed federation keeps its saved configuration: flags that say otherwise are refused, not silently overridden
    const differences = configDifferences(federation.config, config);
    if (differences.length)
        throw new ConfigMismatch(`${dataDir} holds a federation started with another configuration; start it with the saved one ` +
            `(or use a new --data-dir): ${differences.join("; ")}`);
    return federation;
}

/** The protocol app with the PruFed routes, registered in the order the OpenAPI document lists them. */
async function flRoutesApp(options: FlServerOptions, ctx: FlRoutesContext, store: SqliteJobStore, limits: HttpLimits, log: (line: string) => void) {
    const app = await createProtocolApp({
        bodyLimit: ctx.maxUpload, uploadRoutes: [flRoutes.secaggMasked], limits, tls: options.tls, store, openapiRoute: fedRoutes.openapi, log,
        api: {title: "ppc-gpt PruFed server", version: "v1", description: "PruFed rounds over HTTP (docs/prufed.md)."},
    });
    // on the root app: every route reads octet-stream bodies (the masked input as one buffer); uploads stream theirs
    app.addContentTypeParser("application/octet-stream", {parseAs: "buffer"}, (_req, body, done) => done(null, body));
    for (const plugin of [clientRoutes, roundRoutes, uploadRoutes, resultRoutes, secaggRoutes, eventRoutes])
        await app.register(plugin, ctx);
    return app;
}

/** What a PruFed server opens, in order; after a failed start the later parts are not there yet. */
interface FlServerParts {
    /** Gives the data dir back. */
    release: () => void;
    store: SqliteJobStore;
    machine?: RoundMachine;
    ctx?: FlRoutesContext;
    app?: FastifyInstance;
}

/** Stops what a PruFed server started, in order. */
async function stopFlServer(parts: FlServerParts) {
    parts.ctx?.sessions.close();
    for (const finish of [...parts.ctx?.closeStreams ?? []])
        finish();
    await parts.machine?.stop();
    await parts.app?.close();
    parts.store.close?.();
    parts.release();
}

/** Start the PruFed HTTP server (rounds, uploads, secure aggregation, events). */
export async function startFlServer(options: FlServerOptions): Promise<FlServer> {
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    checkCleartextListen(options.host ?? "127.0.0.1", Boolean(options.tls), Boolean(options.insecure), log);
    const limits = {...httpLimitDefaults, ...options.limits};
    const dataDir = path.resolve(options.dataDir);
    makePrivateDir(dataDir);
    // one server per data dir: a lock the kernel releases when a server dies (data-dir-lock.ts)
    const parts: FlServerParts = {release: claimDataDir(dataDir), store: SqliteJobStore.open(dataDir)};
    try {
        const federation = await openFederation(dataDir, options.config);
        const machine = parts.machine = new RoundMachine({dataDir, federation, plot: options.plot, onEvent: options.onEvent, log});
        const incoming = path.join(dataDir, "incoming");
        await fs.promises.rm(incoming, {recursive: true, force: true});
        await fs.promises.mkdir(incoming, {recursive: true});
        const ctx = parts.ctx = {machine, sessions: new TokenSessions(parts.store, limits.maxStreamsPerToken), dataDir, incoming,
            maxUpload: federation.config.maxUploadBytes ?? 256 * 1024 * 1024, closeStreams: new Set<() => void>(), log};
        const app = parts.app = await flRoutesApp(options, ctx, parts.store, limits, log);
        await machine.start(options.tickMs ?? 200);
        const address = await app.listen({host: options.host ?? "127.0.0.1", port: options.port ?? 8080});
        let closing: Promise<void> | undefined;
        return {app, url: address.replace("[::1]", "127.0.0.1"), federation, done: machine.done, securePhase: () => machine.securePhase(),
            close: () => (closing ??= stopFlServer(parts))};
    } catch (err) {
        // a failed start (a port in use, another configuration) closes what it opened and gives the data dir back
        await stopFlServer(parts).catch(() => {});
        throw err;
    }
}
