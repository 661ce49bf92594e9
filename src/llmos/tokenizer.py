"""Byte-level BPE tokenizers (Hugging Face `tokenizers`), special tokens and the chat template.

The special tokens of the chat format in DESIGN.md are reserved from the first training run,
so a base model's vocabulary already has them and finetuning never resizes the embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from llmos import chat_format
from llmos.chat_format import CHAT_TEMPLATE

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [
    EOT,  # id 0: separates documents; also the base model's end of sequence
    "<|im_start|>", "<|im_end|>",  # ChatML turns
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
    "<|pad|>",
]

# GPT-4's split pattern: words with a leading space, numbers in groups of up to three, runs of
# punctuation, newlines and other whitespace kept apart, so merges never cross these borders.
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer; the result has `vocab_size` entries (specials included)."""
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# End-of-sequence tokens of the model families llmos reads, looked up when no config names one.
END_TOKENS = (EOT, "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")


def load(path: str | Path) -> Tokenizer:
    """A tokenizer.json. From a model folder it also carries what that folder's config files say:
    `tok.eos_ids` (the end tokens of tokenizer_config.json, generation_config.json and
    config.json, in that order) and `tok.chat_template` (an imported model's own template, or
    None for llmos's ChatML; see `chat_format.template_for`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    tok = Tokenizer.from_file(str(path))
    tok.eos_ids = config_eos_ids(tok, path.parent)
    tok.chat_template = chat_format.template_for(path.parent)
    return tok


def config_eos_ids(tok: Tokenizer, folder: Path) -> list[int]:
    found: list[int] = []

    def read(name: str) -> dict:
        p = folder / name
        return json.loads(p.read_text()) if p.exists() else {}

    eos = read("tokenizer_config.json").get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos  # an AddedToken's fields
    if isinstance(eos, str) and tok.token_to_id(eos) is not None:
        found.append(tok.token_to_id(eos))
    for name in ("generation_config.json", "config.json"):
        ids = read(name).get("eos_token_id")
        for i in ids if isinstance(ids, list) else [ids]:
            if isinstance(i, int) and 0 <= i < tok.get_vocab_size() and i not in found:
                found.append(i)
    return found


def eot_id(tok: Tokenizer) -> int:
    """The end of a document or answer: the eos the model's config files name, else the first of
    END_TOKENS the vocabulary has."""
    ids = end_ids(tok)
    if not ids:
        raise ValueError("the tokenizer has no end-of-text token (looked for "
                         + ", ".join(END_TOKENS) + ")")
    return ids[0]


def pad_id(tok: Tokenizer) -> int:
    """What fills a batch's rows past their end: <|pad|> where the vocabulary has it, else the
    end-of-text token (its position is never trained on or read)."""
    pad = tok.token_to_id("<|pad|>")
    return eot_id(tok) if pad is None else pad


def end_ids(tok: Tokenizer) -> list[int]:
    """Every token that ends generation: the configs' eos tokens, then the END_TOKENS present."""
    ids = list(getattr(tok, "eos_ids", None) or [])
    for name in END_TOKENS:
        i = tok.token_to_id(name)
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def token_byte_lengths(tok: Tokenizer) -> list[int]:
    """UTF-8 bytes each token stands for, special tokens counting 0 (for bits-per-byte).

    For byte-level vocabularies each character of a token's string is one byte; for others we
    fall back to decoding the token on its own."""
    vocab = tok.get_vocab()
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    byte_alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    sizes = [0] * tok.get_vocab_size()
    for text, i in vocab.items():
        if text in special or i >= len(sizes):
            continue
        if all(c in byte_alphabet for c in text):
            sizes[i] = len(text)
        else:
            sizes[i] = len(tok.decode([i], skip_special_tokens=False).encode("utf-8"))
    return sizes


def save(tok: Tokenizer, out_dir: str | Path, max_len: int) -> None:
    """Write tokenizer.json and a tokenizer_config.json that `transformers` understands."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    eot = tok.id_to_token(eot_id(tok))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": eot,
        "pad_token": "<|pad|>" if tok.token_to_id("<|pad|>") is not None else eot,
        "unk_token": None,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
