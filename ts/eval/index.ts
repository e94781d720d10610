// Evaluation: harness-style prompts, tokenization, batched log-likelihood scoring, metrics, perplexity.
export {evaluate, evaluateItems, loadEvalItems, selectItems} from "./evaluate.js";
export type {EvalItemResult, EvalResult, EvalSummary, EvaluateOptions, SelectOptions} from "./evaluate.js";
export {PairEncoder, vocabInfo} from "./encode.js";
export type {EncodedPair, EncodeOptions} from "./encode.js";
export {LoglikScorer, scoreLoglikelihoods} from "./loglik.js";
export type {ContinuationScore, LoglikScorerOptions, LoraAdapterSpec, ScoreOptions, TokenRequest} from "./loglik.js";
export {argmax, charLength, choiceMetrics, mean, meanStderr, pooledAccuracy, sampleStddev, summarizeAccuracy} from "./metrics.js";
export type {AccuracySummary, ChoiceMetrics} from "./metrics.js";
export {perplexity, rollingWindows} from "./perplexity.js";
export type {PerplexityOptions, PerplexityResult} from "./perplexity.js";
export {evalTaskNames, evalTasks} from "./tasks.js";
export type {EvalTaskName, EvalTaskSpec, FormattedItem} from "./tasks.js";
