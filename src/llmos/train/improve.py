"""`llmos improve`: self-improvement where a reward can be computed (AlphaGo's loop, as expert
iteration / STaR, Zelikman et al. 2022). Each round:

1. sample k answers to each of a round's training problems of the environment
   (envs/environments.py: two-digit arithmetic, countdown puzzles);
2. keep the answers its *training* verifier accepts (for arithmetic: the exact result with true
   working, `envs.verifiers.exact_number`; for countdown: a valid solution); for a problem no
   sample solved, ask again with the answer given as a hint and keep a verified answer to the
   question without the hint (rationalization); answers that break the format (a tool call, no
   number, cut off) are rejected and counted;
3. finetune on the kept answers mixed with as many conversations of the SFT set (replay, so the
   rest of what the assistant knows is rehearsed), and with the starting model's pretraining
   text as SFT mixes it in (sft.text_rows), from the previous round's checkpoint;
4. evaluate: the environment's held-out problems with its held-out check (arithmetic: a
   separate one, the final number equals the reference; greedy, pass@1 and pass@k of k
   samples) and every held-out assistant task, each task's change from round 0 paired on the
   same questions, so a specialist that forgot the rest is seen.

Each round writes OUT/round-R (a checkpoint), OUT/round-R.jsonl (what it trained on) and a row
of OUT/rounds.jsonl (round 0: the starting model). A run stopped between rounds picks up at the
next one; one stopped inside a round's finetuning resumes it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.config import RunConfig
from llmos.data.builtin.assistant import assistant_dataset
from llmos.data.conversations import split_sources
from llmos.envs.environments import ENVIRONMENTS, Environment
from llmos.envs.prompts import Prompt, verify
from llmos.evals import assistant_tasks, paired
from llmos.evals.intervals import wilson
from llmos.evals.tasks import spread
from llmos.infer.answers import extract_number
from llmos.infer.think import LocalModel, Think, content, prompt_ids, sampling
from llmos.train import sft, text_mix


@dataclass
class ImproveOptions:
    env: str = "arithmetic"
    rounds: int = 3
    samples: int = 8  # k answers per problem
    problems: int = 800  # training problems per round
    keep: int = 2  # distinct verified answers kept per problem
    # SFT conversations mixed in per kept answer, and steps per round: 150 steps with 1 a round
    # cost one-digit sums 4.5 points by round 3; 60 with 4 kept every task within 1 point; 800
    # problems and 120 steps (the same ~1.3 passes over twice the data) gained more than 400
    # and 60 and lost less (+5.7 against +2.2 points; docs/system2.md)
    replay: float = 4.0
    demos: int = 0  # solver-written answers added to round 1 (a format the model never saw)
    steps: int = 120
    # > 0: each round's steps follow its data instead, this many passes over its packed rows
    # (countdown's rounds kept 53-119 answers where arithmetic's keep ~770)
    epochs: float = 0.0
    lr: float = 3e-4  # a tenth of SFT's: each round nudges a finished assistant
    heldout: int = 200  # held-out problems sampled k times per round (pass@1, pass@k)
    # held-out problems answered greedily per round, 0 = every one (arithmetic 1,195: the
    # change from round 0, paired on them, is +-2 points where 200 alone give +-6)
    greedy_heldout: int = 0
    assistant_items: int = 3600  # held-out assistant questions asked per round (all: 2,502)
    temperature: float = 0.8
    seed: int = 0


def hinted(p: Prompt, env: Environment) -> list[dict]:
    messages = [dict(m) for m in p.messages]
    messages[-1]["content"] += f" (Hint: {env.hint(p)}.)"
    return messages


def broken(text: str, finish: str) -> bool:
    """An answer outside the format: a tool call, no number at all, or cut off."""
    return finish != "stop" or "<tool_call>" in text or extract_number(text) is None


def collect(lm: LocalModel, problems: list[Prompt], opts: ImproveOptions) -> tuple[list, dict]:
    """(kept conversations, counts) from sampling every problem `opts.samples` times, then the
    unsolved ones again with the answer as a hint."""
    cfg = Think(temperature=opts.temperature, seed=opts.seed, max_new_tokens=64)
    params, k, env = sampling(lm.tok, cfg, greedy=False), opts.samples, ENVIRONMENTS[opts.env]
    counts = {"problems": len(problems), "solved": 0, "rationalized": 0, "format_rejected": 0,
              "kept": 0}
    found: list[list[str]] = [[] for _ in problems]
    for attempt in ("solved", "rationalized"):
        todo = [i for i, f in enumerate(found) if not f]
        asked = [problems[i].messages if attempt == "solved" else hinted(problems[i], env)
                 for i in todo]
        outs = complete_all(lm, [prompt_ids(lm.tok, m) for m in asked for _ in range(k)], params)
        for j, i in enumerate(todo):
            for c in outs[j * k:(j + 1) * k]:
                text = content(c.text)
                if broken(c.text, c.finish):
                    counts["format_rejected"] += 1
                elif verify(problems[i], text) >= 1.0 and text not in found[i]:
                    found[i].append(text)
            counts[attempt] += bool(found[i])
    kept = [{"messages": p.messages + [{"role": "assistant", "content": text}],
             "task": "improve"}  # always trained on the question without the hint
            for p, texts in zip(problems, found) for text in texts[:opts.keep]]
    counts["kept"] = len(kept)
    return kept, counts


def demonstrations(problems: list[Prompt], opts: ImproveOptions) -> list[dict]:
    """A solver's answers to `problems`, as conversations to finetune on."""
    env = ENVIRONMENTS[opts.env]
    return [{"messages": p.messages + [{"role": "assistant", "content": env.demonstrate(p)}],
             "task": "demonstration"} for p in problems]


def complete_all(lm: LocalModel, prompts: list, params, chunk: int = 512) -> list:
    """Completions of every prompt, `chunk` sequences to a batched decode."""
    return [c for s in range(0, len(prompts), chunk)
            for c in lm.complete(prompts[s:s + chunk], params)]


def evaluate(model_dir: Path, opts: ImproveOptions, heldout: list[Prompt],
             assistant_heldout: list, out: Path, r: int) -> dict:
    """Round r's environment held-out accuracy (its held-out check: greedy on
    `opts.greedy_heldout` problems, pass@1 and pass@k on `opts.heldout`) and every held-out
    assistant task. The answers go to OUT/round-R-env.json (the environment's greedy ones) and
    OUT/round-R-assistant.json; each change from round 0 is paired on the same questions."""
    model, tok = checkpoint.load_model(model_dir).eval(), tokenizers_.load(model_dir)
    lm = LocalModel(model, tok)
    cfg = Think(temperature=opts.temperature, seed=opts.seed, max_new_tokens=64)
    right = ENVIRONMENTS[opts.env].heldout_right
    greedy_set = [heldout[i] for i in spread(len(heldout), opts.greedy_heldout or len(heldout))]
    firsts = complete_all(lm, [prompt_ids(tok, p.messages) for p in greedy_set],
                          sampling(tok, cfg, greedy=True))
    graded = [{"question": p.messages[-1]["content"], "right": right(p, content(c.text))}
              for p, c in zip(greedy_set, firsts)]
    sampled = [heldout[i] for i in spread(len(heldout), opts.heldout)]
    samples = complete_all(lm, [prompt_ids(tok, p.messages) for p in sampled
                                for _ in range(opts.samples)], sampling(tok, cfg, greedy=False))
    sampled_ok = any_ok = 0
    for i, p in enumerate(sampled):
        hits = [right(p, content(c.text))
                for c in samples[i * opts.samples:(i + 1) * opts.samples]]
        sampled_ok += sum(hits)
        any_ok += any(hits)
    n, greedy_ok, m = len(graded), sum(g["right"] for g in graded), len(sampled)
    (out / f"round-{r}-env.json").write_text(json.dumps(graded))
    asked = assistant_tasks.evaluate(model, tok, assistant_heldout, opts.assistant_items)
    (out / f"round-{r}-assistant.json").write_text(json.dumps(asked["items"]))
    start = out / "round-0-assistant.json"  # absent in a run begun before it was kept
    tasks, changes = asked["summary"], paired.task_changes(
        json.loads(start.read_text()), asked["items"]) if start.exists() else {}
    return {"env_greedy": greedy_ok / n, "env_greedy_ci": list(wilson(greedy_ok, n)),
            "env_n": n, **(env_change(out / "round-0-env.json", graded) if r else {}),
            "env_pass@1": sampled_ok / (m * opts.samples),
            f"env_pass@{opts.samples}": any_ok / m, "env_pass_n": m,
            "tasks": {k: v for k, v in tasks.items() if k.endswith(("_acc", "_n"))},
            "changes": changes}


def env_change(start: Path, graded: list[dict]) -> dict:
    """The environment's greedy accuracy (`graded`) now minus round 0's (kept in `start`),
    paired on the problems both answered (none in a run begun before answers were kept)."""
    before = {g["question"]: g["right"] for g in json.loads(start.read_text())} \
        if start.exists() else {}
    pairs = [(float(before[g["question"]]), float(g["right"])) for g in graded
             if g["question"] in before]
    if not pairs:
        return {}
    change = sum(a - b for b, a in pairs) / len(pairs)
    return {"env_change": change, "env_change_ci": list(paired.paired_change(pairs)),
            "env_change_n": len(pairs)}


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def pretraining_text(cfg: RunConfig, start: Path) -> str:
    """sft.text_data for every round: the starting model's pretraining shards (RUN/data beside
    an SFT model) named outright, since a round's parent is the previous round, with no shards
    beside it; empty when there are none to mix in (each round then says so)."""
    if not cfg.sft.text_rows or cfg.sft.text_data:
        return cfg.sft.text_data
    found = text_mix.text_data_dir("", start)
    return "" if text_mix.text_data_problem(found, start) else str(found)


def run(cfg: RunConfig, model_dir: str | Path, out: str | Path, opts: ImproveOptions,
        log: Callable[[str], None] = print) -> list[dict]:
    if opts.env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {opts.env!r}; one of {', '.join(ENVIRONMENTS)}")
    if min(opts.rounds, opts.samples, opts.problems, opts.steps, opts.heldout, opts.keep) < 1:
        raise ValueError("--rounds, --samples, --problems, --steps, --heldout and --keep must "
                         "be >= 1")
    if min(opts.demos, opts.replay, opts.greedy_heldout, opts.epochs) < 0:
        raise ValueError("--demos, --replay, --greedy-heldout and --epochs must be >= 0")
    train, heldout_all = ENVIRONMENTS[opts.env].problems()
    replay_pool, assistant_heldout = assistant_dataset()  # built once, read every round
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rounds.jsonl"
    rows = read_rows(rows_path)
    parent = Path(model_dir)
    text_data = pretraining_text(cfg, parent)
    if not rows:
        log(f"improve: round 0 (the starting model {parent}): evaluating")
        row = evaluate(parent, opts, heldout_all, assistant_heldout, out, 0)
        rows.append({"round": 0, "checkpoint": str(parent), **row})
        append_row(rows_path, rows[-1])
        log(f"improve: round 0: {describe(rows[-1])}")
    for r in range(1, opts.rounds + 1):
        ckpt = out / f"round-{r}"
        done = next((row for row in rows if row["round"] == r), None)
        if done and checkpoint.read_info(ckpt).get("final"):
            log(f"improve: round {r} is done: {describe(done)}")
            parent = ckpt
            continue
        data = out / f"round-{r}.jsonl"
        counts = {}
        if not data.exists():
            rng = random.Random(f"{opts.seed}:{r}")
            problems = rng.sample(train, min(opts.problems, len(train)))
            model, tok = checkpoint.load_model(parent).eval(), tokenizers_.load(parent)
            kept, counts = collect(LocalModel(model, tok), problems, opts)
            if r == 1 and opts.demos:
                kept += demonstrations(rng.sample(train, min(opts.demos, len(train))), opts)
                counts["demonstrations"] = min(opts.demos, len(train))
            if not kept:
                log(f"improve: round {r}: no answer to any of {len(problems)} problems passed "
                    f"the verifier, even with the answer as a hint ({counts}); nothing to "
                    "learn from, so the rounds stop here (--demos N shows the format first)")
                return rows
            replay = rng.sample(replay_pool, min(len(replay_pool), int(len(kept) * opts.replay)))
            lines = kept + [c.to_dict() for c in replay]
            rng.shuffle(lines)
            (out / f"round-{r}-counts.json").write_text(json.dumps(counts))
            tmp = data.with_suffix(".tmp")  # the data file last: its presence means "collected"
            tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
            tmp.replace(data)
            log(f"improve: round {r}: {counts}, +{len(replay)} replayed -> {data}")
        else:
            counts = json.loads((out / f"round-{r}-counts.json").read_text())
        steps = round_steps(cfg, parent, data, opts)
        if opts.epochs:
            log(f"improve: round {r}: {steps} steps ({opts.epochs:g} passes over its data)")
        train_cfg = replace(cfg.sft.train, max_steps=steps, lr=opts.lr, eval_every=0,
                            warmup_steps=min(cfg.sft.train.warmup_steps, steps // 5))
        # OUT is the rounds' run directory: their loss curves go to OUT/metrics.jsonl, not
        # into the preset's run (where a round's SFT would replace the speedrun's SFT curve).
        round_cfg = replace(cfg, runs_dir=str(out.parent), name=out.name,
                            sft=replace(cfg.sft, sources=[str(data)], eval_items=0,
                                        text_data=text_data, train=train_cfg))
        info = checkpoint.read_info(ckpt)
        if not info.get("final"):  # a round stopped while it was evaluated is not trained again
            sft.run(round_cfg, parent, ckpt, resume=bool(info))
        row = {"round": r, "checkpoint": str(ckpt), **counts,
               **evaluate(ckpt, opts, heldout_all, assistant_heldout, out, r)}
        rows.append(row)
        append_row(rows_path, row)
        log(f"improve: round {r}: {describe(row)}")
        parent = ckpt
    return rows


def round_steps(cfg: RunConfig, parent: Path, data: Path, opts: ImproveOptions) -> int:
    """A round's finetuning steps: `opts.steps`, or with `opts.epochs` that many passes over
    the rows its data packs into (as SFT packs them, conversations of the round's file)."""
    if not opts.epochs:
        return opts.steps
    t = cfg.sft.train
    convs, _, _ = split_sources([str(data)], cfg.sft.val_fraction)
    rows = len(sft.pack(tokenizers_.load(parent), convs, t.seq_len, t.seed).x)
    return max(1, math.ceil(opts.epochs * rows / (t.batch_size * t.grad_accum)))


def describe(row: dict) -> str:
    lo, hi = row["env_greedy_ci"]
    tasks = ", ".join(f"{k.removesuffix('_acc')} {v:.3f}" for k, v in row["tasks"].items()
                      if k.endswith("_acc"))
    passk = next(k for k in row if k.startswith("env_pass@") and k != "env_pass@1")
    said = f"held-out greedy {row['env_greedy']:.3f} [{lo:.3f}, {hi:.3f}] (n={row['env_n']})"
    if "env_change" in row:
        clo, chi = row["env_change_ci"]
        said += (f", {100 * row['env_change']:+.1f} points [{100 * clo:+.1f}, {100 * chi:+.1f}]"
                 " from round 0, paired")
    said += (f"; pass@1 {row['env_pass@1']:.3f}, {passk.removeprefix('env_')} {row[passk]:.3f} "
             f"(n={row.get('env_pass_n', row['env_n'])}); tasks: {tasks}")
    if row["round"] and row.get("changes"):
        said += "\n  against round 0, paired: " + paired.describe(row["changes"])
    return said
