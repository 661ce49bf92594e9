"""infer/static.py: the fixed-shape decoding step (static KV cache, compiled step) gives the
engine's tokens, for prompts of different lengths in one batch, padded batches included."""

from __future__ import annotations

import pytest
from test_export import make_checkpoint

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.static import StaticEngine

TEXTS = ("The quick brown", "def f(x):\n", "Café 中文 😀 12345")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("static"), "untied")
    tok = tk.load(ckpt)
    return ckpt, [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]


def engine_greedy(ckpt, prompts, **kw):
    model = checkpoint.load_model(ckpt).eval()
    p = SamplingParams(max_new_tokens=40, temperature=0, **kw)
    return [Engine(model).generate([x], p)[0] for x in prompts]


def test_static_steps_give_the_engines_tokens(setup):
    ckpt, prompts = setup
    want = engine_greedy(ckpt, prompts)
    engine = StaticEngine(checkpoint.load_model(ckpt), batch=4, compile=False)
    assert engine.generate(prompts, SamplingParams(max_new_tokens=40, temperature=0)) == want
    # alone in a padded batch, or last of a full one: the same tokens
    assert engine.generate(prompts[1:2], SamplingParams(max_new_tokens=40, temperature=0)) \
        == want[1:2]
    # stop tokens end a row where the engine's end; min_new_tokens holds them back
    stop = want[0][6]
    p = SamplingParams(max_new_tokens=40, temperature=0, stop_tokens=[stop])
    assert engine.generate(prompts, p) == engine_greedy(ckpt, prompts, stop_tokens=[stop])
    p = SamplingParams(max_new_tokens=40, temperature=0, stop_tokens=[stop], min_new_tokens=20)
    assert engine.generate(prompts, p) == engine_greedy(ckpt, prompts, stop_tokens=[stop],
                                                        min_new_tokens=20)
    seeded = SamplingParams(max_new_tokens=20, temperature=1.0, seed=3)
    assert engine.generate(prompts, seeded) == engine.generate(prompts, seeded)
    with pytest.raises(ValueError, match="5 prompts for a static batch of 4"):
        engine.generate(prompts + prompts[:2], seeded)
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[]], seeded)


@pytest.mark.slow
def test_the_compiled_step_gives_the_same_tokens(setup):
    ckpt, prompts = setup
    engine = StaticEngine(checkpoint.load_model(ckpt), batch=3, max_len=64, compile=True)
    got = engine.generate(prompts, SamplingParams(max_new_tokens=40, temperature=0))
    assert got == engine_greedy(ckpt, prompts)
