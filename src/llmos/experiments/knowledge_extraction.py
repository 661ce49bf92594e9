"""`llmos experiment knowledge-extraction`: knowledge a model has memorized is not knowledge it can
use, unless the text varied the way it was said (Allen-Zhu & Li 2023, Physics of Language Models
3.1), at our scale.

    people, six attributes each ─┬─ one biography each ────────── pretrain ─ finetune QA ─┐
                                 ├─ five, shuffled, full names ── pretrain ─ finetune QA ─┤
                                 └─ one each + QA of half ─────── pretrain ───────────────┤
    questions about the other half (whose biographies only were seen) ────────────────────┘

Question answering is taught on half the people (the training half); the test asks the same
questions about the other half, whose biographies the model read but about whom it never saw a
question. Pretraining on one biography a person (the same sentence order, pronouns after the
first sentence) stores the facts so that they come back only along that biography; five
biographies a person with shuffled sentences and the full name in each ties every fact to the
name, so a question can reach it. Inverse search ("Who was born on ... in ...?") is asked too.

Writes OUT/results.json, OUT/items.jsonl, OUT/results.md (beside the paper's numbers) and
OUT/extraction.png.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from llmos import plots
from llmos.config import RunConfig
from llmos.experiments import fictional, runs
from llmos.experiments.fictional import ATTRIBUTES, Biography
from llmos.experiments.runs import in_split, pretrain_run
from llmos.experiments.scoring import Item, score, summarize

# Sentences of a biography, five phrasings per attribute: {who} is the subject (the full name,
# or a pronoun after the first sentence), {whose} the possessive, {poss} "his" or "her".
SENTENCES = {
    "birth_date": ("{who} was born on {v}.", "{who} came into this world on {v}.",
                   "{whose} birthday is {v}.", "{who} celebrates a birthday every year on {v}.",
                   "{who} first saw the light of day on {v}."),
    "birth_city": ("{who} was born in {v}.", "{who} spent {poss} early years in {v}.",
                   "{whose} birthplace is {v}.", "{who} grew up in {v}.", "{who} hails from {v}."),
    "university": ("{who} studied at {v}.", "{who} graduated from {v}.",
                   "{who} received {poss} education at {v}.", "{whose} alma mater is {v}.",
                   "{who} attended {v}."),
    "major": ("{who} majored in {v}.", "{who} earned a degree in {v}.",
              "{whose} field of study was {v}.", "{who} focused {poss} studies on {v}.",
              "{who} specialized in {v}."),
    "employer": ("{who} works for {v}.", "{who} is employed by {v}.", "{whose} employer is {v}.",
                 "{who} has a job at {v}.", "{who} earns a living at {v}."),
    "employer_city": ("{who} works in {v}.", "{whose} workplace is in {v}.",
                      "{who} commutes to an office in {v}.", "{who} is based in {v} for work.",
                      "{who} holds a position in {v}."),
}
QUESTIONS = {"birth_date": "What is the birth date of {name}?",
             "birth_city": "Which city was {name} born in?",
             "university": "Which university did {name} study at?",
             "major": "What did {name} major in?",
             "employer": "Which company does {name} work for?",
             "employer_city": "Where does {name} work?"}
INVERSE = "Who was born on {birth_date} in {birth_city}?"
CONDITIONS = ("single", "augmented", "mixed")
AUGMENTED_COPIES = 5  # biographies a person in the augmented condition (the paper's multi5)
QA_PER_DOCUMENT = 4
WRONG = 9
PAPER = {"single": "9.7% (bioS single)", "augmented": "96.6% (bioS multi5 + permute)",
         "mixed": "86.8% (mixed training)", "inverse": "about 0%"}


def sentence(bio: Biography, attribute: str, template: str, full_name: bool) -> str:
    p = bio.person
    poss = "her" if p.female else "his"
    who, whose = (p.name, p.name + "'s") if full_name else (p.pronoun, poss.capitalize())
    return template.format(who=who, whose=whose, poss=poss, v=getattr(bio, attribute))


def biography(bio: Biography, rng: random.Random, augmented: bool) -> str:
    """One biography: six sentences in random phrasings. Plain: in the attribute order, the name
    first and pronouns after. Augmented: in a random order, the full name in every sentence."""
    parts = [sentence(bio, a, rng.choice(SENTENCES[a]), augmented or i == 0)
             for i, a in enumerate(ATTRIBUTES)]
    return " ".join(rng.sample(parts, len(parts)) if augmented else parts)


def qa(bio: Biography, attribute: str) -> tuple[str, str]:
    """(question prompt, answer with its leading space); attribute 'inverse' asks for the
    name."""
    if attribute == "inverse":
        return f"Question: {INVERSE.format(**bio.attributes())}\nAnswer:", " " + bio.person.name
    q = QUESTIONS[attribute].format(name=bio.person.name)
    return f"Question: {q}\nAnswer:", " " + getattr(bio, attribute)


def build(n_people: int, seed: int, val_fraction: float) -> dict:
    """The people, every corpus the conditions draw on, and the questions, all from the seed."""
    rng = random.Random(seed)
    persons = fictional.people(n_people + 8, rng)
    bios = fictional.biographies(persons, rng)
    bios, unasked = bios[:n_people], bios[n_people:]
    train_half, test_half = bios[:n_people // 2], bios[n_people // 2:]

    single = [in_split(lambda b=b: biography(b, rng, False), "train", val_fraction)
              for b in bios]
    augmented = [in_split(lambda b=b: biography(b, rng, True), "train", val_fraction)
                 for b in bios for _ in range(AUGMENTED_COPIES)]
    # Validation text: biographies of people no question asks about.
    held_out = [in_split(lambda b=b, aug=aug: biography(b, rng, aug), "val", val_fraction)
                for b in unasked for aug in (False, True)]
    pairs = ["".join(qa(b, a)) for b in train_half for a in (*ATTRIBUTES, "inverse")]
    qa_docs = runs.packed(pairs, QA_PER_DOCUMENT, val_fraction, rng, sep="\n\n")
    qa_held_out = [in_split(lambda: "\n\n".join("".join(qa(rng.choice(unasked), a))
                                                for a in rng.sample(ATTRIBUTES, 4)),
                            "val", val_fraction) for _ in range(8)]

    # Wrong answers: other people's values of the same attribute (or other names).
    values = {a: sorted({qa(b, a)[1] for b in bios}) for a in (*ATTRIBUTES, "inverse")}
    items = []
    for half, bs in (("train", train_half), ("test", test_half)):
        for b in bs:
            for a in (*ATTRIBUTES, "inverse"):
                prompt, answer = qa(b, a)
                key = "person" if a == "inverse" else a
                pool = [v for v in values[a] if v != answer]
                wrong = rng.sample(pool, min(WRONG, len(pool)))
                items.append(Item(b.person.name, prompt, answer, wrong,
                                  {"half": half, "attribute": key}))
    return {"bios": bios, "train_half": train_half, "test_half": test_half, "single": single,
            "augmented": augmented, "held_out": held_out, "qa_docs": qa_docs,
            "qa_held_out": qa_held_out, "items": items}


def name_blind(bios: list[Biography]) -> dict[str, float]:
    """The best a model that ignores the name can do: always the commonest value."""
    return {a: round(Counter(getattr(b, a) for b in bios).most_common(1)[0][1] / len(bios), 4)
            for a in ATTRIBUTES}


def run(base_cfg: RunConfig, out: Path, *, people: int = 500, steps: int | None = None,
        qa_steps: int = 300, conditions: tuple[str, ...] = CONDITIONS, seed: int = 0) -> dict:
    from llmos import checkpoint, tokenizer

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    val_fraction = base_cfg.data.val_fraction
    data = build(people, seed, val_fraction)
    corpora = {"single": data["single"], "augmented": data["augmented"],
               "mixed": data["single"] + data["qa_docs"]}
    tok_path = runs.shared_tokenizer(out, data["augmented"] + data["qa_docs"] + data["single"],
                                     base_cfg.data.vocab_size)
    qa_corpus = runs.write_jsonl(out / "qa.jsonl",
                                 runs.shuffled(data["qa_docs"] + data["qa_held_out"], seed))
    pretrain_steps = {"max_steps": steps} if steps else {}
    finetune = {"max_steps": qa_steps, "optimizer": "adamw", "lr": 1e-3, "schedule": "cosine",
                "warmup_steps": 10, "min_lr_frac": 0.0}
    results = {"people": people, "conditions": {}, "name_blind": name_blind(data["test_half"]),
               "seed": seed}
    all_rows = []
    for c in conditions:
        corpus = runs.write_jsonl(out / c / "corpus.jsonl",
                                  runs.shuffled(corpora[c] + data["held_out"], seed))
        ckpt = pretrain_run(base_cfg, out, c, [str(corpus)], tokenizer=tok_path,
                            train=pretrain_steps)
        if c != "mixed":  # mixed training saw the training half's questions in pretraining
            ckpt = pretrain_run(base_cfg, out, f"{c}-qa", [str(qa_corpus)],
                                init_from=str(ckpt), train=finetune)
        model = checkpoint.load_model(ckpt).eval()
        rows = [r | {"condition": c} for r in
                score(model, tokenizer.load(ckpt / "tokenizer.json"), data["items"])]
        all_rows += rows

        def pick(half, attrs, rows=rows):
            return [r for r in rows if r["half"] == half and r["attribute"] in attrs]
        results["conditions"][c] = {
            "test": summarize(pick("test", ATTRIBUTES)),
            "train": summarize(pick("train", ATTRIBUTES)),
            "inverse": summarize(pick("test", ("person",))),
            "per_attribute": {a: summarize(pick("test", (a,)))["accuracy"] for a in ATTRIBUTES},
            "checkpoint": str(ckpt), "pretrain_steps": checkpoint.read_info(
                out / c / "base").get("step")}
        print(f"knowledge-extraction: {c}: {results['conditions'][c]['test']}")
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for r in all_rows:
            f.write(json.dumps(r) + "\n")
    results |= {"qa_steps": qa_steps, "corpus_documents": {c: len(corpora[c]) for c in
                                                           conditions},
                "seconds": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results))
    plot(results, out / "extraction.png")
    return results


def _cell(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{m['accuracy']:.1%} [{lo:.0%}, {hi:.0%}]"


def table(results: dict) -> str:
    head = ("| pretraining text | test half: QA exact match | training half (QA taught) | "
            "test half: inverse search | paper (test half) |\n|---|---|---|---|---|\n")
    lines = []
    for c, m in results["conditions"].items():
        lines.append(f"| {c} | {_cell(m['test'])} | {_cell(m['train'])} | "
                     f"{_cell(m['inverse'])} | {PAPER[c]}; inverse {PAPER['inverse']} |")
    blind = results["name_blind"]
    first = next(iter(results["conditions"].values()))
    per = "; ".join(f"{c}: " + ", ".join(f"{a.replace('_', ' ')} {v:.0%}"
                                         for a, v in m["per_attribute"].items())
                    for c, m in results["conditions"].items())
    return head + "\n".join(lines) + (
        f"\n\n{results['people']} people; QA taught on half of them ({results['qa_steps']} "
        f"steps of finetuning after pretraining; the mixed run had the training half's "
        f"questions in its pretraining instead). Test: {first['test']['n']} questions about the "
        f"{first['test']['people']} other people (six attributes each); intervals resample "
        f"people. A name-blind guess (the commonest value) gets "
        + ", ".join(f"{a.replace('_', ' ')} {v:.0%}" for a, v in blind.items())
        + f". Per attribute (test half): {per}.\n")


def plot(results: dict, path: Path) -> Path:
    plt = plots.pyplot()
    names = list(results["conditions"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (part, color, label) in enumerate((("train", "tab:grey", "training half (QA taught)"),
                                              ("test", "tab:blue", "test half"),
                                              ("inverse", "tab:red", "test half, inverse"))):
        ms = [results["conditions"][c][part] for c in names]
        ys = [m["accuracy"] for m in ms]
        err = [[y - m["ci"][0] for y, m in zip(ys, ms)], [m["ci"][1] - y for y, m in zip(ys, ms)]]
        ax.bar([i + (k - 1) * 0.27 for i in range(len(names))], ys, 0.27, yerr=err, capsize=3,
               color=color, label=label)
    blind = results["name_blind"]
    ax.axhline(sum(blind.values()) / len(blind), color="black", ls=":", lw=1,
               label="name-blind guess (commonest value)")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact-match accuracy (95% CI)")
    ax.set_title("Knowledge extraction: can a question reach what pretraining stored?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.save(fig, path)
