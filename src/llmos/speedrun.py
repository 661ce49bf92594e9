"""`llmos speedrun`: every stage on one preset, picking up where a previous run stopped."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.agent import embedding
from llmos.agent.knowledge import KnowledgeBase, print_progress
from llmos.agent.loop import describe_call, engine_stream, respond
from llmos.agent.peers import CheckpointPeer
from llmos.config import RunConfig
from llmos.envs.prompts import BUILTIN_TASKS
from llmos.evals import (
    autoarena,
    behaviour,
    harness,
    knowledge_qa,
    paired,
    redteam_card,
    report,
    system2,
    tasks,
)
from llmos.evals.judges import VerifierJudge
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.think import Think
from llmos.train import dpo, pretrain, reward, rl, sft
from llmos.train.reuse import train_stage

SAMPLE_PROMPTS = ["def ", "import os\n", "class Stack:\n    \"\"\"", "# Return the"]
SAMPLE_QUESTIONS = ["Who are you?", "What is 347 * 29?", "What does `json.dumps` do?",
                    "What does `sorted('banana')` return?"]


class StageTimer:
    """Wall time per stage of this invocation, kept in RUN/timings.json (the report card's
    "Time" table): a stage found already done shows only the seconds it took to notice."""

    def __init__(self, path):
        self.path = path
        self.stages: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t, 1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"stages": self.stages, "total_s": round(
                time.perf_counter() - self.t0, 1)}, indent=1))


def check_installed(cfg: RunConfig) -> None:
    """A package the later stages need is found missing before half an hour of training, not
    after it; every missing one is named at once, with the extra that brings them all."""
    problems = []
    for check in (lambda: tasks.check_installed(cfg.speedrun.eval_tasks),
                  embedding.check_installed):
        try:
            check()
        except ValueError as e:  # TaskError is one
            problems.append(str(e))
    if problems:
        raise ValueError("\n".join(problems)
                         + "\neverything the speedrun needs: pip install 'llmos[speedrun]'")


def run(cfg: RunConfig) -> None:
    check_installed(cfg)
    timer = StageTimer(cfg.run_dir / "timings.json")
    base = cfg.run_dir / "base"
    with timer("scan"):
        scanned = scan_corpus(cfg)
    with timer("pretrain"):
        info = checkpoint.read_info(base)
        if info and not info.get("final"):
            print(f"speedrun: resuming the unfinished pretraining in {base}")
            pretrain.run(cfg, resume=True)
        else:
            try:
                pretrain.run(cfg)
            except pretrain.AlreadyTrained as e:
                print(f"speedrun: {e}")
    if not checkpoint.read_info(base).get("final"):
        print("speedrun: pretraining stopped before the end; run it again to continue")
        return
    with timer("samples"):
        samples = write_samples(cfg, base)
    with timer("sft"):
        assistant = finetune(cfg, base)
    if not checkpoint.read_info(assistant).get("final"):
        print("speedrun: finetuning stopped before the end; run it again to continue")
        return
    with timer("conversations"):
        chats = write_conversations(cfg, assistant)
    tuned = {}
    for name, module in (("reward", reward), ("dpo", dpo)):
        if name == "dpo" and not cfg.dpo.judge:  # DPO vs SFT: pairs the verifier leaves
            cfg.dpo.judge = str(tuned["reward"])  # undecided go to the reward model
        with timer(name):
            out = train_stage(cfg, name, module, assistant)
        if not checkpoint.read_info(out).get("final"):
            print(f"speedrun: {name} stopped before the end; run it again to continue")
            return
        tuned[name] = out
    with timer("rl"):  # practice where a verifier scores, with the SFT mixture replayed
        tuned["rl"] = train_stage(cfg, "rl", rl, assistant)
    if not checkpoint.read_info(tuned["rl"]).get("final"):
        print("speedrun: rl stopped before the end; run it again to continue")
        return
    with timer("eval"):
        evaluate_all(cfg, [base, assistant, tuned["dpo"], tuned["rl"]])
        practised = practice_row(cfg, assistant, tuned["rl"])
    with timer("behaviour"):
        behaved = behaviour_rows([assistant, tuned["dpo"]], cfg.speedrun.behaviour_limit)
    with timer("system2"):
        thinking = system2_row(cfg, assistant)
    with timer("knowledge"):
        looked_up = knowledge_row(cfg, assistant)
        helper = serve_helper(cfg, assistant)
    with timer("redteam"):
        attacked = redteam_row(cfg, assistant)
    with timer("arena"):
        arena(cfg, [base, assistant, tuned["dpo"]])
    with timer("report"):
        card, page = report.write(cfg.run_dir)
    summary(cfg, base, assistant, tuned, practised, behaved, thinking, looked_up, helper,
            attacked, scanned, samples, chats, card, page, timer)


def summary(cfg, base, assistant, tuned, practised, behaved, thinking, looked_up, helper,
            attacked, scanned, samples, chats, card, page, timer) -> None:
    info = checkpoint.read_info(base)
    m = info.get("metrics", {})
    sm = checkpoint.read_info(assistant).get("metrics", {})
    print("\n=== speedrun summary ===")
    print(f"run directory   {cfg.run_dir}")
    print(f"data scan       {scanned}  ({cfg.run_dir / 'scan.json'})")
    print(f"base model      {base}  (step {info.get('step')}, "
          f"{info.get('tokens_seen', 0):,} tokens)")
    print(f"validation      loss {m.get('val_loss', float('nan')):.4f} nats/token, "
          f"{m.get('val_bpb', float('nan')):.4f} bits/byte")
    print(f"assistant       {assistant}  (held-out loss {sm.get('val_loss', float('nan')):.4f})")
    for key, label in HELDOUT_FIGURES:
        if f"heldout_{key}" in sm:
            print(f"  {label:<28}{sm[f'heldout_{key}']:.3f}")
    for name, out in tuned.items():
        tm = checkpoint.read_info(out).get("metrics", {})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in tm.items()
                          if k in STAGE_FIGURES.get(name, ()) and isinstance(v, float))
        print(f"{name:<16}{out}  ({shown})")
    print(f"rl practice     {practised}")
    if kept := kept_knowledge(cfg, [base, assistant, tuned["dpo"], tuned["rl"]]):
        print(f"knowledge kept  {kept}")
    print(f"behaviour       {behaviour_headline(behaved)}")
    print(f"system 2        {system2.headline(thinking)}")
    print(f"knowledge       {knowledge_qa.headline(looked_up)}")
    print(f"stdlib helper   {helper}  (the profile served on loopback, asked through the API;"
          f" stored in {cfg.run_dir / 'llmos.db'} for llmos serve --db)")
    print(f"red team        {redteam_card.headline(attacked)}")
    print(f"                {cfg.run_dir / 'redteam' / 'report.html'}")
    print(f"report card     {card}  and  {page}")
    print(f"loss curve      {cfg.run_dir / 'loss.png'}")
    print(f"samples         {samples}")
    print(f"conversations   {chats}")
    print(f"time            {time.perf_counter() - timer.t0:.0f}s")
    print(f"\nnext: llmos chat --model {assistant}")
    print(f"      llmos serve --model {assistant}   (then open http://127.0.0.1:8000)")


HELDOUT_FIGURES = [
    ("well_formed_turns", "well-formed turns"), ("valid_tool_calls", "valid tool calls"),
    ("arithmetic_acc", "arithmetic (calculator)"),
    ("mental_acc", "mental arithmetic, 48 + 7"),
    ("mental2_acc", "mental arithmetic, 48 + 37"),
    ("python_acc", "python questions"), ("signature_acc", "signatures"),
    ("docstring_acc", "docstring questions"), ("identity_acc", "identity"),
]


STAGE_FIGURES = {  # printed in the summary, from each checkpoint's llmos.json metrics
    "reward": ("val_accuracy", "val_margin"),
    "dpo": ("val_accuracy", "win_rate_vs_parent", "heldout_well_formed_turns"),
    "rl": ("heldout_acc", "heldout_mental2_acc", "heldout_mental_acc"),
}


def finetune(cfg: RunConfig, base):
    """SFT on the base model (LoRA runs keep no optimizer state: they start over)."""
    out = cfg.run_dir / ("sft-lora" if cfg.sft.lora_rank else "sft")
    return train_stage(cfg, "sft", sft, base, out, can_resume=not cfg.sft.lora_rank)


def evaluate_all(cfg: RunConfig, ckpts) -> None:
    """`llmos eval` on every checkpoint with the same tasks, so the report card's columns
    compare."""
    for ckpt in ckpts:
        cached_eval(ckpt, cfg.speedrun.eval_tasks, cfg.speedrun.eval_limit or None)


def cached_eval(ckpt: Path, names: list[str], limit: int | None,
                against: dict | None = None) -> dict:
    """`llmos eval CKPT --tasks NAMES --limit LIMIT` into CKPT/evals/, where the report card
    reads it, with each task's change from `against` (an earlier result of the same questions)
    when given; a result newer than its checkpoint is kept (and compared again if it was
    compared with another model)."""
    out = harness.default_out(ckpt, names, 0, limit)
    if out.exists() and out.stat().st_mtime > (ckpt / "llmos.json").stat().st_mtime:
        print(f"speedrun: {out} is up to date")
        result = json.loads(out.read_text())
        if against is None or (result.get("against") or {}).get("model") == against["model"]:
            return result
    else:
        result = harness.evaluate(ckpt, names, limit=limit)
    if against is not None:  # the answers kept, compared anew
        result["against"] = {"model": against["model"],
                             "changes": paired.result_changes(against, result)}
    harness.write(result, out)
    return result


def practice_row(cfg: RunConfig, assistant: Path, practised: Path) -> str:
    """Did RL make a specialist? The same held-out assistant questions (speedrun.practice_limit,
    spread over every task) asked of the SFT model and of the RL one, each task's change with a
    paired interval: the practised task should rise and no other fall."""
    limit = cfg.speedrun.practice_limit
    before = cached_eval(assistant, ["assistant"], limit)
    after = cached_eval(practised, ["assistant"], limit, against=before)
    tasks = tuple(dict.fromkeys(t for spec in cfg.rl.prompts
                                for t in BUILTIN_TASKS.get(spec, ((),))[0]))
    return paired.headline(after["against"]["changes"], tasks)


def kept_knowledge(cfg: RunConfig, ckpts) -> str:
    """Validation bits per byte of each checkpoint after the first (the base model) next to the
    base's, from the eval step: what post-training kept of pretraining ('' without bpb)."""
    tasks, limit = cfg.speedrun.eval_tasks, cfg.speedrun.eval_limit or None
    shown, first = [], None
    for ckpt in ckpts:
        out = harness.default_out(ckpt, tasks, 0, limit)
        if "bpb" not in tasks or not out.exists():
            continue
        value = json.loads(out.read_text())["results"]["bpb"]["metrics"]["bpb"]
        first = first or value
        ratio = f" ({value / first:.2f}x)" if shown else ""
        shown.append(f"{ckpt.name} {value:.3f}{ratio}")
    return ("validation bits/byte " + ", ".join(shown)) if len(shown) > 1 else ""


def behaviour_rows(ckpts, limit: int) -> dict:
    """The failure rates of each checkpoint's own samples (evals/behaviour.py) in
    CKPT/evals/behaviour-0shot.json, where the report card finds them; kept while newer than
    the checkpoint. Returns {checkpoint name: {kind: {rate, ci, n}}}."""
    found = {}
    for ckpt in ckpts:
        out = harness.default_out(ckpt, ["behaviour"], 0, None)
        kept = json.loads(out.read_text()) if out.exists() and (
            out.stat().st_mtime > (ckpt / "llmos.json").stat().st_mtime) else {}
        if kept.get("limit") == limit:
            print(f"speedrun: {out} is up to date")
            result = kept
        else:
            result = harness.evaluate(ckpt, ["behaviour"], limit=limit)
            harness.write(result, out)
        found[ckpt.name] = result["results"]["behaviour"]["behaviour"]
    return found


def behaviour_headline(found: dict) -> str:
    """The kinds that fired, each checkpoint's rate in order: 'looping 0.025 -> 0.013, ...'."""
    kinds = [k for k in behaviour.KINDS if any((r.get(k) or {}).get("rate") for r in
                                                 found.values())]
    if not kinds:
        return f"no failure detected ({' -> '.join(found)})"
    shown = ", ".join(f"{k} " + " -> ".join(f"{(r.get(k) or {}).get('rate') or 0:.3f}"
                                            for r in found.values()) for k in kinds)
    return f"{shown}  ({' -> '.join(found)}; the other kinds 0)"


def system2_row(cfg: RunConfig, ckpt) -> dict:
    """Greedy against a vote (self-consistency) and against best-of with the verifier, at the
    same budget, on one checkable task, on the assistant: CKPT/evals/think-vote+best-of-TASK.json
    and its plot, kept while newer than the checkpoint."""
    sr = cfg.speedrun
    out = ckpt / "evals" / f"think-vote+best-of-{sr.think_task}.json"
    budgets, limit = [1, sr.think_budget], sr.think_limit or None
    if out.exists() and out.stat().st_mtime > (ckpt / "llmos.json").stat().st_mtime:
        kept = json.loads(out.read_text())
        if (kept.get("budgets"), kept.get("limit")) == (budgets, limit):  # else: asked anew
            print(f"speedrun: {out} is up to date")
            return kept
    result = system2.evaluate(ckpt, [sr.think_task], Think(seed=0), ["vote", "best-of"],
                              budgets, limit, log=lambda m: print(f"system2: {m}"))
    system2.write(result, out)
    return result


def knowledge_row(cfg: RunConfig, ckpt) -> dict:
    """The LLM OS's disk: the standard library (speedrun.knowledge_sources) as knowledge base
    `stdlib` in RUN/llmos.db (only changed sources are read again), then the assistant's
    held-out docstring questions from memory and with search_knowledge over it:
    CKPT/evals/knowledge.json."""
    db = cfg.run_dir / "llmos.db"
    kb = KnowledgeBase.open(str(db), "stdlib", create=True)
    stats = kb.add(cfg.speedrun.knowledge_sources, progress=print_progress)
    if stats["read"]:
        print()
    print(f"speedrun: knowledge base stdlib: {stats['read']} sources read, "
          f"{stats['unchanged']} unchanged, {kb.count()} chunks ({stats['seconds']} s)")
    out = ckpt / "evals" / "knowledge.json"
    limit = cfg.speedrun.knowledge_limit or None
    if (out.exists() and out.stat().st_mtime > (ckpt / "llmos.json").stat().st_mtime
            and not stats["read"]):
        kept = json.loads(out.read_text())
        if kept.get("limit") == limit:
            print(f"speedrun: {out} is up to date")
            return kept
    result = harness.evaluate(ckpt, ["knowledge:stdlib"], limit=limit, db=str(db),
                              log=lambda m: print(f"knowledge: {m}"))
    harness.write(result, out)
    return result


def serve_helper(cfg: RunConfig, ckpt, questions: int = 3):
    """The stdlib helper profile on this run's assistant and knowledge base, served by a real
    server on loopback and asked held-out docstring questions through /v1/chat/completions:
    RUN/knowledge.md, what it searched, read and answered."""
    import dataclasses

    import httpx

    from llmos.agent import profiles
    from llmos.agent.profile_store import ProfileStore
    from llmos.data.builtin.assistant import assistant_dataset
    from llmos.serve.app import create_app
    from llmos.serve.background import run_in_background
    from llmos.serve.served import add_profiles, schedulers

    db = cfg.run_dir / "llmos.db"
    helper = dataclasses.replace(profiles.load("stdlib-helper"), model=str(Path(ckpt).resolve()),
                                 database=str(db.resolve()))
    # Stored in the run's database too, where `llmos serve --db RUN/llmos.db` serves it and its
    # /profiles page edits it; a stored one (perhaps edited) is left as it is.
    store = ProfileStore.open(db)
    if store.get(helper.name) is None:
        store.save(helper)
    models: dict = {}
    add_profiles(models, [helper])
    asked = knowledge_qa.questions(assistant_dataset()[1], questions)
    lines = ["# The stdlib helper, served", "",
             f"`llmos serve --profile stdlib-helper --model {ckpt} --db {db}`, asked held-out "
             "docstring questions through `/v1/chat/completions` (model `stdlib-helper`). "
             f"`llmos serve --db {db}` serves the copy stored in the run's database, which its "
             "`/profiles` page edits:", ""]
    try:
        with run_in_background(create_app(models)) as url:
            for conv in asked:
                question = knowledge_qa.question_of(conv)
                r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
                    "model": "stdlib-helper", "temperature": 0,
                    "messages": [{"role": "user", "content": question}]})
                lines += [f"**user:** {question}", ""]
                if r.status_code != 200:  # shown, not raised: e.g. a context too small
                    lines += [f"(the server answered {r.status_code}: {r.text[:300]})", ""]
                    continue
                message = r.json()["choices"][0]["message"]
                for e in message.get("llmos_tool_events", []):
                    shown = e.get("arguments") if e["type"] == "tool_call" else e.get("content")
                    lines.append(f"> {e['type']} `{e.get('name', '')}`: {shown}")
                lines += ["", f"**stdlib-helper:** {message['content']}", "",
                          f"(docstring: {conv.answer})", ""]
    finally:
        for scheduler in schedulers(models):
            scheduler.close()
    path = cfg.run_dir / "knowledge.md"
    path.write_text("\n".join(lines))
    return path


def scan_corpus(cfg: RunConfig) -> str:
    """The corpus scanned for poisoned documents before pretraining (docs/security.md):
    RUN/scan.json. What it flags is reported, not removed; `--set data.exclude=RUN/scan.json`
    leaves it out."""
    from llmos.data.exclusions import read_exclusions
    from llmos.data.sources import load_corpus
    from llmos.safety import scan

    exclude = read_exclusions(cfg.data.exclude) if cfg.data.exclude else set()
    docs, _ = load_corpus(cfg.data.sources, cfg.data.max_doc_chars, exclude)
    report = scan.scan(docs)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "scan.json").write_text(json.dumps(report, indent=1))
    line = scan.summary(report)
    print(f"speedrun: data scan: {line}")
    return line


def redteam_row(cfg: RunConfig, ckpt) -> dict:
    """A short red-team pass against the assistant, served on loopback: injection through
    each carrier, jailbreaks, leakage, under each defense (docs/security.md):
    RUN/redteam/report.json and report.html."""
    from llmos.agent.policy import load_policy
    from llmos.safety.probe_set import default_probes
    from llmos.safety.redteam import Settings, open_target, run
    from llmos.safety.report import write_reports

    out = cfg.run_dir / "redteam"
    settings = Settings(generations=cfg.speedrun.redteam_generations)
    if (out / "report.json").exists() and (out / "report.json").stat().st_mtime > (
            ckpt / "llmos.json").stat().st_mtime:
        kept = json.loads((out / "report.json").read_text())
        if (kept["settings"]["generations"], kept.get("tasks")) == (
                settings.generations, cfg.speedrun.redteam_tasks):
            print(f"speedrun: {out} is up to date")
            return kept
    policy = load_policy()
    probes = default_probes(policy, seed=0, tasks=cfg.speedrun.redteam_tasks)
    with open_target(str(ckpt)) as target:
        result = run(target, probes, settings, policy)
    result.target, result.tasks = str(ckpt), cfg.speedrun.redteam_tasks
    attacked = write_reports(result, out)
    print(f"speedrun: red team: {len(result.attempts)} attempts in {result.seconds} s -> {out}")
    return attacked


def arena(cfg: RunConfig, ckpts) -> None:
    """Automatic battles between the tuned checkpoints on held-out questions with a reference
    answer, judged by the verifier in both orders; RUN/arena/battles.jsonl feeds the report."""
    out = cfg.run_dir / "arena" / "battles.jsonl"
    if out.exists() and all(out.stat().st_mtime > (c / "llmos.json").stat().st_mtime
                            for c in ckpts):
        print(f"speedrun: {out} is up to date")
        return
    items = [i for i in autoarena.load_prompts("builtin:assistant:heldout") if i.answer]
    contestants = [CheckpointPeer(c.name, c) for c in ckpts]
    battles, _ = autoarena.run(contestants, items[:cfg.speedrun.arena_prompts], VerifierJudge(),
                               out, max_tokens=cfg.speedrun.arena_max_tokens)
    print(f"speedrun: {len(battles)} arena battles judged by the verifier -> {out}")


def write_conversations(cfg: RunConfig, ckpt) -> str:
    """A few questions to the assistant, greedy, tools in the loop; printed and saved."""
    model, tok = checkpoint.load_model(ckpt), tokenizers_.load(ckpt)
    generate = engine_stream(Engine(model))
    params = SamplingParams(max_new_tokens=96, temperature=0.0)
    lines = [f"# Conversations with {ckpt}\n", "greedy decoding, built-in tools on\n"]
    for question in SAMPLE_QUESTIONS:
        shown = [f"user: {question}"]
        for e in respond(generate, tok, [{"role": "user", "content": question}], params):
            if e.kind == "tool_call":
                shown.append(f"  [tool call] {describe_call(e.data)}")
            elif e.kind == "tool_result":
                shown.append(f"  [tool result] {e.text.strip()}")
            elif e.kind == "turn" and e.data.get("content"):
                shown.append(f"assistant: {e.data['content']}")
        text = "\n".join(shown)
        print(f"--- conversation ---\n{text}")
        lines.append(f"```\n{text}\n```\n")
    path = cfg.run_dir / "conversations.md"
    path.write_text("\n".join(lines))
    return str(path)


def write_samples(cfg: RunConfig, ckpt) -> str:
    model = checkpoint.load_model(ckpt)
    tok = tokenizers_.load(ckpt)
    params = SamplingParams(max_new_tokens=96, temperature=0.7, top_p=0.95, seed=0,
                            stop_tokens=[tokenizers_.eot_id(tok)])
    ids = [tok.encode(p, add_special_tokens=False).ids for p in SAMPLE_PROMPTS]
    outs = Engine(model).generate(ids, params)
    path = cfg.run_dir / "samples.md"
    lines = [f"# Samples from {ckpt}\n", f"sampling: {json.dumps(params.__dict__)}\n"]
    for prompt, out in zip(SAMPLE_PROMPTS, outs):
        text = prompt + tok.decode(out)
        print(f"--- sample ---\n{text}")
        lines.append(f"```python\n{text}\n```\n")
    path.write_text("\n".join(lines))
    return str(path)
