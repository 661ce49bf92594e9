import pytest
import torch

from llmos.config import ModelConfig
from llmos.infer.engine import Engine, SamplingParams, TextStream, greedy_reference, sample_next
from llmos.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                max_seq_len=128))
    m.reset_parameters(std=0.3)  # large weights: varied greedy output, not one repeated token
    return m.eval()


PROMPTS = [[5, 17, 42, 7, 99], [3], [250, 251, 252, 1, 2, 3, 4, 5, 6, 7, 8]]


def test_greedy_matches_no_cache_reference(model):
    out = Engine(model).generate(PROMPTS, SamplingParams(max_new_tokens=40, temperature=0))
    for prompt, got in zip(PROMPTS, out):
        want = greedy_reference(model, prompt, 40)
        assert got == want
        assert len(set(got)) > 3  # a meaningful comparison, not a constant sequence


def test_batched_equals_one_at_a_time(model):
    p = SamplingParams(max_new_tokens=20, temperature=0)
    together = Engine(model).generate(PROMPTS, p)
    alone = [Engine(model).generate([x], p)[0] for x in PROMPTS]
    assert together == alone


def test_stop_tokens_and_budget(model):
    ref = greedy_reference(model, PROMPTS[0], 30)
    stop = ref[10]
    out = Engine(model).generate([PROMPTS[0]], SamplingParams(30, 0, stop_tokens=[stop]))[0]
    assert out == ref[:ref.index(stop)]
    # The context limit caps generation instead of failing.
    long = Engine(model).generate([[1] * 120], SamplingParams(50, 0))[0]
    assert len(long) == 128 - 120


def test_seeded_sampling_is_reproducible_and_varied(model):
    p = SamplingParams(max_new_tokens=30, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    a = Engine(model).generate(PROMPTS, p)
    b = Engine(model).generate(PROMPTS, p)
    assert a == b
    c = Engine(model).generate(PROMPTS, SamplingParams(30, 1.0, top_p=0.9, top_k=50, seed=8))
    assert a != c


def test_top_k_and_top_p_restrict_choices():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingParams(temperature=1, top_k=2), gen))
             for _ in range(200)}
    assert picks == {0, 1}
    # probabilities ~ [.72, .26, .01, ...]: top_p 0.5 keeps only the first token
    picks = {int(sample_next(logits, SamplingParams(temperature=1, top_p=0.5), gen))
             for _ in range(50)}
    assert picks == {0}


def test_stream_yields_tokens_as_generated(model):
    steps = list(Engine(model).stream(PROMPTS[:2], SamplingParams(5, 0)))
    assert len(steps) == 5 and all(len(s) == 2 for s in steps)


def test_text_stream_holds_back_partial_utf8():
    from llmos import tokenizer as tk

    tok = tk.train_bpe(["plain ascii text only " * 20], 270)
    ids = tok.encode("héllo → ok", add_special_tokens=False).ids
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == "héllo → ok"
    assert all("\ufffd" not in p for p in pieces)


def test_decode_layout_keeps_the_numbers_and_the_saved_checkpoint(tmp_path):
    """use_decode_layout (which the engine applies) changes only how weights sit in memory."""
    from safetensors.torch import load_file, save_file

    from llmos import checkpoint
    from llmos.config import ModelConfig
    from llmos.model import Transformer, use_decode_layout

    torch.manual_seed(0)
    for tied in (True, False):
        model = Transformer(ModelConfig(vocab_size=300, dim=48, n_layers=2, n_heads=4,
                                        n_kv_heads=2, max_seq_len=32, tie_embeddings=tied))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ids = torch.randint(0, 300, (2, 12))
        with torch.no_grad():
            want = model(ids)
            use_decode_layout(model)
            got = model(ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert model.lm_head.weight.stride() == (1, 300)  # [in, out] in memory
        assert model.layers[0].attn.wqkv.weight.stride(0) == 1
        assert (model.embed.weight.stride(0) == 1) == tied  # untied: a plain row lookup
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        path = tmp_path / f"tied{tied}.safetensors"  # what checkpoint.save writes
        save_file(checkpoint.to_hf_state_dict(model), str(path))
        assert load_file(str(path)).keys() == checkpoint.to_hf_state_dict(model).keys()


def test_split_matvec_equals_linear_and_falls_back_where_it_must():
    """Few-row products after use_decode_layout run as one batched product over column blocks
    (one per thread); the numbers are F.linear's, and anything that is not a plain fp32 [in,
    out] weight, or is under autograd, takes F.linear itself."""
    from unittest import mock

    from torch.nn import functional as F

    from llmos.model import MATVEC_MAX_THREADS, MATVEC_ROWS, Linear, split_matvec

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        lin = Linear(96, 300, bias=True)
        lin.weight.data = lin.weight.data.t().contiguous().t()  # the decode layout
        lin.split_matvec = True
        with torch.no_grad():
            for shape in [(1, 96), (3, 1, 96), (MATVEC_ROWS, 96), (MATVEC_ROWS + 1, 96)]:
                x = torch.randn(shape)
                torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))
            x = torch.randn(2, 96)
            with mock.patch.object(torch, "bmm", wraps=torch.bmm) as bmm:  # the split path
                lin(x)
                assert bmm.call_count == 1, "a 2-row product under no_grad should be split"
                w = lin.weight.detach()
                split_matvec(x, w[:299])  # 299 outputs do not split in 2
                split_matvec(x, w.contiguous())  # [out, in] layout
                split_matvec(x.bfloat16(), w.bfloat16())
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    split_matvec(x, w)
                for n in (1, MATVEC_MAX_THREADS + 1):  # 300 columns split in 1 and 5
                    torch.set_num_threads(n)
                    split_matvec(x, w)
                torch.set_num_threads(2)
                assert bmm.call_count == 1
        x = torch.randn(2, 96, requires_grad=True)
        lin(x).sum().backward()  # with grad: plain F.linear, gradients as usual
        torch.testing.assert_close(x.grad, lin.weight.sum(0).expand(2, 96))
    finally:
        torch.set_num_threads(threads)
