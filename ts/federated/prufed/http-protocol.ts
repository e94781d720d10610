// Names shared by `fl server` and `fl client` (kept apart so that the client never loads Fastify).
import type {UnmaskShares} from "./secure.js";
import {secaggProtocol, secaggVersionHeader} from "./secure-checks.js";

export {secaggProtocol, secaggVersionHeader};

/** The PruFed round protocol's version: `fl server` states it when a client registers, `fl client` speaks only its own. */
export const flProtocol = "prufed/1";

/** The PruFed HTTP routes shared by `fl server` and `fl client`. */
export const flRoutes = {
    clients: "/v1/fl/clients",
    current: "/v1/fl/rounds/current",
    round: "/v1/fl/rounds/:n",
    adapter: "/v1/fl/rounds/:n/adapter",
    upload: "/v1/fl/rounds/:n/upload",
    global: "/v1/fl/rounds/:n/global",
    /** Server-sent events: the JSON events `fl server --json` prints. */
    events: "/v1/fl/events",
    // secure rounds (docs/prufed.md "Secure aggregation over HTTP"): one route pair per phase
    secaggKeys: "/v1/fl/rounds/:n/secagg/keys",
    secaggRoster: "/v1/fl/rounds/:n/secagg/roster",
    secaggShares: "/v1/fl/rounds/:n/secagg/shares",
    secaggMasked: "/v1/fl/rounds/:n/secagg/masked",
    secaggUnmask: "/v1/fl/rounds/:n/secagg/unmask",
} as const;

/** A route with its round number filled in. */
export const roundRoute = (route: string, n: number) => route.replace(":n", String(n));

/**
 * Request header of an upload: the client's metrics as JSON (train_loss, accuracy, accuracy_before, bytes_down, bytes_up, seconds).
 * In a secure round it carries only bytes_down, bytes_up and seconds unless the client opts in (`fl client --share-metrics`):
 * the loss and accuracies travel as masked coordinates (secure.ts metricsTarget).
 */
export const metricsHeader = "x-ppc-metrics";

/** The secure part of `GET /v1/fl/rounds/current` in a secure round. */
export interface SecureRoundStatus {
    phase: "keys" | "shares" | "masked" | "unmask";
    /** Epoch ms at which the open phase ends. */
    phase_deadline: number;
    threshold: number;
    scale_bits: number;
    /** This client sent its keys (it takes part in the round, or was dropped from it). */
    joined: boolean;
}

/** A phase's GET answer before the phase has come: the client asks again (`?wait=s` long-polls). */
export interface NotReady {
    ready: false;
    phase: SecureRoundStatus["phase"];
    phase_deadline: number;
}

export interface RosterAnswer {
    ready: true;
    threshold: number;
    scale_bits: number;
    roster: {id: string; x: number; c_pub: string; s_pub: string}[];
}

/** Boxes sealed for this client and the masking plan (per matrix its holders and their weights p, in holder order). */
export interface SharesAnswer {
    ready: true;
    boxes: {from: string; box: string}[];
    targets: {target: string; holders: string[]; p: number[]}[];
}

export interface UnmaskAnswer {
    ready: true;
    survivors: string[];
    dropped: string[];
}

/** One Shamir share in `POST …/secagg/unmask`: whose secret (`id`), the share's x and y (field element, hex). */
export interface WireShare {
    id: string;
    x: number;
    y: string;
}

/** A share of a self-mask seed: `layer` says which of the client's seeds (a base layer; null: the tensors outside any layer). */
export interface WireSeedShare extends WireShare {
    layer: number | null;
}

/**
 * `POST …/secagg/unmask` body: shares of the survivors' self-mask seeds, only for layers left with at
 * least two surviving holders, and of the dropped clients' mask keys.
 */
export interface UnmaskBody {
    b: WireSeedShare[];
    s: WireShare[];
}

const hex = (y: bigint) => y.toString(16);
const field = (y: string) => BigInt("0x" + y);

export function unmaskToWire(u: UnmaskShares): UnmaskBody {
    return {b: u.b.map((x) => ({id: x.id, layer: x.layer, x: x.share.x, y: hex(x.share.y)})), s: u.s.map((x) => ({id: x.id, x: x.share.x, y: hex(x.share.y)}))};
}

export function unmaskFromWire(w: UnmaskBody): UnmaskShares {
    return {b: w.b.map((x) => ({id: x.id, layer: x.layer, share: {x: x.x, y: field(x.y)}})), s: w.s.map((x) => ({id: x.id, share: {x: x.x, y: field(x.y)}}))};
}
