// `npm run test:gpu`: the GPU suite (test/gpu), for machines with an NVIDIA GPU and the CUDA build.
// Not part of `npm test`: CI has no GPU.
export default {
    files: ["dist/test/gpu/**/*.test.js"],
    timeout: "10m",
    workerThreads: false,
    concurrency: 1,
    verbose: true,
};
