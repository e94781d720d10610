// What an `fl client` checks in the messages of a secure round before it releases anything, so that
// secure aggregation does not rest on the server's good will (docs/prufed.md "Threat model"). The
// server routes every message; an actively malicious one could otherwise drop the client's keys
// and put its own in the roster (a man in the middle on the sealed shares), lower the threshold or
// shrink the roster until its own shares (or a few clients' answers) rebuild a mask, leave the client
// out of the survivor set it asks shares for (then the client's own self-mask seed is released and,
// with its pair masks, its update read), or ask twice with different survivor sets. Each function
// throws SecureRoundRefused with the reason; nothing is sent after a refusal.
// Pure functions: no transport, no files.

/** The secure-aggregation wire version: every secure message carries it (header) and so does every sealed box. */
export const secaggProtocol = "prufed-secagg/1";
/** Header of every secure-aggregation request and answer. */
export const secaggVersionHeader = "x-ppc-secagg-version";

/** A round the client will not take part in (the server broke a rule it checks). */
export class SecureRoundRefused extends Error {
    override name = "SecureRoundRefused";
}

export interface SecureClientPolicy {
    /** Smallest roster the client accepts (default 3). */
    minClients: number;
    /** A threshold it requires on top of the majority rule (raises it, never lowers it). */
    minThreshold?: number;
}

export const defaultSecurePolicy: SecureClientPolicy = {minClients: 3};

/** The smallest threshold a client accepts for a roster of n: max(2, floor(n/2) + 1), raised by minThreshold. */
export function requiredThreshold(n: number, minThreshold = 0): number {
    return Math.max(2, Math.floor(n / 2) + 1, minThreshold);
}

export interface RosterEntry {
    id: string;
    x: number;
    cPub: Buffer;
    sPub: Buffer;
}

/**
 * The roster and threshold of a round: the client's own keys as it sent them, ids and share
 * coordinates distinct (x = 1..n), at least minClients members, and a threshold in [required(n), n].
 */
export function checkRoster(roster: RosterEntry[], me: {id: string; cPub: Buffer; sPub: Buffer}, threshold: number,
    policy: SecureClientPolicy = defaultSecurePolicy): void {
    const refuse = (why: string): never => {
        throw new SecureRoundRefused(`client ${me.id} refuses the round: ${why}`);
    };
    const mine = roster.filter((a) => a.id === me.id);
    if (mine.length !== 1)
        refuse(mine.length ? "its id appears more than once in the roster" : "its keys are not in the roster");
    if (!mine[0].cPub.equals(me.cPub) || !mine[0].sPub.equals(me.sPub))
        refuse("the roster carries other public keys under its id than the ones it sent");
    if (new Set(roster.map((a) => a.id)).size !== roster.length)
        refuse("a client appears twice in the roster");
    const xs = roster.map((a) => a.x).sort((a, b) => a - b);
    if (xs.some((x, i) => x !== i + 1))
        refuse(`the share coordinates are not 1..${roster.length} (got ${xs.join(", ")})`);
    if (new Set(roster.map((a) => a.sPub.toString("hex"))).size !== roster.length || new Set(roster.map((a) => a.cPub.toString("hex"))).size !== roster.length)
        refuse("two roster members carry the same public key");
    if (roster.length < policy.minClients)
        refuse(`the roster has ${roster.length} member(s), fewer than --secagg-min-clients ${policy.minClients}`);
    const need = requiredThreshold(roster.length, policy.minThreshold);
    if (!Number.isInteger(threshold) || threshold < need)
        refuse(`threshold ${threshold} for a roster of ${roster.length} is below ${need} (max(2, floor(n/2) + 1)` +
            `${policy.minThreshold ? `, --secagg-min-threshold ${policy.minThreshold}` : ""})`);
    if (threshold > roster.length)
        refuse(`threshold ${threshold} is above the roster's ${roster.length} members (the round could never be unmasked)`);
}

/** The share boxes for the client: from distinct roster members other than itself, at least t - 1 of them. */
export function checkShareBoxes(from: string[], roster: {id: string}[], me: string, threshold: number): void {
    const members = new Set(roster.map((a) => a.id));
    if (new Set(from).size !== from.length)
        throw new SecureRoundRefused(`client ${me} refuses the round: two share boxes from the same member`);
    const stray = from.filter((id) => id === me || !members.has(id));
    if (stray.length)
        throw new SecureRoundRefused(`client ${me} refuses the round: share boxes from ${stray.join(", ")}, not another roster member`);
    if (from.length < threshold - 1)
        throw new SecureRoundRefused(`client ${me} refuses the round: share boxes from ${from.length} other member(s), fewer than ` +
            `t - 1 = ${threshold - 1} (with fewer sharers than the threshold the round cannot be unmasked honestly)`);
}

/**
 * The unmasking request: survivors and dropped are distinct roster members, the survivors number at
 * least t and include the client itself (asked for shares of its own seeds while listed as dropped,
 * it would release its update).
 */
export function checkUnmaskRequest(request: {survivors: string[]; dropped: string[]}, roster: {id: string}[], me: string, threshold: number): void {
    const refuse = (why: string): never => {
        throw new SecureRoundRefused(`client ${me} refuses to unmask: ${why}`);
    };
    const members = new Set(roster.map((a) => a.id));
    const all = [...request.survivors, ...request.dropped];
    if (new Set(all).size !== all.length)
        refuse("a client is listed twice (or as both alive and dropped)");
    const stray = all.filter((id) => !members.has(id));
    if (stray.length)
        refuse(`${stray.join(", ")} not in the roster`);
    if (!request.survivors.includes(me))
        refuse("it is not in the survivor set it is asked to unmask for");
    if (request.survivors.length < threshold)
        refuse(`${request.survivors.length} survivor(s), fewer than the threshold ${threshold}`);
}

/** What a client answered in a round's unmask phase (kept on disk, so that a restarted client cannot answer twice). */
export interface UnmaskRecord {
    protocol: string;
    round: number;
    survivors: string[];
    dropped: string[];
}

/**
 * A client answers the unmask phase of a round once: a round it already answered (recorded before
 * the answer left) is refused, whether the server asks again in the same round or runs the round
 * again with fresh keys (two answers for different survivor sets could release both the self mask
 * and the pair masks of one input).
 */
export function checkUnmaskOnce(previous: UnmaskRecord | undefined, me: string, round: number): void {
    if (previous)
        throw new SecureRoundRefused(`client ${me} refuses round ${round}: it already answered its unmask phase (survivors ` +
            `${previous.survivors.join(", ")}; dropped: ${previous.dropped.join(", ") || "none"})`);
}

/** The server's secure-aggregation version, as it states it: the client speaks only its own. */
export function checkSecaggVersion(got: string | null | undefined, what: string): void {
    if (got !== secaggProtocol)
        throw new SecureRoundRefused(`${what} speaks secure-aggregation protocol ${JSON.stringify(got ?? null)}; this client speaks ${secaggProtocol}`);
}
