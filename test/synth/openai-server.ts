// A real HTTP server (node:http on 127.0.0.1, ephemeral port) speaking the OpenAI chat-completions
// protocol with scripted replies: the test double for a remote generator. It can answer, fail with
// any status and headers, hang, drop the connection, and be stopped and restarted on the same port.
import http from "node:http";
import type {AddressInfo} from "node:net";

export type Role = "question" | "answer" | "rationale" | "unknown";

export interface RecordedRequest {
    n: number;
    role: Role;
    body: any;
    headers: http.IncomingHttpHeaders;
    path: string;
    at: number;
    /** The question text inside an answer or rationale prompt. */
    question?: string;
}

export type Reply =
    | {content: string; finishReason?: string; delayMs?: number; usage?: {prompt_tokens: number; completion_tokens: number}}
    | {status: number; body?: string | object; headers?: Record<string, string>; delayMs?: number}
    | {drop: true}
    | {hang: true};

export type Script = (req: RecordedRequest) => Reply | Promise<Reply>;

export function roleOf(body: any): Role {
    const user = (body?.messages ?? []).filter((m: any) => m.role === "user").map((m: any) => String(m.content)).join("\n");
    if (/Write ONE new multiple-choice question/.test(user))
        return "question";
    if (/^Solve this multiple-choice question/m.test(user))
        return "answer";
    if (/Explain in a few clear, correct words why that answer is right/.test(user))
        return "rationale";
    return "unknown";
}

/** The question being answered or explained (the last "Question:" line of the prompt). */
export function questionIn(body: any): string | undefined {
    const user = (body?.messages ?? []).filter((m: any) => m.role === "user").map((m: any) => String(m.content)).join("\n");
    const all = [...user.matchAll(/^Question: (.*)$/gm)];
    return all.length ? all[all.length - 1][1] : undefined;
}

export class ScriptedChatServer {
    readonly requests: RecordedRequest[] = [];
    /** Requests being handled right now, and the most at once. */
    active = 0;
    maxActive = 0;
    private server: http.Server | undefined;
    private port = 0;

    private constructor(public script: Script) {}

    static async start(script: Script): Promise<ScriptedChatServer> {
        const s = new ScriptedChatServer(script);
        await s.listen();
        return s;
    }

    get baseUrl(): string {
        return `http://127.0.0.1:${this.port}/v1`;
    }

    /** Requests of one role. */
    of(role: Role): RecordedRequest[] {
        return this.requests.filter((r) => r.role === role);
    }

    private listen(): Promise<void> {
        const server = http.createServer((req, res) => void this.handle(req, res));
        this.server = server;
        return new Promise((resolve, reject) => {
            server.once("error", reject);
            server.listen(this.port, "127.0.0.1", () => {
                this.port = (server.address() as AddressInfo).port;
                resolve();
            });
        });
    }

    private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
        let raw = "";
        for await (const chunk of req)
            raw += chunk;
        let body: any;
        try {
            body = JSON.parse(raw);
        } catch {
            res.writeHead(400, {"content-type": "application/json"});
            res.end(JSON.stringify({error: {message: "request body is not JSON", type: "invalid_request_error"}}));
            return;
        }
        if (req.method !== "POST" || req.url !== "/v1/chat/completions") {
            res.writeHead(404, {"content-type": "application/json"});
            res.end(JSON.stringify({error: {message: `no route ${req.method} ${req.url}`}}));
            return;
        }
        const rec: RecordedRequest = {n: this.requests.length, role: roleOf(body), body, headers: req.headers, path: req.url, at: Date.now(),
            question: questionIn(body)};
        this.requests.push(rec);
        this.active++;
        this.maxActive = Math.max(this.maxActive, this.active);
        try {
            const reply = await this.script(rec);
            if ("delayMs" in reply && reply.delayMs)
                await new Promise((r) => setTimeout(r, reply.delayMs));
            if ("drop" in reply) {
                req.socket.destroy();
                return;
            }
            if ("hang" in reply) {
                await new Promise<void>((r) => res.once("close", () => r()));
                return;
            }
            if ("status" in reply) {
                res.writeHead(reply.status, {"content-type": "application/json", ...reply.headers});
                res.end(typeof reply.body === "string" ? reply.body : JSON.stringify(reply.body ?? {error: {message: `status ${reply.status}`}}));
                return;
            }
            res.writeHead(200, {"content-type": "application/json"});
            res.end(JSON.stringify({
                id: `chatcmpl-${rec.n}`,
                object: "chat.completion",
                created: Math.floor(Date.now() / 1000),
                model: body.model,
                choices: [{index: 0, message: {role: "assistant", content: reply.content}, finish_reason: reply.finishReason ?? "stop"}],
                usage: reply.usage ?? {prompt_tokens: 100, completion_tokens: 20, total_tokens: 120},
            }));
        } finally {
            this.active--;
        }
    }

    /** Stops listening and cuts every open connection. */
    async stop(): Promise<void> {
        const server = this.server;
        if (!server)
            return;
        this.server = undefined;
        await new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
        });
    }

    /** Listens again on the same port. */
    async restart(): Promise<void> {
        await this.listen();
    }
}

/**
 * A well-behaved teacher model: unique questions (numbered by request), answers "B" (or, when the
 * question contains "[split]", votes A, B, C in turn so that they disagree), and rationales; in
 * JSON when the request has a response_format, else in the paper's line format.
 */
export class Teacher {
    private readonly votes = new Map<string, number>();
    constructor(readonly questionText: (req: RecordedRequest) => string = (req) => `Generated question number ${req.n}: which choice is right?`) {}

    reply(req: RecordedRequest): Reply {
        const json = req.body.response_format !== undefined;
        if (req.role === "question") {
            const q = this.questionText(req);
            const choices = ["first option", "second option", "third option", "fourth option"];
            return {content: json ? JSON.stringify({question: q, choices})
                : `CREATED QUESTION AND CHOICES:\nQuestion: ${q}\nChoices: ${JSON.stringify(choices)}`};
        }
        if (req.role === "answer") {
            const q = req.question ?? "";
            const i = this.votes.get(q) ?? 0;
            this.votes.set(q, i + 1);
            const letter = q.includes("[split]") ? "ABC"[i % 3] : "B";
            return {content: json ? JSON.stringify({solution: "Step 1: read the facts. Step 2: compare the choices.", final_answer: letter})
                : `SOLUTION: Step 1: read the facts. Step 2: compare the choices.\nFINAL ANSWER: ${letter}`};
        }
        if (req.role === "rationale")
            // in the line format the client sends stop ["<end>"], so a real server's reply ends before the marker
            return {content: json ? JSON.stringify({rationale: "The second option follows from the facts stated."})
                : "Rationale: The second option follows from the facts stated."};
        return {status: 400, body: {error: {message: "unknown prompt"}}};
    }
}
