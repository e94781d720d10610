// A real HTTP server that speaks the PruFed secure-aggregation protocol to one real `fl client` but
// lies in one chosen way, as an actively malicious operator could. Its other roster members are
// fakes it mints itself (secure.ts SecureClient with keys it holds), so every box it relays to the
// client is genuine; the round state (roster, plan) comes from the real SecureAggregationServer.
// Every request is recorded (method, path, headers, body) so a test can say what the client released.
import http from "node:http";
import type {AddressInfo} from "node:net";
import fs from "node:fs";
import path from "node:path";
import {writeLoraAdapter, type LoraAdapter} from "../../../ts/train/adapter.js";
import {FederationServer} from "../../../ts/federated/prufed/rounds.js";
import {flProtocol, secaggProtocol, secaggVersionHeader, unmaskFromWire} from "../../../ts/federated/prufed/http-protocol.js";
import {SecureAggregationServer, SecureClient, type Advert} from "../../../ts/federated/prufed/secure.js";

export type Lie =
    | "none" // honest (then, with `again`, it runs round 1 a second time)
    | "plain" // no secure aggregation at all
    | "old-version" // states another secure-aggregation version at registration
    | "replaced-key" // the client's own keys in the roster replaced by the server's (a man in the middle on its shares)
    | "low-threshold" // threshold 1: one share is the secret
    | "small-roster" // the client and one fake
    | "no-shares" // the share list it relays to the client is empty
    | "not-survivor"; // the client is listed as dropped in the unmasking request

export interface Recorded {
    method: string;
    url: string;
    headers: http.IncomingHttpHeaders;
    body: Buffer;
}

export interface LyingServer {
    url: string;
    requests: Recorded[];
    close(): Promise<void>;
}

const me = "me";

/** Starts the lying server over a real federation in `dir` (base model, r 4, alpha 8), for a client that registers as "me". */
export async function startLyingServer(dir: string, base: string, lie: Lie, options: {again?: boolean} = {}): Promise<LyingServer> {
    const requests: Recorded[] = [];
    const dataDir = path.join(dir, "lying-server");
    fs.mkdirSync(dataDir, {recursive: true});
    const federation = await FederationServer.create(dataDir, {base, aggregation: "layerwise", rounds: 1, seed: 1, r: 4, loraAlpha: 8});
    let weight = 1, layerMap: number[] = [];
    let secure: SecureAggregationServer | undefined;
    let fakes: SecureClient[] = [];
    let joined = false, answered = 0;
    const fakeAdapter = (a: LoraAdapter): LoraAdapter => ({...a, tensors: []});
    const threshold = lie === "low-threshold" ? 1 : 2;

    const newRound = () => {
        const ids = lie === "small-roster" ? ["f1"] : ["f1", "f2"];
        const members = [{id: me, weight, layerMap}, ...ids.map((id) => ({id, weight, layerMap}))];
        secure = new SecureAggregationServer(federation.globalAdapter, members, {round: 1, threshold: 2, maskedMetrics: true});
        fakes = ids.map((id) => new SecureClient({id, weight, layerMap, adapter: fakeAdapter(federation.globalAdapter)}, 1, 20));
        for (const f of fakes)
            secure.advertise(f.advertise());
        joined = false;
    };
    const roster = (): Advert[] => {
        const list = secure!.roster();
        if (lie !== "replaced-key")
            return list;
        const mitm = new SecureClient({id: me, weight, layerMap, adapter: fakeAdapter(federation.globalAdapter)}, 1, 20).advertise();
        return list.map((a) => (a.id === me ? {...a, cPub: mitm.cPub, sPub: mitm.sPub} : a));
    };
    const status = () => {
        const finished = answered > 0 && !(options.again && answered === 1);
        if (finished)
            return {finished: true, completed: 1, rounds: 1, aggregation: "layerwise", registered: true, secure_aggregation: lie !== "plain"};
        return {round: 1, sampled: true, uploaded: joined, deadline: null, completed: 0, rounds: 1, finished: false, aggregation: "layerwise",
            registered: true, secure_aggregation: lie !== "plain",
            ...(lie !== "plain" ? {secure: {phase: "keys", phase_deadline: Date.now() + 60_000, threshold, scale_bits: 20, joined}} : {})};
    };

    const route = async (req: http.IncomingMessage, body: Buffer): Promise<{status: number; json?: unknown; bytes?: Buffer}> => {
        const url = (req.url ?? "").split("?")[0];
        if (req.method === "POST" && url === "/v1/fl/clients") {
            const b = JSON.parse(body.toString()) as {original_layers: number[]; weight: number};
            weight = b.weight;
            layerMap = b.original_layers;
            await federation.register({id: me, layerMap, weight, r: 4, loraAlpha: 8});
            await federation.startRound();
            newRound();
            return {status: 201, json: {id: me, rejoined: false, protocol: flProtocol, secure_aggregation: lie !== "plain",
                ...(lie !== "plain" ? {secagg_protocol: lie === "old-version" ? "prufed-secagg/0" : secaggProtocol} : {})}};
        }
        if (url === "/v1/fl/rounds/current")
            return {status: 200, json: status()};
        if (url === "/v1/fl/rounds/1/adapter") {
            const file = path.join(dataDir, "start.gguf");
            await writeLoraAdapter(file, federation.assignment(me));
            return {status: 200, bytes: fs.readFileSync(file)};
        }
        if (url === "/v1/fl/rounds/1/upload")
            return {status: 201, json: {round: 1, accepted: true}};
        if (req.method === "POST" && url.endsWith("/secagg/keys")) {
            const b = JSON.parse(body.toString()) as {c_pub: string; s_pub: string};
            if (joined) // a second run of the round: fresh keys for the client
                newRound();
            secure!.advertise({id: me, cPub: Buffer.from(b.c_pub, "base64"), sPub: Buffer.from(b.s_pub, "base64")});
            joined = true;
            return {status: 201, json: {round: 1, accepted: true}};
        }
        if (url.endsWith("/secagg/roster"))
            return {status: 200, json: {ready: true, threshold, scale_bits: 20,
                roster: roster().map((a) => ({id: a.id, x: a.x, c_pub: a.cPub.toString("base64"), s_pub: a.sPub.toString("base64")}))}};
        if (req.method === "POST" && url.endsWith("/secagg/shares")) {
            const b = JSON.parse(body.toString()) as {boxes: {to: string; box: string}[]};
            secure!.submitShares(me, b.boxes.map((x) => ({from: me, to: x.to, box: Buffer.from(x.box, "base64")})));
            for (const f of fakes)
                secure!.submitShares(f.id, f.shareKeys(secure!.roster(), 2));
            return {status: 201, json: {round: 1, accepted: true}};
        }
        if (url.endsWith("/secagg/shares")) {
            const plan = secure!.plan();
            const boxes = lie === "no-shares" ? [] : secure!.sharesFor(me).map((b) => ({from: b.from, box: b.box.toString("base64")}));
            return {status: 200, json: {ready: true, boxes, targets: plan.targets.map((t) => ({target: t.target, holders: t.holders,
                p: t.holders.map((h) => t.p.get(h)!)}))}};
        }
        if (req.method === "PUT" && url.endsWith("/secagg/masked"))
            return {status: 201, json: {round: 1, accepted: true}};
        if (url.endsWith("/secagg/unmask") && req.method === "GET") {
            const ids = secure!.roster().map((a) => a.id);
            return {status: 200, json: lie === "not-survivor" ? {ready: true, survivors: ids.filter((id) => id !== me), dropped: [me]}
                : {ready: true, survivors: ids, dropped: []}};
        }
        if (url.endsWith("/secagg/unmask")) {
            unmaskFromWire(JSON.parse(body.toString()));
            answered++;
            joined = false; // with `again`, round 1 asks the client to take part once more
            return {status: 201, json: {round: 1, accepted: true}};
        }
        return {status: 404, json: {error: `no route ${req.method} ${url}`, code: "not_found"}};
    };

    const server = http.createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on("data", (c: Buffer) => chunks.push(c));
        req.on("end", () => {
            const body = Buffer.concat(chunks);
            requests.push({method: req.method ?? "", url: req.url ?? "", headers: req.headers, body});
            route(req, body).then((r) => {
                const headers: Record<string, string> = {[secaggVersionHeader]: secaggProtocol};
                if (r.bytes) {
                    res.writeHead(r.status, {...headers, "content-type": "application/octet-stream"});
                    res.end(r.bytes);
                } else {
                    res.writeHead(r.status, {...headers, "content-type": "application/json"});
                    res.end(JSON.stringify(r.json));
                }
            }, (err: Error) => {
                res.writeHead(500, {"content-type": "application/json"});
                res.end(JSON.stringify({error: err.message, code: "internal"}));
            });
        });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return {
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        requests,
        close: () => new Promise<void>((resolve) => server.close(() => resolve())),
    };
}
