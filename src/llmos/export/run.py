"""Inference for an llmos model in pure numpy: the run file that `llmos export --format run`
writes next to the params file (docs/export.md). One file, numpy and the standard library only.

    python run.py model.llmos -i "Once upon a time" -t 0 -n 64        # complete a prompt
    python run.py model.llmos -m chat -i "What is 2+2?" -y "Be brief."  # one chat turn
    python run.py model.llmos -m chat                                  # chat on stdin

Sections, as in llama2.c's run.c: the params file; the transformer; the BPE tokenizer
(byte-level or SentencePiece-style); the sampler; generate and chat loops; the command line.
"""

from __future__ import annotations

import argparse
import codecs
import json
import re
import struct
import sys
import time
import unicodedata

import numpy as np

FORMAT, FORMAT_VERSION = "llmos-run", 2

# ----------------------------------------------------------------------------------------------
# The params file: the safetensors layout. An 8-byte little-endian header length, a JSON header
# (tensor name -> dtype, shape, byte range; "__metadata__" -> strings: format, config,
# tokenizer, chat format, weight dtype), then the raw tensor bytes, which we memory-map.

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I8": np.int8}


def read_params(path):
    """-> (metadata with its JSON values parsed, {name: array view into the file})."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {})
    if meta.get("format") != FORMAT:
        raise SystemExit(f"{path}: not an llmos params file (format {meta.get('format')!r})")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise SystemExit(f"{path}: format version {meta['format_version']} is newer than this "
                         f"run.py ({FORMAT_VERSION}); export the model again")
    meta = {k: json.loads(v) if k in ("config", "tokenizer", "chat") else v
            for k, v in meta.items()}
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    tensors = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        tensors[name] = raw[start:end].view(DTYPES[t["dtype"]]).reshape(t["shape"])
    return meta, tensors


def load_weight(tensors, name, keep_int8=False, transpose=True):
    """A float32 matrix, or with keep_int8 the int8 values and their float32 scales (one per
    group of inputs). Matrices are laid out [in, out] (transpose), the order in which numpy's
    matrix-vector product reads a weight fastest: 2-3x faster than [out, in] at batch 1."""
    if name + ".q" in tensors:
        w = tensors[name + ".q"], tensors[name + ".scale"]
        if keep_int8:
            return tuple(np.ascontiguousarray(a.T if transpose else a) for a in w)
        w = (w[0].reshape(*w[1].shape, -1) * w[1][..., None]).reshape(w[0].shape)
    else:
        w = tensors[name]
        if w.dtype == np.uint16:  # bfloat16 is the top half of a float32
            w = (w.astype(np.uint32) << 16).view(np.float32)
    w = np.asarray(w, dtype=np.float32)
    return np.ascontiguousarray(w.T if transpose and w.ndim == 2 else w)


# ----------------------------------------------------------------------------------------------
# The transformer: RMSNorm, rotary embeddings (rotate-half), grouped-query attention over a
# preallocated KV cache, SwiGLU. All math in float32.

BLOCK = 1 << 16  # floats dequantized at a time from a kept int8 matrix: they stay in cache


def matmul(x, w):
    """x [T, in] times a weight stored [in, out] -> [T, out]. numpy has no int8 matrix product,
    so a kept int8 weight (values [in, out], scales [in // group, out]) is dequantized a block
    of input rows at a time: 4x less memory than float32, and slower (docs/export.md)."""
    if not isinstance(w, tuple):
        return x @ w
    q, s = w
    group, out = q.shape[0] // s.shape[0], q.shape[1]
    k = max(1, BLOCK // (group * out))  # groups per block
    y = np.zeros((x.shape[0], out), np.float32)
    for g in range(0, s.shape[0], k):
        block = q[g * group:(g + k) * group].reshape(-1, group, out) * s[g:g + k, None]
        y += x[:, g * group:(g + k) * group] @ block.reshape(-1, out)
    return y


def embedding(w, tokens, transposed):
    """Rows `tokens` of an embedding matrix, float32 [T, dim]. A tied matrix is the output
    layer's, stored transposed [dim, vocab]; an untied one is [vocab, dim]."""
    if not isinstance(w, tuple):
        return (w[:, tokens].T if transposed else w[tokens]).astype(np.float32)
    q, s = (w[0][:, tokens].T, w[1][:, tokens].T) if transposed else (w[0][tokens], w[1][tokens])
    return (q.reshape(*s.shape, -1) * s[..., None]).reshape(q.shape).astype(np.float32)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, cos, sin):
    """x [T, heads, head_dim]; the two halves of each head rotate together (HF Llama)."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


class Transformer:
    def __init__(self, config, tensors, keep_int8=False):
        c = self.c = config
        self.lm_head = load_weight(tensors, "embed.weight" if c["tied"] else "lm_head.weight",
                                   keep_int8)
        self.embed = None if c["tied"] else load_weight(tensors, "embed.weight", keep_int8,
                                                        transpose=False)
        self.norm = load_weight(tensors, "norm.weight")
        names = ("attn_norm.weight", "attn.wqkv.weight", "attn.wo.weight", "ffn_norm.weight",
                 "ffn.w13.weight", "ffn.w2.weight")
        self.layers = [[load_weight(tensors, f"layers.{i}.{n}", keep_int8) for n in names]
                       for i in range(c["n_layers"])]
        hd = c["head_dim"]  # the rotary frequencies are stored, rope scaling already applied
        angles = np.outer(np.arange(c["max_seq_len"], dtype=np.float32), tensors["rope.inv_freq"])
        angles = np.concatenate([angles, angles], axis=-1)
        self.cos, self.sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
        shape = (c["n_layers"], c["n_kv_heads"], c["max_seq_len"], hd)
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)

    def forward(self, tokens, pos, all_logits=False):
        """Run `tokens` at positions pos, pos+1, ... (the cache holds positions < pos).
        Returns the logits of the last token, or of every token with all_logits."""
        c, T = self.c, len(tokens)
        H, KV, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        if pos + T > c["max_seq_len"]:
            raise ValueError(f"{pos + T} tokens exceed max_seq_len {c['max_seq_len']}")
        tied = self.embed is None
        x = embedding(self.lm_head if tied else self.embed, np.asarray(tokens), tied)
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        S = pos + T  # keys visible to the last new token
        causal = np.arange(S)[None, :] > (pos + np.arange(T))[:, None]  # [T, S]: future keys
        for i, (attn_norm, wqkv, wo, ffn_norm, w13, w2) in enumerate(self.layers):
            # attention
            qkv = matmul(rmsnorm(x, attn_norm, c["norm_eps"]), wqkv)
            q = rope(qkv[:, :H * hd].reshape(T, H, hd), cos, sin)
            k = rope(qkv[:, H * hd:(H + KV) * hd].reshape(T, KV, hd), cos, sin)
            self.k_cache[i, :, pos:S] = k.transpose(1, 0, 2)
            self.v_cache[i, :, pos:S] = qkv[:, (H + KV) * hd:].reshape(T, KV, hd).transpose(1, 0, 2)
            keys, values = self.k_cache[i, :, None, :S], self.v_cache[i, :, None, :S]
            q = q.reshape(T, KV, H // KV, hd).transpose(1, 2, 0, 3)  # query head h uses kv h//rep
            scores = q @ keys.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd))  # [KV, rep, T, S]
            scores[..., causal] = -np.inf
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            y = (scores / scores.sum(-1, keepdims=True)) @ values  # [KV, rep, T, hd]
            x = x + matmul(y.transpose(2, 0, 1, 3).reshape(T, H * hd), wo)
            # feed-forward: SwiGLU, silu(g) = g * sigmoid(g), sigmoid through tanh (no overflow)
            gate, up = np.split(matmul(rmsnorm(x, ffn_norm, c["norm_eps"]), w13), 2, axis=-1)
            x = x + matmul(gate * (0.5 + 0.5 * np.tanh(0.5 * gate)) * up, w2)
        x = rmsnorm(x if all_logits else x[-1:], self.norm, c["norm_eps"])
        logits = matmul(x, self.lm_head)
        return logits if all_logits else logits[0]


# ----------------------------------------------------------------------------------------------
# The tokenizer: BPE of the two kinds models use, run as Hugging Face `tokenizers` runs them,
# special tokens cut out first. Byte-level (llmos, Llama 3, GPT-2, SmolLM): pieces cut by GPT-4's
# or GPT-2's pattern (by hand: `re` has no \p{L} or \p{N}), their UTF-8 bytes as GPT-2's
# printable characters, merged by rank. SentencePiece-style (Llama 2, Mistral): spaces become
# "▁", one goes in front, characters merge by rank, unknown ones become <0xNN> byte tokens.

# Oniguruma's \s: the Unicode White_Space characters (Python's isspace adds \x1c-\x1f).
SPACES = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")


def byte_table():
    """GPT-2's byte -> character map: printable bytes stand for themselves."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return {b: chr(c) for b, c in zip(keep + extra, keep + [256 + i for i in range(len(extra))])}


def char_kind(c):
    """L letter, N number, S whitespace, O anything else."""
    if c in SPACES:
        return "S"
    cat = unicodedata.category(c)[0]
    return cat if cat in "LN" else "O"


def run_end(kinds, j, kind):
    """The end of the run of `kind` characters from j."""
    while j < len(kinds) and kinds[j] == kind:
        j += 1
    return j


def split_gpt4(text):
    """GPT-4's pattern: (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\\r\\n\\p{L}\\p{N}]?\\p{L}+ |
    \\p{N}{1,3} | ' '?[^\\s\\p{L}\\p{N}]+[\\r\\n]* | \\s*[\\r\\n]+ | \\s+(?!\\S) | \\s+ ;
    the first alternative that matches at a position wins, as in the regex engine."""
    kinds = [char_kind(c) for c in text]
    n, i, pieces = len(text), 0, []
    while i < n:
        c, k = text[i], kinds[i]
        nxt = kinds[i + 1] if i + 1 < n else ""
        folded = "".join(f if len(f := ch.casefold()) == 1 else ch for ch in text[i + 1:i + 3])
        hit = [s for s in CONTRACTIONS if folded.startswith(s)] if c == "'" else []
        if hit:
            end = i + 1 + len(hit[0])
        elif k == "L":
            end = run_end(kinds, i, "L")
        elif nxt == "L" and k != "N" and c not in "\r\n":
            end = run_end(kinds, i + 1, "L")
        elif k == "N":
            end = min(run_end(kinds, i, "N"), i + 3)
        elif k == "O" or (c == " " and nxt == "O"):
            end = run_end(kinds, i + 1 if c == " " else i, "O")
            while end < n and text[end] in "\r\n":
                end += 1
        else:  # whitespace: up to the last newline of the run, else leave one space for a word
            end = run_end(kinds, i, "S")
            newlines = [j for j in range(i, end) if text[j] in "\r\n"]
            if newlines:
                end = newlines[-1] + 1
            elif end < n and end - i >= 2:
                end -= 1
        pieces.append(text[i:end])
        i = end
    return pieces


def split_gpt2(text):
    """GPT-2's pattern: 's|'t|'re|'ve|'m|'ll|'d | ' '?\\p{L}+ | ' '?\\p{N}+ |
    ' '?[^\\s\\p{L}\\p{N}]+ | \\s+(?!\\S) | \\s+ (contractions in lower case only)."""
    kinds = [char_kind(c) for c in text]
    n, i, pieces = len(text), 0, []
    while i < n:
        hit = [s for s in CONTRACTIONS if text.startswith(s, i + 1)] if text[i] == "'" else []
        lead = i + 1 if text[i] == " " and i + 1 < n and kinds[i + 1] != "S" else i
        if hit:
            end = i + 1 + len(hit[0])
        elif kinds[lead] != "S":
            end = run_end(kinds, lead, kinds[lead])
        else:  # whitespace: the run, but its last character when a non-space follows
            end = run_end(kinds, i, "S")
            end -= 1 if end < n and end - i >= 2 else 0
        pieces.append(text[i:end])
        i = end
    return pieces


def split_digits(text):
    """Every number character on its own (SmolLM's Digits(individual_digits) step): cut the
    text before and after each."""
    cuts = [j + d for j, c in enumerate(text) if char_kind(c) == "N" for d in (0, 1)]
    cuts = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if a < b]


class Tokenizer:
    def __init__(self, meta):
        self.vocab = dict(meta["vocab"])
        self.added = {t["content"]: t["id"] for t in meta["added"]}
        self.vocab.update(self.added)
        self.pieces = {i: text for text, i in self.vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(meta["merges"])}
        self.ignore_merges = meta.get("ignore_merges", False)
        # Format 1 files hold llmos's own kind only (byte-level, GPT-4's split): the defaults.
        self.sp = meta.get("kind", "byte_level") == "sentencepiece"
        self.split = {"gpt4": split_gpt4, "gpt2": split_gpt2}[meta.get("split", "gpt4")]
        self.digits, self.prefix = meta.get("digits", False), meta.get("space_prefix", "never")
        self.words, self.fallback = meta.get("split_words", False), meta.get("byte_fallback")
        self.unk, self.fuse_unk = meta.get("unk"), meta.get("fuse_unk", False)
        self.strip, (self.before, self.after) = meta.get("strip", 0), meta.get("wrap", [[], []])
        self.to_char = byte_table()
        self.to_byte = {ch: b for b, ch in self.to_char.items()}
        self.special_re = re.compile("(" + "|".join(
            re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")")
        self.cache = {}

    def pre_tokenize(self, part, first):
        """The pieces BPE merges within; `part` lies between special tokens (`first`: it starts
        the text). SentencePiece's prefix: "every" part (a Prepend normalizer), "always" or
        "first" (a Metaspace pre-tokenizer: unless the part starts with a space), or "never"."""
        if not self.sp:
            return [p for q in (split_digits(part) if self.digits else [part])
                    for p in self.split(q)]
        text = part.replace(" ", "▁")
        if self.prefix == "every" or not text.startswith("▁") and (
                self.prefix == "always" or self.prefix == "first" and first):
            text = "▁" + text
        return re.findall("▁[^▁]*|[^▁]+", text) if self.words else [text]

    def bpe(self, piece):
        """Merge by rank, from: byte-level, each byte as GPT-2's character; SentencePiece, each
        character, or its <0xNN> byte tokens when the vocabulary lacks it, else the unk token."""
        if not self.sp:
            word = [self.to_char[b] for b in piece.encode("utf-8")]
        else:
            word = []
            for c in piece:
                fallback = [f"<0x{b:02X}>" for b in c.encode("utf-8")]
                if c in self.vocab or self.fallback and all(b in self.vocab for b in fallback):
                    word += [c] if c in self.vocab else fallback
                elif self.unk and not (self.fuse_unk and word[-1:] == [self.unk]):  # no unk: drop
                    word.append(self.unk)
        whole = piece if self.sp else "".join(word)
        if self.ignore_merges and whole in self.vocab:
            return [self.vocab[whole]]
        while len(word) > 1:
            ranks = [self.ranks.get(pair, 1 << 60) for pair in zip(word, word[1:])]
            best = min(ranks)
            if best == 1 << 60:
                break
            pair, out, j = (word[ranks.index(best)], word[ranks.index(best) + 1]), [], 0
            while j < len(word):  # merge every occurrence, left to right
                if j + 1 < len(word) and (word[j], word[j + 1]) == pair:
                    out.append(word[j] + word[j + 1])
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            word = out
        return [self.vocab[t] for t in word]

    def encode(self, text, wrap=False):
        """Token ids of `text`; special tokens written in the text are recognised. `wrap` adds
        what the tokenizer adds around a text (Llama's BOS)."""
        ids = list(self.before) if wrap else []
        for n, part in enumerate(self.special_re.split(text) if self.added else [text]):
            if n % 2:
                ids.append(self.added[part])
                continue
            for piece in self.pre_tokenize(part, n == 0) if part else []:
                if piece not in self.cache:
                    self.cache[piece] = self.bpe(piece)
                ids.extend(self.cache[piece])
        return ids + (list(self.after) if wrap else [])

    def token_bytes(self, i):
        text = self.pieces.get(i, "")  # an id past the tokenizer (padded embedding): nothing
        if text in self.added:
            return text.encode("utf-8")
        if not self.sp:
            return bytes(self.to_byte[ch] for ch in text)
        byte = BYTE_TOKEN.fullmatch(text) if self.fallback else None
        return bytes([int(byte[1], 16)]) if byte else text.replace("▁", " ").encode("utf-8")

    def decode(self, ids):
        text = b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        # SentencePiece's decoder drops the space it put in front (HF's Strip(" ", 1, 0))
        return text[1:] if self.strip and text.startswith(" ") else text


# ----------------------------------------------------------------------------------------------
# The sampler: greedy at temperature 0, else softmax(logits / t), optionally cut to the top-p
# nucleus. Only tokens with p >= (1 - top_p) / (V - 1) can be in the nucleus (the others
# together hold less than 1 - top_p), so only those few are sorted, not the whole vocabulary.


def sample(logits, temperature, top_p, rng):
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    if 0 < top_p < 1:
        cand = np.flatnonzero(p >= min((1 - top_p) / (len(p) - 1), p.max()))
        cand = cand[np.argsort(-p[cand], kind="stable")]
        keep = int(np.searchsorted(np.cumsum(p[cand]), top_p)) + 1  # mass before reaches p
        cand = cand[:keep]
        return int(cand[rng.choice(len(cand), p=p[cand] / p[cand].sum())])
    return int(rng.choice(len(p), p=p))


# ----------------------------------------------------------------------------------------------
# Generate and chat. The KV cache is reused across chat turns for the tokens that did not
# change; a stop token ends the answer and is not printed.


class Generator:
    def __init__(self, path, keep_int8=False):
        self.meta, tensors = read_params(path)
        self.model = Transformer(self.meta["config"], tensors, keep_int8)
        self.tok = Tokenizer(self.meta["tokenizer"])
        self.cached = []  # the tokens whose keys and values are in the cache

    def stream(self, ids, n, temperature=0.0, top_p=1.0, rng=None, stops=()):
        """Yield up to n new tokens after `ids`, stopping at (and not yielding) a stop token."""
        max_len = self.model.c["max_seq_len"]
        ids = list(ids)[-(max_len - 1):]
        same = 0
        while same < min(len(ids) - 1, len(self.cached)) and ids[same] == self.cached[same]:
            same += 1
        logits = self.model.forward(ids[same:], same)
        self.cached = list(ids)
        for _ in range(min(n, max_len - len(ids))):
            t = sample(logits, temperature, top_p, rng)
            if t in stops:
                return
            yield t
            if len(self.cached) == max_len:
                return
            logits = self.model.forward([t], len(self.cached))
            self.cached.append(t)

    def print_stream(self, ids, args, stops):
        """Stream the decoded tokens to stdout; returns (token ids, seconds)."""
        out, utf8, start = [], codecs.getincrementaldecoder("utf-8")("replace"), time.time()
        rng = np.random.default_rng(args.seed)
        for t in self.stream(ids, args.steps, args.temperature, args.top_p, rng, stops):
            out.append(t)
            sys.stdout.write(utf8.decode(self.tok.token_bytes(t)))
            sys.stdout.flush()
        sys.stdout.write(utf8.decode(b"", final=True) + "\n")
        return out, time.time() - start


def render_chat(fmt, messages, add_generation_prompt=True):
    """A conversation as text in the stored chat format: prefix + content + suffix per turn."""
    text = "".join(fmt[m["role"]][0] + m["content"] + fmt[m["role"]][1] for m in messages)
    return text + (fmt["generation_prompt"] if add_generation_prompt else "")


def run_generate(g, args):
    eot = g.tok.vocab[g.meta["tokenizer"]["eot"]]
    ids = g.tok.encode(args.input, wrap=True) or [eot]
    out, secs = g.print_stream(ids, args, {eot})
    report(len(out), secs)


def run_chat(g, args):
    fmt = g.meta.get("chat")
    if not fmt:
        raise SystemExit("this params file has no chat format (its checkpoint's chat template "
                         "could not be stored); use -m generate")
    stops = {g.tok.vocab.get(s) for s in fmt["stop"]} - {None}
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        if args.input is not None:
            user = args.input
        else:
            print("user> ", end="", file=sys.stderr, flush=True)
            user = sys.stdin.readline()
            if not user:
                return
            user = user.rstrip("\n")
            sys.stderr.write("assistant> ")
        messages.append({"role": "user", "content": user})
        out, secs = g.print_stream(g.tok.encode(render_chat(fmt, messages)), args, stops)
        messages.append({"role": "assistant", "content": g.tok.decode(out)})
        report(len(out), secs)
        if args.input is not None:
            return


def report(n, secs):
    print(f"[{n} tokens, {n / max(secs, 1e-9):.1f} tokens/s]", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# The command line, as in llama2.c's run.c.


def main(argv=None):
    p = argparse.ArgumentParser(description="Run an llmos model exported with `llmos export "
                                "--format run`: numpy only.")
    p.add_argument("params", help="the params file (model.llmos)")
    p.add_argument("-i", "--input", default=None,
                   help="prompt (generate) or user message (chat; without it, read stdin)")
    p.add_argument("-t", "--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("-p", "--top-p", type=float, default=0.9, help="1 = off (default 0.9)")
    p.add_argument("-n", "--steps", type=int, default=256, help="most new tokens (default 256)")
    p.add_argument("-s", "--seed", type=int, default=None, help="random seed (default: time)")
    p.add_argument("-m", "--mode", choices=("generate", "chat"), default="generate",
                   help="generate: print the continuation of -i; chat: answer as the assistant")
    p.add_argument("-y", "--system", default=None, help="system prompt in chat mode")
    p.add_argument("-k", "--keep-int8", action="store_true",
                   help="int8 files: keep the weights int8 in memory (4x less, several times "
                   "slower); by default they are dequantized to float32 once at load")
    args = p.parse_args(argv)
    g = Generator(args.params, args.keep_int8)
    if args.mode == "chat":
        run_chat(g, args)
    else:
        args.input = args.input or ""
        run_generate(g, args)


if __name__ == "__main__":
    main()
