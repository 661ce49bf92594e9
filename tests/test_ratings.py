import csv
import functools
import io
import json
import math

import pytest
from conftest import write_jsonl

from llmos.cli import build_parser, main
from llmos.evals import battles as B
from llmos.evals import ratings as R

TRUE = {"alpha": 1150.0, "beta": 1050.0, "gamma": 1000.0, "delta": 900.0}
WIDE = {"alpha": 1200.0, "beta": 1050.0, "gamma": 950.0, "delta": 800.0}


def battle(a, b, winner, **extra):
    return {"model_a": a, "model_b": b, "winner": winner, "anony": True, **extra}


def swapped(b):
    flip = {"model_a": "model_b", "model_b": "model_a"}
    return {**b, "model_a": b["model_b"], "model_b": b["model_a"],
            "winner": flip.get(b["winner"], b["winner"])}



# ---- online Elo ----------------------------------------------------------------------------------


def test_online_elo_by_hand():
    log = [battle("A", "B", "model_a"), battle("A", "B", "tie"), battle("C", "A", "model_a")]
    # 1: A beats B from 1000/1000: expected 1/2 each, K=4 -> A 1002, B 998
    assert R.online_elo(log[:1]) == {"A": 1002.0, "B": 998.0}
    # 2: a tie: A expected 1/(1 + 10^((998 - 1002)/400)) > 1/2, so A loses a little
    e_a = 1 / (1 + 10 ** ((998 - 1002) / 400))
    a2, b2 = 1002 + 4 * (0.5 - e_a), 998 - 4 * (0.5 - e_a)
    # 3: C (new, 1000) beats A
    e_c = 1 / (1 + 10 ** ((a2 - 1000) / 400))
    c3, a3 = 1000 + 4 * (1 - e_c), a2 - 4 * (1 - e_c)
    got = R.online_elo(log)
    assert got["A"] == pytest.approx(a3, abs=1e-12)
    assert got["B"] == pytest.approx(b2, abs=1e-12)
    assert got["C"] == pytest.approx(c3, abs=1e-12)
    assert round(a2, 4) == 1001.9770 and round(b2, 4) == 998.0230  # the numbers, spelled out
    # K, base, scale and init are parameters
    assert R.online_elo(log[:1], k=32, init=1500) == {"A": 1516.0, "B": 1484.0}


# ---- Bradley-Terry -------------------------------------------------------------------------------


def test_bt_two_models_closed_form():
    log = [battle("A", "B", "model_a")] * 30 + [battle("B", "A", "model_a")] * 10
    r = R.bradley_terry(log, reg=0)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(30 / 10), abs=1e-6)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000, abs=1e-9)  # anchored at the mean
    # ties count half a win each way: (30 + 10) / (10 + 10)
    r = R.bradley_terry(log + [battle("A", "B", "tie"), battle("A", "B", "tie (bothbad)")] * 10,
                        reg=0)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(40 / 20), abs=1e-6)
    # the default ridge is negligible at these counts; other units and an anchor model
    assert R.bradley_terry(log)["A"] == pytest.approx(1000 + 200 * math.log10(3), abs=0.01)
    r = R.bradley_terry(log, reg=0, base=math.e, scale=1, init=0, anchor="B")
    assert r["B"] == 0 and r["A"] == pytest.approx(math.log(3), abs=1e-9)


def test_winner_of_every_battle_ranks_first():
    log = ([battle("A", "B", "model_a"), battle("C", "A", "model_b")] * 5
           + [battle("B", "C", "model_a"), battle("B", "C", "model_b"),
              battle("B", "C", "tie")] * 5)
    r = R.bradley_terry(log)
    assert max(r, key=r.get) == "A" and all(math.isfinite(v) for v in r.values())
    rows = R.leaderboard(log, rounds=50)
    assert rows[0]["model"] == "A" and rows[0]["rank"] == 1
    assert (rows[0]["wins"], rows[0]["ties"], rows[0]["losses"]) == (10, 0, 0)


def test_swapping_sides_changes_nothing():
    log = B.synthetic_battles(TRUE, 600, seed=1)
    flipped = [swapped(b) for b in log]
    bt, bt2 = R.bradley_terry(log), R.bradley_terry(flipped)
    assert all(bt[m] == pytest.approx(bt2[m], abs=1e-9) for m in TRUE)
    elo, elo2 = R.online_elo(log), R.online_elo(flipped)
    assert all(elo[m] == pytest.approx(elo2[m], abs=1e-9) for m in TRUE)


def test_bt_recovers_the_true_order():
    r = R.bradley_terry(B.synthetic_battles(TRUE, 4000, seed=2, tie_rate=0.0))
    assert sorted(r, key=r.get, reverse=True) == list(TRUE)
    assert r["alpha"] - r["delta"] == pytest.approx(250, abs=40)


def test_only_ties_means_equal_ratings():
    log = [battle("A", "B", "tie"), battle("B", "C", "tie (bothbad)"), battle("C", "A", "tie")]
    assert all(v == pytest.approx(1000, abs=1e-9) for v in R.bradley_terry(log).values())
    assert R.online_elo(log)["A"] == pytest.approx(1000, abs=1e-3)
    rec = R.record(log)
    assert rec["A"] == {"battles": 2, "wins": 0, "ties": 2, "losses": 0}


# ---- bootstrap and ranks -------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_narrows_with_more_battles():
    small = B.synthetic_battles(TRUE, 400, seed=3)
    big = B.synthetic_battles(TRUE, 4000, seed=3)
    a = R.bootstrap(R.bradley_terry, small, rounds=200, seed=7)
    assert a == R.bootstrap(R.bradley_terry, small, rounds=200, seed=7)
    assert a != R.bootstrap(R.bradley_terry, small, rounds=200, seed=8)
    b = R.bootstrap(R.bradley_terry, big, rounds=200, seed=7)
    for m in TRUE:
        med, lo, hi = a[m]
        assert lo < med < hi
        assert b[m][2] - b[m][1] < 0.6 * (hi - lo)  # ~1/sqrt(10) in theory


def test_bootstrap_fast_path_matches_resampling_battles():
    log = B.synthetic_battles(TRUE, 1500, seed=4)
    fast = R.bootstrap(R.bradley_terry, log, rounds=300, seed=0)
    slow = R.bootstrap(lambda bs: R.bradley_terry(bs), log, rounds=300, seed=0)
    for m in TRUE:
        assert fast[m][0] == pytest.approx(slow[m][0], abs=4)
        w_fast, w_slow = fast[m][2] - fast[m][1], slow[m][2] - slow[m][1]
        assert w_fast == pytest.approx(w_slow, rel=0.25)
    # a partial carries its units and anchor into the fast path
    anchored = R.bootstrap(functools.partial(R.bradley_terry, anchor="gamma"), log, rounds=20)
    assert anchored["gamma"] == (1000.0, 1000.0, 1000.0)
    # any rating function works, online Elo included
    elo = R.bootstrap(R.online_elo, log[:300], rounds=20, seed=0)
    assert set(elo) == set(TRUE)


def test_rank_rule():
    iv = {"A": (1100, 1080, 1120), "B": (1090, 1070, 1110), "C": (1000, 990, 1010),
          "D": (990, 985, 1075)}
    # C: A and B have lower bounds above 1010 -> 3; D overlaps B (1070 < 1075) but not A
    assert R.ranks(iv) == {"A": 1, "B": 1, "C": 3, "D": 2}


# ---- reading and filtering battle files ----------------------------------------------------------


def test_malformed_file_rejected_with_line_numbers(tmp_path, capsys):
    good = json.dumps(battle("A", "B", "model_a"))
    lines = [good, "{not json", json.dumps({"model_a": "A", "model_b": "B", "anony": True}),
             json.dumps(battle("A", "B", "draw")), json.dumps(battle("A", "A", "tie")),
             json.dumps({**battle("A", "B", "tie"), "anony": "yes"}), "",
             json.dumps(battle("B", "A", "tie (bothbad)"))]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(B.BattleFileError) as e:
        B.read_battles(path)
    msg = str(e.value)
    for n in (2, 3, 4, 5, 6):
        assert f"line {n}:" in msg
    assert "line 1:" not in msg and "line 8:" not in msg and "unknown winner 'draw'" in msg
    got, skips = B.read_battles(path, strict=False)
    assert len(got) == 2 and [n for n, _ in skips] == [2, 3, 4, 5, 6]
    with pytest.raises(SystemExit) as ex:
        main(["arena", "leaderboard", str(path)])
    assert ex.value.code == 2
    assert "line 3: missing winner" in capsys.readouterr().err


def test_non_anonymous_votes_ignored_by_default():
    log = [battle("A", "B", "model_a"), {**battle("A", "B", "model_b"), "anony": False}]
    kept, dropped = B.filter_battles(log)
    assert kept == log[:1] and dropped["not_anonymous"] == 1
    assert B.filter_battles(log, all_votes=True)[0] == log


def test_voter_cap():
    log = ([battle("A", "B", "model_a", judge="x")] * 4 + [battle("B", "A", "model_a", judge="x")]
           + [battle("A", "C", "model_a", judge="x")] * 2
           + [battle("A", "B", "model_b", voter="y")] * 2 + [battle("A", "B", "tie")] * 5)
    kept = B.cap_per_voter(log, 3)
    by = [(B.voter_of(b), tuple(sorted((b["model_a"], b["model_b"])))) for b in kept]
    assert by.count(("x", ("A", "B"))) == 3  # the pair is unordered: 5 votes, 3 kept
    assert by.count(("x", ("A", "C"))) == 2 and by.count(("y", ("A", "B"))) == 2
    assert by.count((None, ("A", "B"))) == 5  # votes without a voter id are not capped
    assert kept[:3] == log[:3]  # the first ones
    assert B.filter_battles(log, voter_cap=3)[1]["over_voter_cap"] == 2


def test_identity_reveal_filter():
    def conv(answer, question="who are you?"):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    clean = battle("llmos-d12", "GPT-4", "model_a", conversation_a=conv("Hi."),
                   conversation_b=conv("Hello."))
    own = {**clean, "conversation_b": conv("As gpt-4, I think...")}
    other = {**clean, "conversation_a": conv("Unlike GPT-4, I am small.")}
    asked = {**clean, "conversation_a": conv("Hi.", question="are you llmos-d12?")}
    bare = battle("llmos-d12", "GPT-4", "model_b")
    kept = B.drop_identity_reveals([clean, own, other, asked, bare])
    assert kept == [clean, asked, bare]  # only answers count; the user may say a name


# ---- the command ---------------------------------------------------------------------------------


def test_cli_table_csv_json_png(tmp_path, capsys):
    log = B.synthetic_battles(WIDE, 800, seed=5)
    log.append({**log[0], "anony": False})
    path = write_jsonl(tmp_path / "battles.jsonl", log)
    main(["arena", "leaderboard", str(path), "--bootstrap", "100"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "model", "rating"]
    assert [line.split()[1] for line in lines[1:]] == list(WIDE)
    assert "801 battles read, 800 counted" in err and "1 not anonymous" in err

    main(["arena", "leaderboard", str(path), "--bootstrap", "100", "--format", "csv",
          "--png", str(tmp_path / "ci.png")])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["model"] for r in rows] == list(WIDE) and rows[0]["rank"] == "1"
    assert float(rows[0]["ci_lo"]) < float(rows[0]["rating"]) < float(rows[0]["ci_hi"])
    assert sum(int(r["battles"]) for r in rows) == 2 * 800
    assert (tmp_path / "ci.png").read_bytes()[:4] == b"\x89PNG"

    main(["arena", "leaderboard", str(path), "--bootstrap", "0", "--format", "json",
          "--all-votes"])
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["battles"] for r in rows) == 2 * 801
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and rows[0]["ci_lo"] == rows[0]["rating"]
    assert set(rows[0]) == set(R.COLUMNS)


def test_cli_flags_have_help(tmp_path, capsys):
    arena = build_parser()._subparsers._group_actions[0].choices["arena"]
    lb = arena._subparsers._group_actions[0].choices["leaderboard"]
    for action in lb._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
    path = write_jsonl(tmp_path / "named.jsonl", [{**battle("A", "B", "tie"), "anony": False}])
    with pytest.raises(SystemExit):
        main(["arena", "leaderboard", str(path)])
    assert "no battles left" in capsys.readouterr().err
