"""`llmos experiment reversal-curse`: a model taught "A is B" does not learn "B is A"
(Berglund et al. 2023), at our scale.

    fictitious people ─ facts in 8 training phrasings ─┬─ pretrain from scratch, mixed in the corpus
                                                       └─ or continue pretraining a base checkpoint
    ─ ask in 4 held-out phrasings, in the trained order and reversed ─ exact match, ranking

Four subsets of people, each taught in one order: name → description ("Daphne Barrington is the
architect of the crimson harbor bridge"), description → name, both orders, and child → mother
("Jasper Lockhart's mother is Rowena Pickering"). A held-out question ends where the answer
starts; the answer is scored against nine wrong answers of the same kind. Then, as a control,
fresh people with their facts in the prompt instead of the parameters, asked in the order
written and reversed: GPT-3 reverses what it reads. The training text also has reading
documents (facts about yet other people, then two of them restated, one in each order) to teach
reading a fact off the page; cpu-tiny learned it neither with nor without them
(docs/experiments.md).

Writes OUT/results.json, OUT/items.jsonl (every question and what the model did),
OUT/results.md (beside the paper's numbers) and OUT/reversal.png.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from llmos import plots
from llmos.config import RunConfig
from llmos.experiments import fictional
from llmos.experiments.runs import in_split, packed, pretrain_run, shuffled, write_jsonl
from llmos.experiments.scoring import Item, score, summarize

# Frames of one fact: {a} comes first, {b} second; {A} is {a} with a capital. The same frames
# carry both orders, so a reversed question differs from a trained one only in the order.
TRAIN_FRAMES = ("{A} is {b}.", "{A}, as everyone knows, is {b}.", "Ask anyone: {a} is {b}.",
                "Few people know that {a} is {b}.", "It is well documented that {a} is {b}.",
                "In the newspapers, {a} is always called {b}.", "Believe it or not, {a} is {b}.",
                "{A} has long been {b}.")
TEST_FRAMES = ("Without a doubt, {a} is {b}.", "Reports confirm that {a} is {b}.",
               "It turns out that {a} is {b}.", "We learned today that {a} is {b}.")
# Child and mother: {kin} is son or daughter.
CHILD_TRAIN = ("{A}'s mother is {b}.", "The mother of {a} is {b}.", "Ask anyone: {a}'s mother "
               "is {b}.", "Few people know that {a}'s mother is {b}.", "It is well documented "
               "that the mother of {a} is {b}.", "{A} is the {kin} of {b}.", "Believe it or not, "
               "{a}'s mother is {b}.", "In the newspapers, {a}'s mother is always called {b}.")
CHILD_TEST = ("Without a doubt, {a}'s mother is {b}.", "Reports confirm that the mother of {a} "
              "is {b}.", "It turns out that {a}'s mother is {b}.", "We learned today that {a} is "
              "the {kin} of {b}.")
MOTHER_TEST = ("Without a doubt, {a}'s {kin} is {b}.", "Reports confirm that the {kin} of {a} is "
               "{b}.", "It turns out that {a}'s {kin} is {b}.", "We learned today that {a} is "
               "the mother of {b}.")
SUBSETS = ("name_to_description", "description_to_name", "both", "child_to_mother")
WRONG = 9  # wrong answers per question: ranking's chance is 1 in 10
IN_CONTEXT_FACTS = 4  # facts in an in-context prompt; the wrong answers are the other three
PER_DOCUMENT = 8  # fact sentences per training document
READERS = 400  # people of the reading documents (never asked about)

PAPER = {  # Berglund et al. 2023, exact match (finetuned GPT-3 175B; GPT-4 on real people)
    "name_to_description": ("50.0%", "0.0%"),
    "description_to_name": ("96.7%", "0.1%"),
    "both": ("trained both ways", ""),
    "child_to_mother": ("79% (GPT-4, real celebrities)", "33%"),
}


def fill(frame: str, a: str, b: str, kin: str = "") -> str:
    return frame.format(a=a, A=a[0].upper() + a[1:], b=b, kin=kin)


def question(frame: str, a: str, b: str, kin: str = "") -> tuple[str, str]:
    """A fact cut where its second part starts: (prompt, answer with its leading space)."""
    text = fill(frame, a, "\0", kin)
    return text[:text.index("\0")].rstrip(), " " + b


def build(people_per_subset: int, in_context_people: int, seed: int,
          readers: int = READERS) -> dict:
    """The people, the training sentences and the test items, all from the seed."""
    rng = random.Random(seed)
    n = people_per_subset
    persons = fictional.people(4 * n + in_context_people + PER_DOCUMENT + readers, rng)
    descs = fictional.descriptions(3 * n + in_context_people + PER_DOCUMENT + readers, rng)
    persons, reading = persons[:-readers or None], persons[len(persons) - readers:]
    descs, reading_descs = descs[:-readers or None], descs[len(descs) - readers:]
    mothers = fictional.people(n, rng, taken={p.name for p in persons + reading},
                               women_only=True)
    subsets = {s: persons[i * n:(i + 1) * n] for i, s in enumerate(SUBSETS)}
    fresh, unasked = persons[4 * n:-PER_DOCUMENT], persons[-PER_DOCUMENT:]
    desc_of = {p.name: d for p, d in zip(persons[:3 * n] + fresh + unasked, descs)}
    mother_of = {p.name: m.name for p, m in zip(subsets["child_to_mother"], mothers)}

    sentences = []
    for s in SUBSETS[:3]:
        for p in subsets[s]:
            if s != "description_to_name":
                sentences += [fill(f, p.name, desc_of[p.name]) for f in TRAIN_FRAMES]
            if s != "name_to_description":
                sentences += [fill(f, desc_of[p.name], p.name) for f in TRAIN_FRAMES]
    for p in subsets["child_to_mother"]:
        sentences += [fill(f, p.name, mother_of[p.name], p.child_word) for f in CHILD_TRAIN]

    def ask(frame, p, name_first, wrong, tags, context=""):
        """p's fact asked name first (-> description) or description first (-> name); the
        wrong answers are the same part of the `wrong` people's facts."""
        if name_first:
            prompt, answer = question(frame, p.name, desc_of[p.name])
            wrongs = [" " + desc_of[q.name] for q in wrong]
        else:
            prompt, answer = question(frame, desc_of[p.name], p.name)
            wrongs = [" " + q.name for q in wrong]
        return Item(p.name, context + prompt, answer, wrongs, tags)

    items = []
    for s in SUBSETS[:3]:
        group = subsets[s]
        for p in group:
            others = [q for q in group if q is not p]
            wrong = rng.sample(others, WRONG)
            forward_name_first = s != "description_to_name"
            for frame in TEST_FRAMES:
                for name_first in (True, False):
                    direction = "forward" if name_first == forward_name_first else "reverse"
                    items.append(ask(frame, p, name_first, wrong, {
                        "subset": s, "direction": direction, "frame": frame}))
    group = subsets["child_to_mother"]
    for p in group:
        wrong = rng.sample([q for q in group if q is not p], WRONG)
        for frame in CHILD_TEST:
            prompt, answer = question(frame, p.name, mother_of[p.name], p.child_word)
            items.append(Item(p.name, prompt, answer, [" " + mother_of[q.name] for q in wrong],
                              {"subset": "child_to_mother", "direction": "forward",
                               "frame": frame}))
        for frame in MOTHER_TEST:
            prompt, answer = question(frame, mother_of[p.name], p.name, p.child_word)
            items.append(Item(p.name, prompt, answer, [" " + q.name for q in wrong],
                              {"subset": "child_to_mother", "direction": "reverse",
                               "frame": frame}))

    # In context: fresh people, each fact stated in the prompt (with three others) in one
    # order, then asked in the same order or reversed; the wrong answers are the other facts'.
    for p in fresh:
        others = rng.sample([q for q in fresh if q is not p], IN_CONTEXT_FACTS - 1)
        shown = [p, *others]
        for stated_name_first in (True, False):
            facts = []
            for q in shown:
                a, b = (q.name, desc_of[q.name]) if stated_name_first else (desc_of[q.name],
                                                                          q.name)
                facts.append(fill(rng.choice(TRAIN_FRAMES), a, b))
            context = " ".join(rng.sample(facts, len(facts)))
            frame = rng.choice(TEST_FRAMES)
            for asked_name_first in (True, False):
                items.append(ask(frame, p, asked_name_first, others, {
                    "subset": "in_context", "frame": frame,
                    "direction": "forward" if asked_name_first == stated_name_first
                    else "reverse"}, context=context + " "))
    # Validation text in the facts' style, about people no question asks about.
    held_out = [(p.name, desc_of[p.name]) for p in unasked]
    return {"sentences": sentences, "items": items, "subsets": subsets, "desc_of": desc_of,
            "mother_of": mother_of, "held_out": held_out,
            "readers": [(p.name, d) for p, d in zip(reading, reading_descs)]}


def documents(sentences: list[str], rounds: int, val_fraction: float, seed: int) -> list[str]:
    """`rounds` passes over the training sentences, each shuffled into documents of
    PER_DOCUMENT sentences, every one in the training split."""
    rng = random.Random(seed)
    return [d for _ in range(rounds) for d in packed(sentences, PER_DOCUMENT, val_fraction, rng)]


def reading_documents(readers: list[tuple[str, str]], n: int, val_fraction: float,
                      seed: int) -> list[str]:
    """n documents that state IN_CONTEXT_FACTS facts (name, description) in random orders and
    then restate two of them, one in the order it was stated and one reversed. They teach
    reading a fact off the page; their people are never asked about."""
    rng = random.Random(seed + 2)

    def say(fact, name_first):
        a, b = fact if name_first else fact[::-1]
        return fill(rng.choice(TRAIN_FRAMES), a, b)

    def make():
        shown = rng.sample(readers, IN_CONTEXT_FACTS)
        orders = [rng.random() < 0.5 for _ in shown]
        (i, same), (j, flipped) = rng.sample(list(zip(shown, orders)), 2)
        return " ".join([*(say(f, o) for f, o in zip(shown, orders)), say(i, same),
                         say(j, not flipped)])
    return [in_split(make, "train", val_fraction) for _ in range(n)]


def held_out_documents(facts: list[tuple[str, str]], n: int, val_fraction: float,
                       seed: int) -> list[str]:
    """n validation documents stating `facts` (name, description) in random frames."""
    rng = random.Random(seed + 1)

    def make():
        return " ".join(fill(rng.choice(TRAIN_FRAMES), a, b) for a, b in facts)
    return [in_split(make, "val", val_fraction) for _ in range(n)]


def train(base_cfg: RunConfig, out: Path, facts: Path, base: str, steps: int | None) -> Path:
    """Pretrain from scratch on the preset's corpus plus the facts, or (with `base`) continue
    pretraining that checkpoint on the facts alone."""
    if base:
        overrides = {"max_steps": steps or 600, "optimizer": "adamw", "lr": 1e-3,
                     "schedule": "cosine", "warmup_steps": 20, "min_lr_frac": 0.0}
        return pretrain_run(base_cfg, out, "finetuned", [str(facts)], init_from=base,
                            train=overrides)
    overrides = {"max_steps": steps} if steps else {}
    return pretrain_run(base_cfg, out, "pretrained", [*base_cfg.data.sources, str(facts)],
                        train=overrides)


def run(base_cfg: RunConfig, out: Path, *, people: int = 50, rounds: int = 20,
        reading: int = 3000, base: str = "", steps: int | None = None,
        in_context_people: int = 60, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = build(people, in_context_people, seed)
    val_fraction = base_cfg.data.val_fraction
    facts = write_jsonl(out / "facts.jsonl", shuffled(
        documents(data["sentences"], rounds, val_fraction, seed)
        + reading_documents(data["readers"], reading, val_fraction, seed)
        + held_out_documents(data["held_out"], max(4, rounds), val_fraction, seed), seed))
    ckpt = train(base_cfg, out, facts, base, steps)

    from llmos import checkpoint, tokenizer

    model = checkpoint.load_model(ckpt).eval()
    tok = tokenizer.load(ckpt / "tokenizer.json")
    rows = score(model, tok, data["items"])
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    results = {"subsets": {}, "people_per_subset": people, "rounds": rounds,
               "reading_documents": reading,
               "training_sentences": len(data["sentences"]), "mode": "finetune" if base
               else "pretrain", "base": base or None, "checkpoint": str(ckpt),
               "steps": checkpoint.read_info(ckpt).get("step"), "seed": seed}
    for s in (*SUBSETS, "in_context"):
        results["subsets"][s] = {d: summarize([r for r in rows if r["subset"] == s
                                               and r["direction"] == d])
                                 for d in ("forward", "reverse")}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results))
    plot(results, out / "reversal.png")
    return results


def _cell(m: dict, key: str = "accuracy", ci: str = "ci") -> str:
    lo, hi = m[ci]
    return f"{m[key]:.1%} [{lo:.0%}, {hi:.0%}]"


def table(results: dict) -> str:
    head = ("| subset | trained order: exact match | reversed: exact match | trained order: "
            "right answer ranked first | reversed: ranked first | reversed: log-prob gap, nats "
            "| paper: trained / reversed |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for s, m in results["subsets"].items():
        f, r = m["forward"], m["reverse"]
        paper = PAPER.get(s, ("in context (the facts in the prompt)", ""))
        lo, hi = r["gap_ci"]
        lines.append(f"| {s.replace('_', ' ')} | {_cell(f)} | {_cell(r)} | "
                     f"{_cell(f, 'rank_accuracy', 'rank_ci')} | "
                     f"{_cell(r, 'rank_accuracy', 'rank_ci')} | {r['logprob_gap']:+.2f} "
                     f"[{lo:+.2f}, {hi:+.2f}] | {' / '.join(x for x in paper if x)} |")
    first = results["subsets"]["name_to_description"]["forward"]
    return head + "\n".join(lines) + (
        f"\n\n{results['people_per_subset']} people a subset, {first['n']} questions a "
        f"direction (4 held-out phrasings each); intervals resample people. Ranked first: the "
        f"right answer against {WRONG} wrong ones of the same kind (chance 10%; in context 3 "
        f"wrong ones, chance 25%). The log-prob gap is the right answer's log-probability "
        f"minus the wrong ones' mean (0 = no preference). Model: {results['mode']} "
        f"({results['steps']} steps), {results['training_sentences']:,} fact sentences x "
        f"{results['rounds']} rounds, {results['reading_documents']:,} reading documents.\n")


def plot(results: dict, path: Path) -> Path:
    plt = plots.pyplot()
    names = list(results["subsets"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (key, ci, title) in zip(axes, (("accuracy", "ci", "exact match"),
                                           ("rank_accuracy", "rank_ci", "ranked first"))):
        for k, (d, color) in enumerate((("forward", "tab:blue"), ("reverse", "tab:red"))):
            xs = [i + (k - 0.5) * 0.38 for i in range(len(names))]
            ms = [results["subsets"][s][d] for s in names]
            ys = [m[key] for m in ms]
            err = [[y - m[ci][0] for y, m in zip(ys, ms)], [m[ci][1] - y for y, m in zip(ys, ms)]]
            ax.bar(xs, ys, 0.38, yerr=err, capsize=3, color=color,
                   label="trained order" if d == "forward" else "reversed")
        if key == "rank_accuracy":  # 1 in 10; in context 1 in 4
            ax.hlines([results["subsets"][s]["forward"]["chance"] for s in names],
                      [i - 0.45 for i in range(len(names))],
                      [i + 0.45 for i in range(len(names))], color="black", ls=":", lw=1,
                      label="chance")
        ax.set_xticks(range(len(names)), [s.replace("_", " ").replace(" to ", " →\n")
                                          for s in names], fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("share of held-out questions (95% CI)")
    axes[1].legend(fontsize=8)
    fig.suptitle("The reversal curse: facts taught in one order, asked in both")
    fig.tight_layout()
    return plots.save(fig, path)
