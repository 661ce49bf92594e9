"""`llmos eval`: run tasks on a checkpoint, write every prompt, output and score to JSON, print a
table and one headline number.

Task names (comma-separated in --tasks):
    mmlu, mmlu_mc, arc_easy, arc_challenge, hellaswag, boolq, piqa, winogrande, openbookqa,
    commonsenseqa      multiple choice by choice log-likelihood: acc (highest summed
                       log-probability) and acc_norm (highest log-probability per byte of the
                       choice, lm-evaluation-harness's acc_bytes)
    gsm8k, triviaqa    greedy answers, answer extracted and matched (em)
    humaneval, mbpp    greedy code run against the set's tests in the sandbox (pass@1)
    assistant          the held-out built-in assistant tasks (evals/assistant_tasks.py)
    assistant:TASK     one of them alone (mental, mental2, docstring, ...): --limit items of it
    behaviour          failure rates (looping, evasive, wrong identity, skipped or needless
                       tool, malformed tool call, wrong answer) of the checkpoint's own samples
                       of held-out prompts, with 95% intervals (evals/behaviour.py); --limit
                       counts prompts (default 100, 4 samples each)
    knowledge[:NAME]   held-out docstring questions from memory and with search_knowledge over
                       knowledge base NAME (default stdlib) in the --db database
                       (evals/knowledge_qa.py)
    bpb[:SOURCE]       bits per byte on a text source (llmos.data.sources), or with no source on
                       the run's own validation shards (the number pretraining reports)
    hf:NAME[:CONFIG][@SPLIT]  a multiple-choice set from the Hugging Face hub (opt-in, network)

The headline is the centered accuracy: each task's primary accuracy rescaled so chance is 0 and
perfect is 1, (acc - chance) / (1 - chance), averaged over the tasks that have one (bpb has none).
Chance is 1/choices for multiple choice (averaged over items) and 0 for everything else.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.data import shards, sources
from llmos.data.builtin.assistant import assistant_dataset
from llmos.evals import assistant_tasks, behaviour, bpb, generative, text_table
from llmos.evals import tasks as tasks_
from llmos.evals.tasks import TaskError
from llmos.infer import likelihood as mc


def parse_tasks(spec: str) -> list[str]:
    """'mmlu,arc_easy,bpb:docs/' -> names; an unknown name is a TaskError listing the valid ones."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise TaskError(f"no tasks given; valid tasks: {tasks_.valid_names()}")
    for name in names:
        known = (name in tasks_.TASKS or name in ("assistant", "behaviour", "bpb", "knowledge")
                 or name.startswith(("bpb:", "hf:", "knowledge:", "assistant:")))
        if not known:
            raise TaskError(f"unknown task {name!r}; valid tasks: {tasks_.valid_names()}")
        if name.startswith("assistant:") and name[len("assistant:"):] not in assistant_names():
            raise TaskError(f"unknown assistant task {name!r}; one of "
                            + ", ".join(f"assistant:{t}" for t in assistant_names()))
    return list(dict.fromkeys(names))


def bar(total: int, desc: str):
    # disable=None: drawn on a terminal, silent in logs and tests.
    return tqdm(total=total, desc=desc, unit="item", disable=None, file=sys.stderr, leave=False)


# ---- multiple choice --------------------------------------------------------------------------


def run_mc(model, tok, task: tasks_.Task, items: list[tasks_.Item], batch_size: int) -> dict:
    eot = tokenizers_.eot_id(tok)
    groups, owner = [], []  # one group per distinct context: an item has one, Winogrande two
    for k, it in enumerate(items):
        conts = [tok.encode(c).ids for c in it.doc.choices]
        if it.contexts:
            for ctx, cont in zip(it.contexts, conts):
                groups.append(mc.Group([eot] + tok.encode(ctx).ids, [cont]))
                owner.append(k)
        else:
            groups.append(mc.Group([eot] + tok.encode(it.prompt).ids, conts))
            owner.append(k)
    with bar(len(groups), task.name) as pb:
        scores = mc.score_groups(model, groups, batch_size, progress=pb.update)
    per_item: list[list[mc.Scores]] = [[] for _ in items]
    for k, s in zip(owner, scores):
        per_item[k].append(s)

    records = []
    for it, ss in zip(items, per_item):
        logprobs = [lp for s in ss for lp in s.logprobs]
        greedy = [g for s in ss for g in s.greedy]
        nbytes = [len(c.encode("utf-8")) for c in it.doc.choices]
        per_byte = [lp / max(1, n) for lp, n in zip(logprobs, nbytes)]
        pred = max(range(len(logprobs)), key=logprobs.__getitem__)
        pred_norm = max(range(len(per_byte)), key=per_byte.__getitem__)
        records.append({
            "id": it.doc.id, "prompt": it.contexts or it.prompt, "choices": it.doc.choices,
            "gold": it.doc.gold, "logprobs": [round(x, 5) for x in logprobs], "bytes": nbytes,
            "greedy": greedy, "pred": pred, "pred_norm": pred_norm,
            "acc": float(pred == it.doc.gold), "acc_norm": float(pred_norm == it.doc.gold),
            "cut_context_tokens": sum(s.cut_context for s in ss),
        })
    n = max(1, len(records))
    metrics = {
        "acc": sum(r["acc"] for r in records) / n,
        "acc_norm": sum(r["acc_norm"] for r in records) / n,
        "chance": sum(1 / len(r["choices"]) for r in records) / n,
        "cut_items": sum(r["cut_context_tokens"] > 0 for r in records),
    }
    return {"metrics": metrics, "items": records}


# ---- generative and code --------------------------------------------------------------------


def run_generate(model, tok, task: tasks_.Task, items: list[tasks_.Item], batch_size: int) -> dict:
    ends = tokenizers_.end_ids(tok)
    with bar(len(items), task.name) as pb:
        outs = generative.generate_until(model, tok, [it.prompt for it in items], task.stop,
                                         task.max_new_tokens, batch_size, ends, pb.update)
    records = []
    for it, o in zip(items, outs):
        r = {"id": it.doc.id, "prompt": it.prompt, **o}
        if task.kind == "gen":
            r["score"], r["extracted"] = generative.score_answer(task.name, o["output"],
                                                                 it.doc.answers)
            r["answers"] = it.doc.answers[:20]
        records.append(r)
    if task.kind == "code":
        with bar(len(records), f"{task.name} tests") as pb:
            for it, r in zip(items, records):
                # HumanEval's prompt is the start of the function; MBPP's is prose.
                head = it.doc.query if task.name == "humaneval" else ""
                r["program"] = head + r["output"] + it.doc.tests
                r.update(generative.run_tests(r["program"]))
                r["score"] = float(r["passed"])
                pb.update(1)
    n = max(1, len(records))
    return {"metrics": {task.primary: sum(r["score"] for r in records) / n, "chance": 0.0},
            "items": records}


# ---- the built-in assistant tasks and bits per byte -----------------------------------------


@functools.cache
def assistant_heldout() -> tuple:
    """The built-in assistant set's held-out conversations, built once a process (seconds):
    checking task names, the assistant, behaviour and knowledge tasks all read them."""
    return tuple(assistant_dataset()[1])


def assistant_names() -> list[str]:
    """The held-out assistant tasks `assistant:TASK` can name (those with answers to score)."""
    return sorted({c.task for c in assistant_heldout() if c.answer})


def run_assistant(model, tok, limit: int | None, only: str = "") -> dict:
    heldout = list(assistant_heldout())
    if only:  # one task: every --limit item is of it
        heldout = [c for c in heldout if c.task == only]
    result = assistant_tasks.evaluate(model, tok, heldout, limit or 200)
    summary = {k: v for k, v in result["summary"].items() if k not in ("items", "seconds")}
    accs = [v for k, v in summary.items() if k.endswith("_acc")]
    metrics = {"acc": sum(accs) / max(1, len(accs)), "chance": 0.0, **summary}
    return {"metrics": metrics, "items": result["items"]}


def run_behaviour(model, tok, limit: int | None, seed: int) -> dict:
    heldout = list(assistant_heldout())
    return behaviour.evaluate(model, tok, heldout, limit or behaviour.PROMPTS, seed=seed)


def run_knowledge(model, tok, base: str, db: str, limit: int | None) -> dict:
    from llmos.agent.knowledge import KnowledgeBase, KnowledgeError
    from llmos.agent.knowledge_tool import knowledge_tool
    from llmos.data.builtin.lookup import PASSAGE_CHARS
    from llmos.evals import knowledge_qa

    try:
        kb = KnowledgeBase.open(db, base)
    except KnowledgeError as e:
        raise TaskError(f"task knowledge: {e} (in the database {db}; --db names another)") from e
    heldout = list(assistant_heldout())
    # One passage of the size the assistant learned to read (cpu-tiny's context holds one).
    tool = knowledge_tool([kb], k=1, max_chars=PASSAGE_CHARS)
    r = knowledge_qa.evaluate(model, tok, tool, heldout, limit or 200)
    plain, looked = r["plain"], r["retrieval"]
    metrics = {"acc": looked["accuracy"]["rate"], "chance": 0.0,
               "acc_plain": plain["accuracy"]["rate"], "f1": looked["mean_f1"],
               "f1_plain": plain["mean_f1"], "searched": looked["searched"]["rate"],
               "found": looked["found"]["rate"], "cited": looked["cited"]["rate"],
               "cited_right": looked["cited_right"]["rate"], "items": r["n"]}
    return {"metrics": metrics, "items": r["items"], "table": knowledge_qa.format_table(r)}


def run_bpb(model, tok, model_dir: Path, source: str | None, limit: int | None,
            batch_size: int) -> dict:
    seq_len = model.cfg.max_seq_len
    token_bytes = torch.tensor(tokenizers_.token_byte_lengths(tok))
    if source is None:  # the run's own validation shards, as pretraining measures them
        data_dir = model_dir.parent / "data"
        if not (data_dir / "manifest.json").exists():
            raise TaskError(f"bpb without a source reads the run's validation shards, but "
                            f"{data_dir} has none; name a source: bpb:SOURCE")
        # The same windows pretraining measures (its eval_tokens); --limit does not apply.
        train = checkpoint.read_info(model_dir).get("config", {}).get("train", {})
        max_tokens = train.get("eval_tokens", 65536)
        batches = list(shards.iter_eval_batches(data_dir, "val", batch_size, seq_len,
                                                max_tokens))
        m = bpb.evaluate(model, batches, token_bytes)
        return {"metrics": {"bpb": m["val_bpb"], "loss": m["val_loss"],
                            "tokens": sum(y.numel() for _, y in batches),
                            "source": str(data_dir)},
                "items": []}
    try:
        docs, skipped = sources.load_corpus([source])
    except ValueError as e:  # SourceError, CorpusError: a bad spec, no network, no text
        raise TaskError(f"task bpb:{source}: {e}") from e
    docs = [docs[i] for i in tasks_.spread(len(docs), limit)]
    eot = tokenizers_.eot_id(tok)
    records, bits, nbytes = [], 0.0, 0
    with bar(len(docs), "bpb") as pb:
        for doc in docs:
            ids = torch.tensor([eot] + tok.encode(doc.text).ids)
            windows = [ids[i:i + seq_len + 1] for i in range(0, len(ids) - 1, seq_len)]
            full = [w for w in windows if len(w) == seq_len + 1]
            batches = [torch.stack(full[i:i + batch_size]) for i in range(0, len(full),
                                                                         batch_size)]
            batches += [w[None] for w in windows if len(w) < seq_len + 1]
            m = bpb.evaluate(model, ((b[:, :-1], b[:, 1:]) for b in batches), token_bytes)
            doc_bytes = int(token_bytes[ids[1:]].sum())
            records.append({"source": doc.source, "tokens": len(ids) - 1, "bytes": doc_bytes,
                            "bpb": m["val_bpb"]})
            bits += m["val_bpb"] * max(1, doc_bytes)
            nbytes += doc_bytes
            pb.update(1)
    return {"metrics": {"bpb": bits / max(1, nbytes), "bytes": nbytes, "documents": len(docs),
                        "skipped": skipped.summary()},
            "items": records}


# ---- the run -----------------------------------------------------------------------------------


def run_task(name: str, model, tok, model_dir: Path, shots: int, limit: int | None,
             batch_size: int, chat: bool = False, db: str = "llmos.db", seed: int = 0) -> dict:
    if name == "behaviour":  # no chance: rates of failures stay out of the centered accuracy
        return {"kind": "behaviour", "primary": "clean", **run_behaviour(model, tok, limit, seed)}
    if name == "knowledge" or name.startswith("knowledge:"):
        base = name[len("knowledge:"):] or "stdlib"
        return {"kind": "knowledge", "primary": "acc",
                **run_knowledge(model, tok, base, db, limit)}
    if name == "assistant" or name.startswith("assistant:"):
        return {"kind": "assistant", "primary": "acc",
                **run_assistant(model, tok, limit, name[len("assistant:"):])}
    if name == "bpb" or name.startswith("bpb:"):
        source = name[len("bpb:"):] or None
        return {"kind": "bpb", "primary": "bpb",
                **run_bpb(model, tok, model_dir, source, limit, batch_size)}
    task = tasks_.hf_task(name) if name.startswith("hf:") else tasks_.TASKS[name]
    items = tasks_.build_items(task, shots, limit)
    if chat and task.kind == "gen":
        for it in items:
            it.prompt = generative.chat_prompt(tok, it.prompt)
    run = run_mc if task.kind == "mc" else run_generate
    return {"kind": task.kind, "primary": task.primary, "about": task.about,
            **run(model, tok, task, items, batch_size)}


def centered(result: dict) -> float | None:
    m = result["metrics"]
    if "chance" not in m:
        return None
    return (m[result["primary"]] - m["chance"]) / (1 - m["chance"])


def evaluate(model_dir, names: list[str], shots: int = 0, limit: int | None = None,
             batch_size: int = 32, device: str = "cpu", chat: bool = False, log=print,
             db: str = "llmos.db", seed: int = 0) -> dict:
    """Run `names` on the checkpoint. `seed` seeds the tasks that sample (behaviour)."""
    model_dir = Path(model_dir)
    model = checkpoint.load_model(model_dir, device).eval()
    tok = tokenizers_.load(model_dir)
    t0 = time.perf_counter()
    results = {}
    for name in names:
        t = time.perf_counter()
        r = run_task(name, model, tok, model_dir, shots, limit, batch_size, chat, db, seed)
        m = r["metrics"]  # n: items; bpb: documents, or tokens on the run's shards
        r["n"] = m.get("documents", m.get("tokens", m.get("items", len(r["items"]))))
        r["seconds"] = round(time.perf_counter() - t, 1)
        c = centered(r)
        if c is not None:
            r["centered"] = c
        log(f"eval: {name}: {r['primary']} {r['metrics'][r['primary']]:.4f} "
            f"(n={r['n']}, {r['seconds']:.0f}s)")
        # Items last, so the file reads summary first.
        results[name] = {k: v for k, v in r.items() if k != "items"} | {"items": r["items"]}
    scored = [r["centered"] for r in results.values() if "centered" in r]
    # The behaviour rates also on top, where a reader looks first (the samples stay in results).
    shown = {"behaviour": results["behaviour"]["behaviour"]} if "behaviour" in results else {}
    return {
        "model": str(model_dir), "tasks": names, "shots": shots, "limit": limit, "chat": chat,
        "seed": seed, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "centered_accuracy": sum(scored) / len(scored) if scored else None,
        **shown, "results": results,
    }


def default_out(model_dir, names: list[str], shots: int, limit: int | None,
                chat: bool = False) -> Path:
    tag = "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", n).strip("_") for n in names)[:120]
    tag += f"-{shots}shot" + ("-chat" if chat else "") + (f"-limit{limit}" if limit else "")
    return Path(model_dir) / "evals" / f"{tag}.json"


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)


def format_table(result: dict) -> str:
    rows = [("task", "metric", "value", "n", "centered", "seconds")]
    for name, r in result["results"].items():
        keys = [r["primary"]] + [k for k in r["metrics"] if k != r["primary"]]
        for k in keys:
            v = r["metrics"][k]
            if isinstance(v, float) and not math.isnan(v) and k != "chance":
                first = k == r["primary"]
                rows.append((name if first else "", k, f"{v:.4f}", str(r["n"]) if first else "",
                             f"{r['centered']:.4f}" if first and "centered" in r else "",
                             f"{r['seconds']:.0f}" if first else ""))
    lines = [text_table.aligned(rows, left=2)]
    c = result["centered_accuracy"]
    lines.append(f"centered accuracy: {c:.4f}" if c is not None else
                 "centered accuracy: - (no accuracy task)")
    if "behaviour" in result["results"]:
        lines += ["", "behaviour (rate of each failure over the samples it applies to):",
                  behaviour.format_table(result["results"]["behaviour"]["behaviour"])]
    return "\n".join(lines)
