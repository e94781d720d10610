// The items of an experiment task: the client's private training items (a seeded sample of the
// train split) and the items scored (a seeded sample of the eval split), or a generated task.
import {loadTask} from "../data/loaders/index.js";
import type {TaskItem} from "../data/task-item.js";
import {selectItems} from "../eval/evaluate.js";
import {Random} from "../random.js";
import type {TaskSpec} from "./config.js";

const copyWords = ["cat", "dog", "ball", "tree", "car", "cake", "bird", "fish", "sun", "hat", "box", "boat", "cup", "frog", "duck", "bear"];

/**
 * "Which word is X?": X and three other words as choices, in a fresh order per item. A tiny story
 * model can learn it (copy the word from the question), and neither a letter, a position nor a
 * constant answer beats chance, so it can show what training changes where no model here can
 * answer real quiz questions.
 */
export function copyWordItems(seed: number, n: number, prefix: string): TaskItem[] {
    const rng = new Random(seed);
    return Array.from({length: n}, (_, i) => {
        const choices = rng.shuffle(copyWords.slice()).slice(0, 4);
        const a = rng.nextInt(4);
        return {id: `${prefix}${i}`, question: `Which word is ${choices[a]}?`,
            choices: choices.map((text, k) => ({label: "ABCD"[k], text})), answer: "ABCD"[a],
            source: {dataset: "copy-word", seed}};
    });
}

/** Private training items and evaluation items of a task for one seed. */
export async function taskItems(task: TaskSpec, seed: number): Promise<{train: TaskItem[]; eval: TaskItem[]}> {
    if ("generated" in task.source) {
        // evaluation items come from another stream than any seed's training items
        return {train: copyWordItems(1000 + seed, task.trainItems, `train-${seed}-`), eval: copyWordItems(7, task.evalItems, "eval-")};
    }
    const {dataset, trainSplit, evalSplit} = task.source;
    const train = (await loadTask(dataset, {split: trainSplit})).filter((x) => x.answer !== undefined);
    const evalItems = (await loadTask(dataset, {split: evalSplit})).filter((x) => x.answer !== undefined);
    if (train.length < task.trainItems)
        throw new Error(`task ${task.name}: the ${trainSplit} split has ${train.length} labelled items, fewer than trainItems ${task.trainItems}`);
    // the evaluation sample is the same for every seed: seeds vary the private data and training
    return {train: selectItems(train, {limit: task.trainItems, seed}), eval: selectItems(evalItems, {limit: task.evalItems, seed: 0})};
}
