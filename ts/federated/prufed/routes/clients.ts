// POST /v1/fl/clients: a client declares its model (the base layers it kept, its shapes, weight,
// rank) and joins the federation as its token's name; registering again rejoins.
import type {FastifyPluginAsync} from "fastify";
import {HttpError} from "../../http-common.js";
import {checkModelShapes} from "../align.js";
import {flProtocol, flRoutes, secaggProtocol} from "../http-protocol.js";
import {clientId, errors, security, type FlRoutesContext} from "./context.js";

const registerSchema = {
    type: "object", additionalProperties: false, required: ["original_layers", "weight", "r", "lora_alpha"],
    properties: {
        original_layers: {type: "array", minItems: 1, maxItems: 4096, items: {type: "integer", minimum: 0}},
        weight: {type: "number", exclusiveMinimum: 0},
        r: {type: "integer", minimum: 1, maximum: 4096},
        lora_alpha: {type: "number", exclusiveMinimum: 0},
        // Optional (curl users may leave it out): the model's layer matrices in base numbering -> [nIn, nOut].
        tensors: {type: "object", maxProperties: 65536,
            additionalProperties: {type: "array", minItems: 2, maxItems: 2, items: {type: "integer", minimum: 1}}},
    },
} as const;

const registeredSchema = {type: "object", required: ["id", "rejoined", "protocol", "secure_aggregation"], properties: {id: {type: "string"},
    rejoined: {type: "boolean"}, protocol: {type: "string"}, secure_aggregation: {type: "boolean"}, secagg_protocol: {type: "string"}}} as const;

interface RegisterBody {
    original_layers: number[];
    weight: number;
    r: number;
    lora_alpha: number;
    tensors?: Record<string, number[]>;
}

export const clientRoutes: FastifyPluginAsync<FlRoutesContext> = async (app, ctx) => {
    const {machine} = ctx;
    app.post(flRoutes.clients, {schema: {body: registerSchema, security, response: {201: registeredSchema, 200: registeredSchema, ...errors}}},
        async (request, reply) => {
            const b = request.body as RegisterBody;
            const id = clientId(request);
            const federation = machine.federation;
            const known = federation.clients.some((c) => c.id === id);
            await machine.run(async () => {
                try {
                    if (b.tensors)
                        checkModelShapes(federation.layout, b.original_layers, b.tensors, `client ${id}`);
                    await federation.register({id, layerMap: b.original_layers, weight: b.weight, r: b.r, loraAlpha: b.lora_alpha});
                } catch (err) {
                    throw new HttpError(err instanceof RangeError ? 422 : 409, err instanceof RangeError ? "invalid_declaration" : "conflict",
                        (err as Error).message);
                }
            });
            if (!known)
                machine.emit({event: "registered", client: id, layers: b.original_layers, weight: b.weight});
            machine.kick();
            return reply.code(known ? 200 : 201).send({id, rejoined: known, protocol: flProtocol, secure_aggregation: machine.secure,
                ...(machine.secure ? {secagg_protocol: secaggProtocol} : {})});
        });
};
