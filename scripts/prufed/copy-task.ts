// A multiple-choice task a tiny model can learn and no shortcut solves: a short story names one
// animal; the choices are animals in a random order; the answer is the label of the one named.
// A constant answer or a fixed text-to-label map scores chance (1 / choices). With --fixed-order the
// choices keep one order (the answer still varies, so a constant answer scores chance): an easier
// variant, the animal decides the label.
//   node dist/scripts/prufed/copy-task.js --items 600 --seed 1 > items.jsonl
import {Random} from "../../ts/random.js";
import type {TaskItem} from "../../ts/data/task-item.js";

const animals = ["cat", "dog", "bird", "fish", "frog", "duck"];
const names = ["Tom", "Lily", "Ben", "Sue", "Max", "Mia", "Sam", "Anna", "Tim", "Lucy"];
const places = ["garden", "park", "house", "yard", "forest", "river"];
const labels = ["A", "B", "C", "D"];

export function copyTask(n: number, seed: number, choices = 3, fixedOrder = false): TaskItem[] {
    const rng = new Random(seed);
    return Array.from({length: n}, (_, i) => {
        const options = fixedOrder ? animals.slice(0, choices) : rng.shuffle([...animals]).slice(0, choices);
        const answer = rng.nextInt(choices);
        const name = names[rng.nextInt(names.length)], place = places[rng.nextInt(places.length)];
        return {
            id: `copy-${seed}-${i}`,
            question: `${name} saw a ${options[answer]} in the ${place}. What did ${name} see?`,
            choices: options.map((text, k) => ({label: labels[k], text})),
            answer: labels[answer],
        };
    });
}

if (import.meta.url === `file://${process.argv[1]}`) {
    const arg = (name: string, def: number) => {
        const i = process.argv.indexOf(name);
        return i > 0 ? Number(process.argv[i + 1]) : def;
    };
    for (const item of copyTask(arg("--items", 600), arg("--seed", 1), arg("--choices", 3), process.argv.includes("--fixed-order")))
        process.stdout.write(JSON.stringify(item) + "\n");
}
