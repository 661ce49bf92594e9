"""The `llmos` command: one sub-command per stage. Thin: parse, call, print.

Each command is a pair of functions side by side in one of this package's modules: `add_NAME`
(its parser) and `cmd_NAME` (what it does, importing the stage it runs only when it runs, so
that `llmos --help` does not load PyTorch). A new command costs those two functions and a line
in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys

from llmos.cli import agent_commands as A
from llmos.cli import eval_commands as E
from llmos.cli import experiment_commands as X
from llmos.cli import model_commands as M
from llmos.cli import safety_commands as R
from llmos.cli import scaling_commands as S
from llmos.cli import train_commands as T

# The order `llmos --help` lists them in: the pipeline's.
COMMANDS = [T.add_config, T.add_data, T.add_tokenizer, T.add_pretrain, M.add_generate,
            T.add_sft, T.add_rl, T.add_improve, T.add_reward, T.add_dpo, M.add_chat,
            M.add_serve, A.add_knowledge, A.add_memory, A.add_profile, M.add_import, M.add_export,
            T.add_speedrun, E.add_report, E.add_arena, E.add_label, E.add_eval, R.add_redteam,
            S.add_scaling, X.add_experiment]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmos", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="llmos: make an LLM end to end: data -> pretrain -> sft -> reward, dpo, rl "
        "-> eval, arena, report -> chat, serve, export.",
        epilog="Quick start: `llmos speedrun` (cpu-tiny preset, 25-40 minutes on 2 cores).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"llmos {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
