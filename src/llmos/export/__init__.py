"""Exports of a checkpoint. `--format run`: the two files, a params file + a numpy-only run.py
(`params.py` writes the first, `run.py` is the second, copied as is)."""
