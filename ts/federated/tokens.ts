// Client bearer tokens: `ppc_` + base64url(32 random bytes), shown once; the store keeps only the
// sha256 so that a copy of the data dir grants nothing.
import crypto from "node:crypto";
import type {JobStore, TokenRecord} from "./store.js";
import {tokenPattern, tokenPrefix} from "./protocol.js";

export function tokenHash(token: string): string {
    return crypto.createHash("sha256").update(token, "utf8").digest("hex");
}

export const tokenNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Creates a token for client `name`; returns the record and the token itself (never stored). */
export function createToken(store: JobStore, name: string, options: {admin?: boolean} = {}): {record: TokenRecord; token: string} {
    if (!tokenNamePattern.test(name))
        throw new RangeError(`token name "${name}" must be 1..64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit`);
    const token = tokenPrefix + crypto.randomBytes(32).toString("base64url");
    const record: TokenRecord = {id: "tok_" + crypto.randomBytes(9).toString("base64url"), name, token_sha256: tokenHash(token),
        admin: Boolean(options.admin), created_at: new Date().toISOString(), revoked_at: null};
    store.createToken(record);
    return {record, token};
}

/** The live token an `Authorization` header carries, or undefined. */
export function authenticate(store: JobStore, authorization: string | undefined): TokenRecord | undefined {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
    if (!m || !tokenPattern.test(m[1]))
        return undefined;
    return store.tokenByHash(tokenHash(m[1]));
}
