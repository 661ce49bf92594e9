"""Win rate by judge: a tuned checkpoint against its parent, the same pairs decided by several
judges, so that how much the win rate owes to the judge is in plain view.

A win rate against the parent measures the judge as much as the model: one DPO checkpoint of
cpu-tiny scored 40.0, 56.0 and 62.0% under three reward models of the same parent. Here both
models answer the held-out questions once (as `llmos dpo`'s comparison does, evals/versus.py)
and every judge decides the same pairs (versus.decide):

    verifier   the verifier alone: one answer right and the other wrong decides the pair; both
               right or both wrong is a tie. The headline is this judge, where it decides.
    PATH       the verifier first, then the reward model at PATH where the verifier calls the
               answers equal (versus.py's judge).

Per judge: wins, losses, ties, the win rate of the decided pairs with a 95% bootstrap interval
resampling questions (intervals.cluster_bootstrap), and how many of the reward model's calls
were between two wrong answers. Across the reward-model judges: the spread of their win rates
(min, max, max - min). With seeds, both models also answer by sampling as `llmos chat` does
(temperature 0.7, top-p 0.95), once per seed; each judge's win rate per seed and their spread
over seeds show what moves with sampling alone, and a pooled rate resamples whole questions.

    llmos eval runs/cpu-tiny/dpo --versus runs/cpu-tiny/sft \\
        --judges verifier,runs/cpu-tiny/reward --seeds 3 --out judges.json
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.data.conversations import read_conversations
from llmos.data.records import Conversation, prompt_of
from llmos.evals import assistant_tasks, text_table, versus
from llmos.evals.intervals import cluster_bootstrap
from llmos.evals.own_samples import MAX_NEW_TOKENS, TEMPERATURE, TOP_P
from llmos.infer.engine import SamplingParams
from llmos.reward_model import load_reward_model

VERIFIER = "verifier"
KIND = "judge_spread"  # what the results file says it is (the report card looks for it)
ROUNDS = 2000  # bootstrap resamples
HEADLINE = ("the verifier alone where it decides: one answer right and the other wrong; pairs "
            "with both answers right or both wrong are ties, left out")


# ---- judges ----------------------------------------------------------------------------------


def parse_judges(spec: str) -> list[str]:
    """'verifier,PATH,reward:PATH2' -> ['verifier', 'PATH', 'PATH2']: the verifier first (added
    when not named: it is the headline), then each reward-model checkpoint once."""
    names = [s.strip().removeprefix("reward:") for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--judges is empty: give verifier and reward-model checkpoint "
                         "directories, comma-separated")
    seen: list[str] = []
    for name in names:
        if name in seen:
            raise ValueError(f"--judges names {name} twice")
        seen.append(name)
    return [VERIFIER] + [n for n in seen if n != VERIFIER]


def load_judges(paths: list[str], child: Path, log=print) -> tuple[dict, dict]:
    """(path -> (reward model, its tokenizer), path -> whether its tokenizer is the child's).
    Everything is checked before any answer is made: a path that is not a reward checkpoint is
    an error naming it."""
    loaded, tokenizers = {}, {}
    mine = (child / "tokenizer.json").read_bytes() if (child / "tokenizer.json").exists() else b""
    for path in paths:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(f"judge {path}: no such directory (a judge is `verifier` or "
                                    "a reward-model checkpoint that `llmos reward` wrote)")
        try:
            loaded[path] = load_reward_model(d)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"judge {path}: {e}") from e
        same = (d / "tokenizer.json").read_bytes() == mine
        tokenizers[path] = "same as the child's" if same else "differs from the child's"
        if not same:  # it still reads the answers' text, through its own tokenizer
            log(f"judge {path}: its tokenizer differs from the child's; it scores the answers' "
                "text through its own")
    return loaded, tokenizers


def rewards_of(judges: dict, prompts: list[list[dict]], mine: list[dict], theirs: list[dict]
               ) -> dict[str, list[tuple[float, float]]]:
    """judge name -> (child's reward, parent's reward) per question, from each reward model in
    `judges` (name -> (model, tok)), as versus.paired_rewards scores them."""
    return {name: versus.paired_rewards(judge, prompts, mine, theirs)
            for name, judge in judges.items()}


def judge_pairs(mine: list[dict], theirs: list[dict],
                rewards: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """Every pair (the child's and the parent's record for one question) decided by the
    verifier alone and by each reward-model judge in `rewards` (rewards_of)."""
    pairs = []
    for i, (c, p) in enumerate(zip(mine, theirs, strict=True)):
        decided = {VERIFIER: versus.decide(c, p)}
        decided |= {name: versus.decide(c, p, r[i]) for name, r in rewards.items()}
        pairs.append({"question": i, "task": c["task"], "subject": c["subject"],
                      "child_correct": versus.correct(c), "parent_correct": versus.correct(p),
                      "outcome": {n: o for n, (o, _) in decided.items()},
                      "by": {n: by for n, (_, by) in decided.items()},
                      "rewards": {n: list(r[i]) for n, r in rewards.items()},
                      "child": c["answer"], "parent": p["answer"]})
    return pairs


# ---- numbers ---------------------------------------------------------------------------------


def judge_stats(pairs: list[dict], judge: str, rounds: int = ROUNDS, seed: int = 0) -> dict:
    """One judge on one set of pairs: wins, losses, ties, the win rate of the decided pairs
    with its 95% bootstrap interval over the decided questions (None and [0, 1] with none),
    and what decided them; `reward_both_wrong` counts the reward model's calls between two
    wrong answers (its preference between two made-up docstrings says little)."""
    outcomes = [p["outcome"][judge] for p in pairs]
    wins, losses = outcomes.count("win"), outcomes.count("loss")
    decided = wins + losses
    lo, hi = cluster_bootstrap([[o == "win"] for o in outcomes if o != "tie"], rounds, seed)

    def tally(keep) -> dict:
        sub = [p["outcome"][judge] for p in pairs if keep(p)]
        return {"wins": sub.count("win"), "losses": sub.count("loss")}

    return {"wins": wins, "losses": losses, "ties": len(outcomes) - decided, "decided": decided,
            "win_rate": wins / decided if decided else None, "ci": [lo, hi],
            "by_verifier": tally(lambda p: p["by"][judge] == "verifier"),
            "by_reward": tally(lambda p: p["by"][judge] == "reward"),
            "reward_both_wrong": tally(lambda p: p["by"][judge] == "reward"
                                       and not p["child_correct"] and not p["parent_correct"])}


def spread(rates: dict[str, float | None]) -> dict | None:
    """min, max and max - min of the known rates (name -> rate), naming the lowest and the
    highest; None when no rate is known."""
    known = {k: v for k, v in rates.items() if v is not None}
    if not known:
        return None
    low, high = min(known, key=known.get), max(known, key=known.get)
    return {"min": known[low], "max": known[high], "spread": known[high] - known[low],
            "lowest": low, "highest": high, "n": len(known)}


def agreement(pairs: list[dict], judges: list[str]) -> dict:
    """Of the pairs that every reward-model judge in `judges` decided by its reward, how many
    they all called the same way: close win rates can hide judges that split the same pairs
    differently."""
    rm = [j for j in judges if j != VERIFIER]
    common = [p for p in pairs if rm and all(p["by"][j] == "reward" for j in rm)]
    return {"judges": len(rm), "decided_by_all": len(common),
            "unanimous": sum(len({p["outcome"][j] for j in rm}) == 1 for p in common)}


def setting_result(pairs: list[dict], judges: list[str], rounds: int = ROUNDS) -> dict:
    """Every judge's numbers on one set of pairs (greedy, or one seed's samples), the spread of
    the reward-model judges' win rates, their agreement, and how often each model was right."""
    stats = {j: judge_stats(pairs, j, rounds) for j in judges}
    return {"judges": stats,
            "reward_spread": spread({j: s["win_rate"] for j, s in stats.items() if j != VERIFIER}),
            "reward_agreement": agreement(pairs, judges),
            "correct": {"questions": len(pairs), "child": sum(p["child_correct"] for p in pairs),
                        "parent": sum(p["parent_correct"] for p in pairs)}}


def over_seeds(per_seed: dict[str, list[dict]], judges: list[str], rounds: int = ROUNDS) -> dict:
    """Per judge over the seeds' pairs (seed name -> pairs, the same questions in each): its
    win rate per seed, their spread, and the pooled win rate of every seed's decided pairs with
    a bootstrap interval resampling whole questions (a question's seeds are not independent)."""
    out = {}
    for j in judges:
        rates = {}
        for name, pairs in per_seed.items():
            o = [p["outcome"][j] for p in pairs]
            decided = o.count("win") + o.count("loss")
            rates[name] = o.count("win") / decided if decided else None
        questions = len(next(iter(per_seed.values()), []))
        groups = [[pairs[i]["outcome"][j] == "win" for pairs in per_seed.values()
                   if pairs[i]["outcome"][j] != "tie"] for i in range(questions)]
        wins, decided = sum(map(sum, groups)), sum(map(len, groups))
        out[j] = {"win_rates": rates, "spread": spread(rates),
                  "pooled": {"wins": wins, "losses": decided - wins, "decided": decided,
                             "win_rate": wins / decided if decided else None,
                             "ci": list(cluster_bootstrap(groups, rounds))}}
    return out


# ---- the run ---------------------------------------------------------------------------------


def sampling_for(seed: int | None) -> SamplingParams | None:
    """Greedy for None, else sampled as `llmos chat` samples (own_samples.py) with `seed`."""
    if seed is None:
        return None
    return SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_p=TOP_P,
                          seed=seed)


def answers(model, tok, heldout: list[Conversation], limit: int, seed: int | None) -> list[dict]:
    """The assistant evaluation's records of the planned questions, in the plan's order."""
    items = assistant_tasks.evaluate(model, tok, heldout, limit,
                                     sampling=sampling_for(seed))["items"]
    asked = [(c.task, c.subject) for c in assistant_tasks.plan(heldout, limit)]
    if [(r["task"], r["subject"]) for r in items] != asked:
        raise RuntimeError("the assistant evaluation answered other questions than it planned")
    return items


def evaluate(child: str | Path, parent: str | Path, judges: list[str], limit: int = 180,
             seeds: list[int] | None = None, heldout: list[Conversation] | None = None,
             rounds: int = ROUNDS, log=print) -> dict:
    """Answer up to `limit` held-out questions with the child and the parent, greedily and, per
    seed in `seeds`, by sampling; every judge in `judges` ("verifier" and reward-model
    directories, parse_judges) decides every pair. Returns the results (every pair included)."""
    t0 = time.perf_counter()
    child, parent = Path(child), Path(parent)
    judges = parse_judges(",".join(judges))
    for d, what in ((child, "child"), (parent, "parent")):
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"{what} {d} is not a checkpoint directory (no config.json)")
    reward_judges, tokenizers = load_judges(judges[1:], child, log)
    heldout = heldout if heldout is not None else read_conversations([versus.HELDOUT])[0]
    prompts = [prompt_of(c) for c in assistant_tasks.plan(heldout, limit)]
    models = [(checkpoint.load_model(d).eval(), tokenizers_.load(d)) for d in (child, parent)]
    settings: dict[str, dict] = {}
    pairs: dict[str, list[dict]] = {}
    for seed in [None] + list(seeds or []):
        name = "greedy" if seed is None else f"seed {seed}"
        t = time.perf_counter()
        mine, theirs = (answers(m, tok, heldout, limit, seed) for m, tok in models)
        pairs[name] = judge_pairs(mine, theirs,
                                  rewards_of(reward_judges, prompts, mine, theirs))
        settings[name] = setting_result(pairs[name], judges, rounds)
        v = settings[name]["judges"][VERIFIER]
        log(f"judges: {name}: {len(mine)} pairs answered and judged in "
            f"{time.perf_counter() - t:.0f} s; verifier {v['wins']}-{v['losses']}")
    greedy = settings.pop("greedy")
    head = greedy["judges"][VERIFIER]
    return {
        "kind": KIND, "child": str(child), "parent": str(parent), "judges": judges,
        "tokenizers": tokenizers, "limit": limit, "questions": len(prompts),
        "seeds": list(seeds or []),
        "sampling": {"greedy": True, "seeded": {"temperature": TEMPERATURE, "top_p": TOP_P,
                                                "max_new_tokens": MAX_NEW_TOKENS}},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "headline": {"judge": VERIFIER, "setting": "greedy", "about": HEADLINE,
                     "win_rate": head["win_rate"], "ci": head["ci"], "decided": head["decided"],
                     "questions": len(prompts)},
        "greedy": greedy, "per_seed": settings,
        "over_seeds": over_seeds({k: v for k, v in pairs.items() if k != "greedy"}, judges,
                                 rounds) if seeds else {},
        "pairs": pairs,
    }


def default_out(child: str | Path, limit: int, seeds: int) -> Path:
    return Path(child) / "evals" / f"versus-judges-limit{limit}-seeds{seeds}.json"


# ---- tables ----------------------------------------------------------------------------------


def pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def rate_ci(s: dict) -> str:
    """'56.0% [41.2, 70.1] of 25' (percent, interval, decided pairs)."""
    if s["win_rate"] is None:
        return f"- of {s['decided']}"
    return (f"{100 * s['win_rate']:.1f}% [{100 * s['ci'][0]:.1f}, {100 * s['ci'][1]:.1f}] "
            f"of {s['decided']}")


def label(judge: str) -> str:
    return "verifier alone (headline)" if judge == VERIFIER else f"verifier + {judge}"


def spread_line(setting: dict) -> str:
    s, a = setting["reward_spread"], setting.get("reward_agreement")
    if s is None or s["n"] < 2:
        return "reward-model judges: fewer than two with decided pairs, no spread"
    agreed = (f"; they agree on {a['unanimous']} of the {a['decided_by_all']} pairs all "
              f"{a['judges']} decided by reward" if a else "")
    return (f"reward-model judges: win rate {pct(s['min'])} to {pct(s['max'])}, spread "
            f"{100 * s['spread']:.1f} points{agreed}")


def format_table(r: dict) -> str:
    g = r["greedy"]
    c = g["correct"]
    lines = [f"{r['child']} against {r['parent']}: {r['questions']} held-out questions, greedy "
             f"(child right on {c['child']}, parent on {c['parent']})"]
    rows = [["judge", "won", "lost", "tied", "win rate [95% interval] of decided",
             "reward calls", "of them two wrong"]]
    for j, s in g["judges"].items():
        calls = s["by_reward"]["wins"] + s["by_reward"]["losses"]
        both = s["reward_both_wrong"]["wins"] + s["reward_both_wrong"]["losses"]
        rows.append([label(j), str(s["wins"]), str(s["losses"]), str(s["ties"]), rate_ci(s),
                     "-" if j == VERIFIER else str(calls), "-" if j == VERIFIER else str(both)])
    lines += [text_table.aligned(rows), spread_line(g)]
    if r["over_seeds"]:
        seeds = list(r["per_seed"])
        lines += ["", f"sampled (temperature {TEMPERATURE}, top-p {TOP_P}), win rate per seed:"]
        rows = [["judge"] + seeds + ["spread over seeds", "pooled [95% interval] of decided"]]
        for j, o in r["over_seeds"].items():
            sp = o["spread"]
            rows.append([label(j)] + [pct(o["win_rates"][s]) for s in seeds]
                        + ["-" if sp is None else f"{100 * sp['spread']:.1f} points",
                           rate_ci(o["pooled"])])
        lines.append(text_table.aligned(rows))
        lines += [f"{s}: " + spread_line(r["per_seed"][s]) for s in seeds]
    h = r["headline"]
    lines += ["", f"headline, {h['about']}:", f"  {rate_ci(h)} decided pairs (greedy) of "
              f"{h['questions']} questions"]
    return "\n".join(lines)


def newest(evals: Path) -> dict | None:
    """The newest judge-spread result in a checkpoint's evals/ folder, or None."""
    found = None
    for path in sorted(evals.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("kind") == KIND
                and (found is None or data.get("created", "") >= found.get("created", ""))):
            found = data
    return found


def card_section(run: Path, names: list[str], table) -> str:
    """The report card's "Win rate by judge" table: a row per judge of every checkpoint in
    `names` with a result in its evals/; "" when there is none."""
    rows, notes = [], []
    for name in names:
        r = newest(run / name / "evals")
        if r is None:
            continue
        for k, (j, s) in enumerate(r["greedy"]["judges"].items()):
            o = r["over_seeds"].get(j)
            seeds = ("-" if not o or o["spread"] is None else
                     f"{pct(o['spread']['min'])} - {pct(o['spread']['max'])}")
            rows.append([name if k == 0 else "", Path(r["parent"]).name if k == 0 else "",
                         label(j), f"{s['wins']}/{s['ties']}/{s['losses']}", rate_ci(s), seeds])
        notes.append(f"{name}: {spread_line(r['greedy'])}"
                     f" ({r['questions']} questions, seeds: {len(r['seeds'])}).")
    if not rows:
        return ""
    about = ("Each judge decides the same pairs of answers (greedy, tools in the loop); the win "
             "rate counts decided pairs, with a 95% interval resampling questions. The headline "
             f"is {HEADLINE}. The last column is the range of each judge's win rate over "
             "the seeds, the answers sampled (temperature 0.7, top-p 0.95) once per seed. "
             "docs/comparisons.md, "
             "\"Win rate by judge\".")
    return "\n".join([table(["checkpoint", "parent", "judge", "won/tied/lost",
                             "win rate [95% interval] of decided", "over seeds"], rows), "",
                      " ".join(notes), "", about])
