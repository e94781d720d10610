// LoRA training (CoT distillation and label fine-tuning), adapter files, merging.
export {defaultTargetModules, initLoraAdapter, loraTargets, readLoraAdapter, writeLoraAdapter,
    type LoraAdapter, type LoraConfig, type LoraTarget, type LoraTensor} from "./adapter.js";
export {loadCheckpoint, saveCheckpoint, type CheckpointMeta, type EvalRecord, type StepRecord} from "./checkpoint.js";
export {ExampleEncoder, itemExamples, packMicroBatches, stepTokenWeights, type EncodedExample, type EncodeOptions as ExampleEncodeOptions,
    type ExampleKind, type MicroBatch, type TrainTask, type WeightedItem} from "./examples.js";
export {loraDefaults, trainDefaults} from "./defaults.js";
export {mergeLora, type MergeOptions, type MergeResult} from "./merge.js";
export {learningRateAt, lrSchedulers, type LrSchedule, type LrScheduler} from "./schedule.js";
export {readWeightedItems, resolveTrainOptions, trainLora, validationLoss, type TrainEvent, type TrainOptions, type TrainResult} from "./train.js";
export {LoraTrainer, type LoraTrainerOptions, type TrainerState} from "./trainer.js";
