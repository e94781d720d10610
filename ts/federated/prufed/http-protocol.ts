// Names shared by `fl server` and `fl client` (kept apart so that the client never loads Fastify).
export const flRoutes = {
    clients: "/v1/fl/clients",
    current: "/v1/fl/rounds/current",
    round: "/v1/fl/rounds/:n",
    adapter: "/v1/fl/rounds/:n/adapter",
    upload: "/v1/fl/rounds/:n/upload",
    global: "/v1/fl/rounds/:n/global",
} as const;

/** Request header of an upload: the client's metrics as JSON (train_loss, accuracy, accuracy_before, bytes_down, bytes_up, seconds). */
export const metricsHeader = "x-ppc-metrics";
