// What a client may release after perturbation: perturbed question and choice texts under fresh
// random ids, in a shuffled order. Answer keys, original ids, rationales and sources stay with the
// client in the id map (random id -> original id, answer), which never leaves it.
import crypto from "node:crypto";
import path from "node:path";
import {DataError, readJsonl, writeJsonlAtomic} from "../data/jsonl.js";
import type {PerturbedItem} from "./perturb.js";
import {secureUniform} from "../random.js";

/** A released item: nothing but perturbed texts and a random id. */
export interface ReleasedItem {
    id: string;
    question: string;
    choices: {label: string; text: string}[];
}

/** One line of the id map, kept by the client alone. */
export interface IdMapEntry {
    /** The random id the released item carries. */
    id: string;
    original_id: string;
    answer?: string;
}

/** Released ids: 22 base64url characters (128 random bits), within the protocol's [A-Za-z0-9_-]{1,64}. */
export const releasedIdPattern = /^[A-Za-z0-9_-]{22}$/;

/** `perturbed.jsonl` -> `perturbed.idmap.jsonl` (beside it). */
export function idMapPath(output: string): string {
    const dir = path.dirname(output), base = path.basename(output);
    const stem = base.replace(/\.jsonl$/i, "");
    return path.join(dir, `${stem}.idmap.jsonl`);
}

/**
 * Gives each perturbed item a fresh random id, drops its answer (kept in the id map) and
 * shuffles the order, so neither the ids nor the position link a released item to its source.
 * Ids and order come from the OS CSPRNG always, whatever perturbation seed was given: derived from
 * that seed, they would let whoever guesses a small seed link the release to the input order and
 * check the guess (then replay the perturbation noise).
 */
export function releaseItems(items: readonly PerturbedItem[]): {
    items: ReleasedItem[];
    idMap: IdMapEntry[];
    /** released item n came from items[sourceIndex[n]]. */
    sourceIndex: number[];
} {
    const rng = secureUniform();
    const newId = (): string => crypto.randomBytes(16).toString("base64url");
    const order = Array.from(items.keys());
    for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rng.nextDouble() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
    }
    const seen = new Set<string>();
    const released: ReleasedItem[] = [], idMap: IdMapEntry[] = [];
    for (const [n, i] of order.entries()) {
        const it = items[i];
        let id = newId();
        while (seen.has(id))
            id = newId();
        seen.add(id);
        released.push({id, question: it.question, choices: it.choices.map((c) => ({label: c.label, text: c.text}))});
        idMap.push({id, original_id: it.id, ...(it.answer !== undefined ? {answer: it.answer} : {})});
    }
    return {items: released, idMap, sourceIndex: order};
}

export function writeIdMap(file: string, idMap: readonly IdMapEntry[]): Promise<void> {
    return writeJsonlAtomic(file, idMap);
}

/** Reads an id map; errors name the file and line. */
export async function readIdMap(file: string): Promise<IdMapEntry[]> {
    const out: IdMapEntry[] = [];
    for await (const {value, line} of readJsonl(file)) {
        const v = value as Record<string, unknown>;
        if (!v || typeof v !== "object" || typeof v.id !== "string" || typeof v.original_id !== "string" ||
            (v.answer !== undefined && typeof v.answer !== "string"))
            throw new DataError(file, line, "an id map line must be {\"id\": string, \"original_id\": string, \"answer\"?: string}");
        out.push({id: v.id, original_id: v.original_id, ...(v.answer !== undefined ? {answer: v.answer as string} : {})});
    }
    return out;
}
