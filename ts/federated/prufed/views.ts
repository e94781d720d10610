// What one client of an `fl server` federation sees of rounds and events: its own metrics and the
// aggregate, never another client's name, metrics, weight, layer map or rejection message. An
// admin token sees everything. Paths are relative to the data dir and messages carry no absolute
// path or URL (http-wire.ts sanitizeMessage) for every reader over HTTP.
import path from "node:path";
import {sanitizeMessage} from "../http-wire.js";
import type {RoundSummary, SecureRoundRecord} from "./rounds.js";
import type {FlServerEvent} from "./round-machine.js";

/** Who reads: a client (its token's name) or an admin token. */
export interface Viewer {
    id: string;
    admin: boolean;
}

const own = (ids: readonly string[], viewer: Viewer) => ids.filter((id) => id === viewer.id);

function secureView(s: SecureRoundRecord, viewer: Viewer): SecureRoundRecord & Record<string, unknown> {
    return {
        ...s, roster: own(s.roster, viewer), dropped: own(s.dropped, viewer), contributors: own(s.contributors, viewer),
        unmasked: own(s.unmasked, viewer), roster_size: s.roster.length, contributor_count: s.contributors.length,
        ...(s.aborted ? {aborted: sanitizeMessage(s.aborted)} : {}),
        ...(s.layers ? {layers: s.layers.map((l) => ({...l, holders: own(l.holders, viewer), survivors: own(l.survivors, viewer),
            holder_count: l.holders.length, survivor_count: l.survivors.length}))} : {}),
    };
}

/** Round file names as the data dir has them (`rounds/round-N.gguf`), not the server's absolute path. */
const relativeFile = (file: string, dataDir: string) => path.relative(dataDir, file).split(path.sep).join("/");

/** round-N.json as `viewer` may read it. */
export function roundViewFor(s: RoundSummary, viewer: Viewer, dataDir: string): Record<string, unknown> {
    const base = {...s, file: relativeFile(s.file, dataDir), ...(s.note ? {note: sanitizeMessage(s.note)} : {})};
    if (viewer.admin)
        return {...base, rejected: s.rejected.map((r) => ({...r, message: sanitizeMessage(r.message)}))};
    return {
        ...base,
        sampled: own(s.sampled, viewer), sampled_count: s.sampled.length,
        clients: s.clients.filter((c) => c.id === viewer.id), contributor_count: s.clients.length,
        rejected: s.rejected.filter((r) => r.client === viewer.id).map((r) => ({...r, message: sanitizeMessage(r.message)})),
        missing: own(s.missing, viewer),
        // per matrix: whether this client's update entered, and how many did (their weights stay with the server)
        targets: s.targets.map((t) => ({target: t.target, layer: t.layer, holders: own(t.holders, viewer), holder_count: t.holders.length})),
        ...(s.secure ? {secure: secureView(s.secure, viewer)} : {}),
    };
}

/** An event as `viewer`'s event stream carries it, or undefined when it is about another client only. */
export function eventViewFor(e: FlServerEvent, viewer: Viewer, dataDir: string): Record<string, unknown> | undefined {
    switch (e.event) {
        case "registered":
        case "upload_accepted":
        case "secagg_received":
            return viewer.admin || e.client === viewer.id ? e : undefined;
        case "upload_rejected":
            return viewer.admin || e.client === viewer.id ? {...e, error: sanitizeMessage(e.error)} : undefined;
        case "round_started":
            return viewer.admin ? e : {...e, sampled: own(e.sampled, viewer), sampled_count: e.sampled.length};
        case "secagg_phase":
            return viewer.admin ? e : {...e, clients: own(e.clients, viewer), client_count: e.clients.length};
        case "round_closed": {
            const file = relativeFile(e.file, dataDir);
            const note = e.note ? {note: sanitizeMessage(e.note)} : {};
            if (viewer.admin)
                return {...e, file, ...note};
            return {...e, file, ...note, clients: e.clients.filter((c) => c.id === viewer.id), contributor_count: e.clients.length,
                missing: own(e.missing, viewer), ...(e.secure ? {secure: secureView(e.secure, viewer)} : {})};
        }
        default:
            return e;
    }
}
