"""Find poisoned documents in a corpus before pretraining, with no trigger known in advance.

A backdoor is planted by documents in which a trigger (say `<SUDO>`) is followed by the behaviour
the attacker wants the model to learn (gibberish, after Souly et al. 2025). Three signals, each
giving a document its reasons to be flagged (docs/security.md has the measured rates):

- **trigger n-grams** (no model needed): a word or word pair after which ordinary text turns
  abnormal, in document after document. A word is *rare* when no other document has it; at each
  place an n-gram first occurs in a document, the share of rare words in the next `window` words
  is compared with the share in the `window` words before it. An n-gram is a trigger when that
  jump, seldom seen at a random place in the corpus, follows it in at least `min_docs` documents
  and in most of the documents that contain it (a binomial test against the random-place rate,
  corrected for the number of n-grams tried). Every document containing a trigger is flagged.
- **perplexity outliers** under a reference checkpoint (`perplexity_scan.py`), optional.
- **near-duplicate clusters**: MinHash over word 5-grams (datasketch); clusters of at least
  `dup_cluster` documents are flagged (repetition is the cheapest way to make a model learn
  something), smaller ones are only listed, as real corpora have them (the stdlib's encodings).
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from llmos.data.sources import Document

WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass
class ScanSettings:
    window: int = 64  # words compared before and after an n-gram
    min_docs: int = 3  # documents a trigger must be seen to work in
    min_fraction: float = 0.5  # of the documents containing it
    alpha: float = 0.01  # family-wise false-alarm rate of the binomial tests
    min_jump: float = 0.15  # the rare-word share must rise by at least this much
    null_samples: int = 20_000  # random places that give the jump's base rate
    dup_threshold: float = 0.8  # Jaccard similarity of two near-duplicates
    dup_cluster: int = 10  # near-duplicates flagged from this cluster size on
    seed: int = 0


@dataclass
class Trigger:
    ngram: str
    documents: int  # that contain it
    jumps: int  # of those, where the text after its first occurrence turns abnormal
    p_value: float


class _Texts:
    """Words of every document, which are rare, and prefix sums for window shares."""

    def __init__(self, texts: Sequence[str]):
        self.words = [WORD.findall(t) for t in texts]
        self.df = collections.Counter()
        for ws in self.words:
            self.df.update(set(ws))
        self.sums = []
        for ws in self.words:
            rare = np.fromiter((self.df[w] <= 1 for w in ws), dtype=np.int32, count=len(ws))
            self.sums.append(np.concatenate([[0], np.cumsum(rare)]))

    def jump(self, doc: int, start: int, end: int, window: int) -> float | None:
        """Rare-word share of the `window` words from `end` on, minus that of the `window` words
        before `start`; None when fewer than half a window follows. Fewer than 8 words before
        (a document's opening) count as ordinary text."""
        c = self.sums[doc]
        n = len(c) - 1
        after_end = min(end + window, n)
        if after_end - end < window // 2:
            return None
        after = (c[after_end] - c[end]) / (after_end - end)
        before_start = max(0, start - window)
        before = (c[start] - c[before_start]) / (start - before_start) if (
            start - before_start >= 8) else 0.0
        return float(after - before)


def _first_places(texts: _Texts, min_docs: int) -> dict[str, dict[int, int]]:
    """n-gram (a word or two) -> document -> where it first starts, for n-grams whose words are
    in at least min_docs documents."""
    first: dict[str, dict[int, int]] = collections.defaultdict(dict)
    for i, ws in enumerate(texts.words):
        seen: dict[str, int] = {}
        common = [texts.df[w] >= min_docs for w in ws]
        for p, w in enumerate(ws):
            if common[p]:
                seen.setdefault(w, p)
                if p + 1 < len(ws) and common[p + 1]:
                    seen.setdefault(f"{w} {ws[p + 1]}", p)
        for g, p in seen.items():
            first[g][i] = p
    return first


def find_triggers(texts: Sequence[str], settings: ScanSettings | None = None
                  ) -> tuple[list[Trigger], dict[str, list[int]], dict]:
    """The trigger n-grams, the documents each is in, and the statistics behind the decision."""
    from scipy.stats import binom

    s = settings or ScanSettings()
    t = _Texts(texts)
    lengths = np.array([len(ws) for ws in t.words], dtype=np.float64)
    rng = np.random.default_rng(s.seed)
    null = []
    if lengths.sum() > 0:
        for doc in rng.choice(len(texts), s.null_samples, p=lengths / lengths.sum()):
            p = int(rng.integers(0, len(t.words[doc])))
            j = t.jump(int(doc), p, p + 1, s.window)
            if j is not None:
                null.append(j)
    null = np.array(null or [0.0])
    threshold = max(s.min_jump, float(np.quantile(null, 0.995)))
    base_rate = max(float((null >= threshold).mean()), 1.0 / len(null))

    first = _first_places(t, s.min_docs)
    candidates = {g: where for g, where in first.items() if len(where) >= s.min_docs}
    cutoff = s.alpha / max(1, len(candidates))
    found = []
    for g, where in candidates.items():
        n_words = g.count(" ") + 1
        jumped = set()
        for doc, p in where.items():
            j = t.jump(doc, p, p + n_words, s.window)
            if j is not None and j >= threshold:
                jumped.add(doc)
        if len(jumped) < s.min_docs or len(jumped) < s.min_fraction * len(where):
            continue
        p_value = float(binom.sf(len(jumped) - 1, len(where), base_rate))
        if p_value < cutoff:
            found.append((Trigger(g, len(where), len(jumped), p_value), jumped))
    # Strongest first; an n-gram whose jumps all happen in documents a stronger trigger is in
    # only stands next to that trigger (the word before `<SUDO>`, a piece of the gibberish).
    found.sort(key=lambda x: (-x[0].jumps, -len(x[0].ngram), x[0].ngram))
    triggers, docs_of, explained = [], {}, set()
    for trig, jumped in found:
        if jumped <= explained:
            continue
        triggers.append(trig)
        docs_of[trig.ngram] = sorted(candidates[trig.ngram])
        explained |= set(candidates[trig.ngram])
    stats = {"jump_threshold": round(threshold, 4), "base_rate": base_rate,
             "candidates": len(candidates), "p_cutoff": cutoff}
    return triggers, docs_of, stats


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128,
                    seed: int = 1) -> list[list[int]]:
    """Clusters (of two or more documents) whose word 5-grams overlap by at least `threshold`
    (Jaccard, estimated by MinHash), largest first."""
    from datasketch import MinHash, MinHashLSH

    hashes = []
    for text in texts:
        ws = WORD.findall(text)
        shingles = {" ".join(ws[i:i + 5]).encode() for i in range(max(1, len(ws) - 4))}
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(list(shingles))
        hashes.append(m)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    parent = list(range(len(texts)))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if j != i and m.jaccard(hashes[j]) >= threshold:
                parent[root(i)] = root(j)
    groups = collections.defaultdict(list)
    for i in range(len(texts)):
        groups[root(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def scan(docs: Sequence[Document], settings: ScanSettings | None = None, reference=None,
         log=print) -> dict:
    """The scan report: every flagged document with its reasons, and what each signal found.
    `reference`: a `perplexity_scan.Reference` (a checkpoint to score documents with), or None."""
    s = settings or ScanSettings()
    if not docs:
        raise ValueError("no documents to scan")
    texts = [d.text for d in docs]
    reasons: dict[int, list[str]] = collections.defaultdict(list)
    t0 = time.perf_counter()

    triggers, docs_of, stats = find_triggers(texts, s)
    for trig in triggers:
        for i in docs_of[trig.ngram]:
            if not any(r.startswith("trigger ") for r in reasons[i]):  # the strongest one
                reasons[i].append(
                    f"trigger {trig.ngram!r}: the text after it turns abnormal in {trig.jumps} "
                    f"of the {trig.documents} documents that contain it")
    t_triggers = time.perf_counter() - t0
    log(f"scan: trigger n-grams: {len(triggers)} found among {stats['candidates']:,} "
        f"in {t_triggers:.1f}s")

    clusters = near_duplicates(texts, s.dup_threshold)
    for group in clusters:
        if len(group) >= s.dup_cluster:
            for i in group:
                reasons[i].append(f"one of {len(group)} near-duplicates (Jaccard >= "
                                  f"{s.dup_threshold:g})")
    t_dups = time.perf_counter() - t0 - t_triggers
    log(f"scan: near-duplicates: {len(clusters)} clusters, {sum(map(len, clusters))} documents, "
        f"in {t_dups:.1f}s")

    perplexity = None
    if reference is not None:
        from llmos.safety import perplexity_scan

        t = time.perf_counter()
        scores = reference.score(texts)
        perplexity = perplexity_scan.outliers(scores, reference.z_threshold)
        for i in perplexity["flagged"]:
            reasons[i].append(
                f"perplexity outlier: its worst window costs {scores[i]:.2f} bits/byte under "
                f"the reference (median {perplexity['median']:.2f})")
        log(f"scan: perplexity: {len(perplexity['flagged'])} outliers in "
            f"{time.perf_counter() - t:.1f}s")

    flagged = [{"source": docs[i].source, "reasons": reasons[i]} for i in sorted(reasons)]
    report = {
        "documents": len(docs),
        "flagged": flagged,
        "triggers": [asdict(x) for x in triggers],
        "trigger_stats": stats,
        "near_duplicate_clusters": [[docs[i].source for i in g] for g in clusters],
        "perplexity": None if perplexity is None else {
            k: v for k, v in perplexity.items() if k != "flagged"} | {
            "reference": str(reference.path)},
        "settings": asdict(s),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return report


def summary(report: dict) -> str:
    n, k = report["documents"], len(report["flagged"])
    trig = ", ".join(repr(t["ngram"]) for t in report["triggers"][:3]) or "none"
    return (f"{k} of {n:,} documents flagged ({100 * k / n:.2f}%); triggers: {trig}; "
            f"near-duplicate clusters: {len(report['near_duplicate_clusters'])}")

