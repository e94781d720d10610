// ppc-gpt public API.
export {native} from "./native.js";
export type {GgufFileInfo, GgufMetadataEntry, GgufTensorInfo, GgmlTypeInfo, NativeModel, NativeModelInfo, NativeModelOptions,
    ProgressCallback} from "./native.js";
export {readGguf, GgufModelFile} from "./gguf/read.js";
export {inspectModel} from "./gguf/inspect.js";
export type {ModelInspection, LayerSummary} from "./gguf/inspect.js";
export {writeGguf, ggmlType, tensorBytes} from "./gguf/write.js";
export type {GgufKv, GgufValue, GgufScalarType, GgufTensorSpec} from "./gguf/write.js";
export {syntheticModel, writeSyntheticModel} from "./gguf/synthetic.js";
export type {SyntheticArchitecture, SyntheticModelOptions} from "./gguf/synthetic.js";
export {planPruning, strategyOrder, layerMagnitudes, parseScores, readScoresFile, pruningStrategies} from "./prune/plan.js";
export type {PruningPlan, PruningPlanOptions, PruningStrategy} from "./prune/plan.js";
export {removeLayers} from "./prune/remove.js";
export type {LayerRemovalResult, RemoveLayersOptions} from "./prune/remove.js";
export {loadModel} from "./model.js";
export type {LoadedModel} from "./model.js";
