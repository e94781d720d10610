// The checks that keep secure aggregation from resting on the server's good will: the client's
// pure checks of what the server sends (secure-checks.ts), and the server's checks of what clients
// send (one unmasking share per secret and sender, x = the sender's roster position; a rebuilt key
// verified against its published public key; a fixed-point encoding whose sum over the holders
// cannot wrap). The lying-server test runs the client's checks against a real process.
import {generateKeyPairSync} from "node:crypto";
import test from "ava";
import type {LoraAdapter} from "../../../ts/train/adapter.js";
import {Random} from "../../../ts/random.js";
import {checkRoster, checkShareBoxes, checkUnmaskOnce, checkUnmaskRequest, requiredThreshold, SecureRoundRefused,
    type RosterEntry} from "../../../ts/federated/prufed/secure-checks.js";
import {SecureAggregationServer, SecureClient, secureAggregateRound, toFixedPoint, type SecureParticipant} from "../../../ts/federated/prufed/secure.js";

const key = () => Buffer.from(generateKeyPairSync("x25519").publicKey.export({format: "jwk"}).x!, "base64url");
const rosterOf = (ids: string[]): RosterEntry[] => ids.map((id, i) => ({id, x: i + 1, cPub: key(), sPub: key()}));

test("requiredThreshold is max(2, floor(n/2) + 1); --secagg-min-threshold raises it, never lowers it", (t) => {
    t.deepEqual([2, 3, 4, 5, 6, 10].map((n) => requiredThreshold(n)), [2, 2, 3, 3, 4, 6]);
    t.is(requiredThreshold(5, 4), 4);
    t.is(requiredThreshold(5, 2), 3);
});

test("checkRoster: its own keys as sent, distinct ids and x = 1..n, at least minClients, threshold in [required, n]", (t) => {
    const roster = rosterOf(["a", "b", "me"]);
    const me = roster[2];
    const policy = {minClients: 3};
    t.notThrows(() => checkRoster(roster, me, 2, policy));
    const refused = (r: RosterEntry[], threshold: number, re: RegExp, p: {minClients: number; minThreshold?: number} = policy) =>
        t.throws(() => checkRoster(r, me, threshold, p), {instanceOf: SecureRoundRefused, message: re});
    refused(roster.slice(0, 2).concat(rosterOf(["c"]).map((a) => ({...a, x: 3}))), 2, /its keys are not in the roster/);
    refused(roster.map((a) => (a.id === "me" ? {...a, cPub: key()} : a)), 2, /other public keys under its id/);
    refused(roster.map((a) => (a.id === "me" ? {...a, sPub: key()} : a)), 2, /other public keys under its id/);
    refused([...roster, {...roster[0], x: 4}], 3, /a client appears twice/);
    refused(roster.map((a) => (a.id === "a" ? {...a, x: 2} : a)), 2, /share coordinates are not 1..3/);
    refused(roster.map((a) => (a.id === "b" ? {...a, sPub: roster[0].sPub} : a)), 2, /the same public key/);
    refused(roster, 1, /threshold 1 for a roster of 3 is below 2/);
    refused(roster, 4, /above the roster's 3 members/);
    refused(roster, 2, /below 3 .*--secagg-min-threshold 3/, {minClients: 3, minThreshold: 3});
    const two = rosterOf(["a", "me"]);
    t.throws(() => checkRoster(two, two[1], 2, policy), {message: /2 member\(s\), fewer than --secagg-min-clients 3/});
    t.notThrows(() => checkRoster(two, two[1], 2, {minClients: 2}));
    const five = rosterOf(["a", "b", "c", "d", "me"]);
    t.throws(() => checkRoster(five, five[4], 2, policy), {message: /threshold 2 for a roster of 5 is below 3/});
});

test("checkShareBoxes: from distinct other roster members, at least t - 1 of them (an empty list is refused)", (t) => {
    const roster = rosterOf(["a", "b", "c", "me"]);
    t.notThrows(() => checkShareBoxes(["a", "b"], roster, "me", 3));
    t.throws(() => checkShareBoxes([], roster, "me", 3), {message: /share boxes from 0 other member\(s\), fewer than t - 1 = 2/});
    t.throws(() => checkShareBoxes(["a"], roster, "me", 3), {message: /from 1 other/});
    t.throws(() => checkShareBoxes(["a", "a"], roster, "me", 3), {message: /two share boxes from the same member/});
    t.throws(() => checkShareBoxes(["a", "me"], roster, "me", 3), {message: /from me, not another roster member/});
    t.throws(() => checkShareBoxes(["a", "z"], roster, "me", 3), {message: /from z/});
});

test("checkUnmaskRequest: at least t survivors, itself among them, all in the roster, none twice; checkUnmaskOnce", (t) => {
    const roster = rosterOf(["a", "b", "c", "me"]);
    t.notThrows(() => checkUnmaskRequest({survivors: ["a", "b", "me"], dropped: ["c"]}, roster, "me", 3));
    t.throws(() => checkUnmaskRequest({survivors: ["a", "b", "c"], dropped: ["me"]}, roster, "me", 3), {message: /not in the survivor set/});
    t.throws(() => checkUnmaskRequest({survivors: ["a", "me"], dropped: ["b", "c"]}, roster, "me", 3), {message: /2 survivor\(s\), fewer than the threshold 3/});
    t.throws(() => checkUnmaskRequest({survivors: ["a", "b", "me"], dropped: ["a"]}, roster, "me", 3), {message: /listed twice/});
    t.throws(() => checkUnmaskRequest({survivors: ["a", "b", "me", "z"], dropped: []}, roster, "me", 3), {message: /z not in the roster/});
    t.notThrows(() => checkUnmaskOnce(undefined, "me", 4));
    t.throws(() => checkUnmaskOnce({protocol: "prufed-secagg/1", round: 4, survivors: ["a", "me"], dropped: []}, "me", 4),
        {message: /refuses round 4: it already answered/});
});

/** Three clients holding one matrix pair in layer 0 (values uniform in ±scale). */
function three(scale = 0.5): {previous: LoraAdapter; ps: SecureParticipant[]} {
    const tensors = (rng: Random) => [
        {name: "blk.0.attn_q.weight.lora_a", shape: [8, 2] as [number, number], data: Float32Array.from({length: 16}, () => (rng.nextDouble() - 0.5) * 2 * scale)},
        {name: "blk.0.attn_q.weight.lora_b", shape: [2, 8] as [number, number], data: Float32Array.from({length: 16}, () => (rng.nextDouble() - 0.5) * 2 * scale)},
    ];
    const adapter = (seed: number): LoraAdapter => ({architecture: "llama", alpha: 4, r: 2, tensors: tensors(new Random(seed))});
    return {previous: adapter(9), ps: ["a", "b", "c"].map((id, i) => ({id, weight: 1, layerMap: [0], adapter: adapter(i + 1)}))};
}

/** A round up to the unmask phase, c dropped after sharing its keys: the server and the two survivors. */
function toUnmask() {
    const {previous, ps} = three();
    const server = new SecureAggregationServer(previous, ps.map((p) => ({id: p.id, weight: p.weight, layerMap: p.layerMap})), {round: 1, threshold: 2});
    const clients = ps.map((p) => new SecureClient(p, 1, server.scaleBits));
    for (const c of clients)
        server.advertise(c.advertise());
    for (const c of clients)
        server.submitShares(c.id, c.shareKeys(server.roster(), server.threshold));
    for (const c of clients)
        c.acceptShares(server.sharesFor(c.id));
    const plan = server.plan();
    for (const c of clients.slice(0, 2))
        server.submitMasked(c.id, c.maskedInput(plan));
    const {survivors, dropped} = server.unmaskRequest();
    const answers = clients.slice(0, 2).map((c) => c.unmaskShares(plan, survivors, dropped));
    return {server, answers};
}

test("the server refuses a second share of one secret, a share with another x than the sender's, and a second answer", (t) => {
    const {server, answers: [a, b]} = toUnmask();
    t.deepEqual(a.s.map((x) => x.id), ["c"]);
    t.throws(() => server.submitUnmask("a", {...a, s: [...a.s, a.s[0]]}), {message: /two shares of one secret \(s:c\)/});
    t.throws(() => server.submitUnmask("a", {...a, b: [...a.b, a.b[0]]}), {message: /two shares of one secret \(b:a:0\)/});
    // b forwarding a's share of c's key as its own: one client standing in for two
    t.throws(() => server.submitUnmask("b", {...b, s: a.s}), {message: /a share with x = 1 of c; its shares have x = 2, its roster position/});
    server.submitUnmask("a", a);
    t.throws(() => server.submitUnmask("a", a), {message: /already sent its unmasking shares/});
    t.true(server.sameUnmask("a", a), "a retry is recognised (the host answers it again without storing it twice)");
    server.submitUnmask("b", b);
    t.notThrows(() => server.result());
});

test("a rebuilt key that does not match its published public key is an error, not a wrong unmasking", (t) => {
    const {server, answers: [a, b]} = toUnmask();
    server.submitUnmask("a", a);
    server.submitUnmask("b", {...b, s: b.s.map((x) => ({...x, share: {...x.share, y: x.share.y ^ 1n}}))});
    t.throws(() => server.result(), {message: /rebuilt mask key of c does not match its published public key/});
});

test("the fixed-point encoding is bounded so that the sum over the holders cannot wrap; beyond it is an error", (t) => {
    // 2^11 / 3 per holder at 20 fraction bits: 1000 fits one client's lane but three of them would wrap mod 2^32
    t.notThrows(() => toFixedPoint(new Float32Array([1000]), 1, 20, "x"));
    t.throws(() => toFixedPoint(new Float32Array([1000]), 1, 20, "x", 3), {instanceOf: RangeError, message: /sum over 3 holder/});
    t.notThrows(() => toFixedPoint(new Float32Array([682]), 1, 20, "x", 3));
    const {previous, ps} = three(1);
    ps[0].adapter.tensors[0].data[0] = 2400; // p = 1/3: 800 per lane, a sum of three at most 2400 > 2048
    t.throws(() => secureAggregateRound(previous, ps, {round: 1}), {instanceOf: RangeError, message: /blk\.0\.attn_q\.weight\.lora_a\[0\]/});
});
