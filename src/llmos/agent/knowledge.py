"""Knowledge bases, the LLM OS's disk: chunks of files in the database, found again by keywords
(BM25 through SQLite FTS5, or PostgreSQL full-text search) and by meaning (sentence embeddings),
the two rankings fused.

    kb = KnowledgeBase.open("sqlite:///llmos.db", "stdlib")
    kb.add(["builtin:stdlib"])              # reads only sources that are new or changed
    for hit in kb.search("How do I pretty-print JSON?", k=5):
        print(hit.cite, hit.score, hit.title)

Fusion is reciprocal-rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): each list gives a
chunk 1 / (60 + rank); it needs no score calibration between BM25 and cosine similarity.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from llmos import db
from llmos.agent.embedding import DEFAULT_MODEL, Embedder
from llmos.data.chunking import Chunk, Source, chunk_source, iter_sources
from llmos.data.sources import SkipReport

RRF_K = 60
CANDIDATES = 50  # from each ranking, before fusion
EMBED_BATCH = 256  # chunks embedded and committed together: a killed build keeps what it did

_meta = sa.MetaData()
bases = sa.Table("knowledge_bases", _meta, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("name", sa.String(128)), sa.Column("embedder", sa.String(64)),
                 sa.Column("created", sa.Float), sa.Column("updated", sa.Float))
sources = sa.Table("knowledge_sources", _meta, sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("base_id", sa.Integer), sa.Column("name", sa.Text),
                   sa.Column("fingerprint", sa.String(64)), sa.Column("chunks", sa.Integer),
                   sa.Column("added", sa.Float))
chunks = sa.Table("knowledge_chunks", _meta, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("base_id", sa.Integer), sa.Column("source_id", sa.Integer),
                  sa.Column("position", sa.Integer), sa.Column("title", sa.Text),
                  sa.Column("text", sa.Text), sa.Column("vector", sa.LargeBinary))


class KnowledgeError(ValueError):
    """A knowledge base that does not exist, a bad name, an unreadable source: said plainly."""


@dataclass
class Hit:
    source: str
    position: int
    title: str
    text: str
    score: float  # fused: the sum of 1 / (60 + rank) over the rankings that found it
    name_rank: int | None = None  # 1-based; None when that ranking did not find it
    keyword_rank: int | None = None
    dense_rank: int | None = None

    @property
    def cite(self) -> str:
        return f"{self.source}#{self.position}"

    def to_dict(self) -> dict:
        return {**asdict(self), "cite": self.cite}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Words that match nearly every chunk: they cost keyword search time and rank nothing.
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it its me of on or so that the "
    "this to was what when where which who why will with you your".split())


_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def keywords(query: str) -> list[str]:
    words = re.findall(r"[^\W_]+", query.lower())
    kept = [w for w in words if w not in _STOPWORDS]
    return list(dict.fromkeys(kept or words))


# One process keeps one matrix of vectors per base; `updated` says when it is stale.
_vector_cache: dict[tuple[str, int], tuple[float, np.ndarray, np.ndarray]] = {}
_cache_lock = threading.Lock()


class KnowledgeBase:
    def __init__(self, engine: Engine, base_id: int, name: str, embedder_name: str):
        self.engine, self.id, self.name = engine, base_id, name
        self.embedder_name = embedder_name
        self._embedder: Embedder | None = None

    # ----------------------------------------------------------------------- opening

    @classmethod
    def open(cls, url: str, name: str, create: bool = False) -> KnowledgeBase:
        try:
            engine = db.open_database(url, must_exist=not create)
        except db.DatabaseMissing as e:
            raise KnowledgeError(f"{e}: make a knowledge base with: llmos knowledge add {name} "
                                 f"SOURCES --db {url}") from e
        return cls.from_engine(engine, name, create)

    @classmethod
    def from_engine(cls, engine: Engine, name: str, create: bool = False) -> KnowledgeBase:
        if not _NAME.match(name):
            raise KnowledgeError(f"bad knowledge base name {name!r}: use letters, digits, "
                                 "'.', '_' and '-' (up to 128)")
        with engine.begin() as c:
            row = c.execute(sa.select(bases).where(bases.c.name == name)).first()
            if row is None:
                if not create:
                    raise KnowledgeError(f"no knowledge base {name!r}; known: "
                                         f"{', '.join(list_bases(engine)) or 'none'} "
                                         f"(make one with: llmos knowledge add {name} SOURCES)")
                now = time.time()
                base_id = c.execute(sa.insert(bases).values(
                    name=name, embedder=DEFAULT_MODEL, created=now, updated=now)
                ).inserted_primary_key[0]
                return cls(engine, base_id, name, DEFAULT_MODEL)
        return cls(engine, row.id, name, row.embedder)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder.load(self.embedder_name)
        return self._embedder

    # ----------------------------------------------------------------------- building

    def add(self, specs: list[str], progress: Callable[[str], None] | None = None) -> dict:
        """Read the sources the specs name into the base. A source already there with the same
        fingerprint is left as it is; a changed one is replaced whole. Returns counts."""
        t0 = time.perf_counter()
        skips = SkipReport()
        found = list(iter_sources(specs, skips))  # a bad spec fails here, before any writing
        with self.engine.connect() as c:
            known = {r.name: r.fingerprint for r in c.execute(
                sa.select(sources.c.name, sources.c.fingerprint)
                .where(sources.c.base_id == self.id))}
        todo = [s for s in found if known.get(s.name) != s.fingerprint()]
        stats = {"sources": len(found), "unchanged": len(found) - len(todo), "read": 0,
                 "chunks": 0}
        batch: list[tuple[Source, list[Chunk]]] = []
        for i, source in enumerate(todo):
            pieces = chunk_source(source, skips)
            batch.append((source, pieces))
            if sum(len(p) for _, p in batch) >= EMBED_BATCH or i == len(todo) - 1:
                stats["chunks"] += self._store(batch)
                stats["read"] += len(batch)
                batch = []
                if progress:
                    progress(f"{stats['read']}/{len(todo)} sources, {stats['chunks']} chunks")
        stats["skipped"] = skips.to_dict()
        stats["seconds"] = round(time.perf_counter() - t0, 1)
        return stats

    def _store(self, batch: list[tuple[Source, list[Chunk]]]) -> int:
        texts = [f"{c.title}\n{c.text}" for _, pieces in batch for c in pieces]
        vectors = self.embedder.encode(texts).astype(np.float16)
        now, n = time.time(), 0
        with self.engine.begin() as c:  # the batch lands whole or not at all
            for source, pieces in batch:
                self._forget(c, source.name)
                source_id = c.execute(sa.insert(sources).values(
                    base_id=self.id, name=source.name, fingerprint=source.fingerprint(),
                    chunks=len(pieces), added=now)).inserted_primary_key[0]
                if pieces:
                    c.execute(sa.insert(chunks), [
                        {"base_id": self.id, "source_id": source_id, "position": p.position,
                         "title": p.title, "text": p.text, "vector": vectors[n + j].tobytes()}
                        for j, p in enumerate(pieces)])
                n += len(pieces)
            c.execute(sa.update(bases).where(bases.c.id == self.id).values(updated=now))
        return n

    def _forget(self, c, source_name: str) -> int:
        old = c.execute(sa.select(sources.c.id).where(
            sources.c.base_id == self.id, sources.c.name == source_name)).scalar()
        if old is None:
            return 0
        # Chunks first and explicitly, so the keyword index's delete trigger sees each one.
        n = c.execute(sa.delete(chunks).where(chunks.c.source_id == old)).rowcount
        c.execute(sa.delete(sources).where(sources.c.id == old))
        return n

    def remove(self, source_names: list[str]) -> int:
        """Remove sources (by the names `sources()` lists); returns the chunks removed."""
        known = {s["name"] for s in self.sources()}
        missing = [s for s in source_names if s not in known]
        if missing:
            raise KnowledgeError(f"not in knowledge base {self.name!r}: {', '.join(missing)}")
        with self.engine.begin() as c:
            n = sum(self._forget(c, s) for s in source_names)
            c.execute(sa.update(bases).where(bases.c.id == self.id).values(updated=time.time()))
        return n

    def drop(self) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(chunks).where(chunks.c.base_id == self.id))
            c.execute(sa.delete(sources).where(sources.c.base_id == self.id))
            c.execute(sa.delete(bases).where(bases.c.id == self.id))

    def sources(self) -> list[dict]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(sources.c.name, sources.c.chunks, sources.c.added)
                             .where(sources.c.base_id == self.id).order_by(sources.c.name))
            return [dict(r._mapping) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(chunks)
                             .where(chunks.c.base_id == self.id)).scalar()

    # ----------------------------------------------------------------------- searching

    def keyword_search(self, query: str, n: int = CANDIDATES) -> list[int]:
        """Chunk ids, best first: BM25 (title counted twice) on SQLite, ts_rank_cd on
        PostgreSQL; every query word may match (OR), rarer words weigh more."""
        words = keywords(query)
        if not words:
            return []
        with self.engine.connect() as c:
            if self.engine.dialect.name == "postgresql":
                rows = c.execute(sa.text(
                    "SELECT id FROM knowledge_chunks, to_tsquery('english', :q) query "
                    "WHERE base_id = :base AND search @@ query "
                    "ORDER BY ts_rank_cd(search, query) DESC, id LIMIT :n"),
                    {"q": " | ".join(words), "base": self.id, "n": n})
            else:
                rows = c.execute(sa.text(
                    "SELECT f.rowid FROM knowledge_fts f JOIN knowledge_chunks c "
                    "ON c.id = f.rowid WHERE knowledge_fts MATCH :q AND c.base_id = :base "
                    "ORDER BY bm25(knowledge_fts, 2.0, 1.0), f.rowid LIMIT :n"),
                    {"q": " OR ".join(f'"{w}"' for w in words), "base": self.id, "n": n})
            return [r[0] for r in rows]

    def name_search(self, query: str, n: int = CANDIDATES) -> list[int]:
        """Chunks titled with a dotted name the query mentions ("json.dumps", or the tail of a
        qualified name: "TextWrapper.fill"), exact titles first: a lookup, like going to a
        definition, for the names keyword search splits into common words."""
        names = list(dict.fromkeys(_DOTTED.findall(query)))
        if not names:
            return []
        found: list[int] = []
        with self.engine.connect() as c:
            for name in names:
                exact = c.execute(sa.select(chunks.c.id).where(
                    chunks.c.base_id == self.id, chunks.c.title == name).order_by(chunks.c.id))
                tail = c.execute(sa.select(chunks.c.id).where(
                    chunks.c.base_id == self.id, chunks.c.title.endswith("." + name,
                                                                          autoescape=True))
                    .order_by(chunks.c.id).limit(n))
                found += [r[0] for r in exact] + [r[0] for r in tail]
        return list(dict.fromkeys(found))[:n]

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        key = (self.engine.url.render_as_string(hide_password=True), self.id)
        with self.engine.connect() as c:
            updated = c.execute(sa.select(bases.c.updated).where(bases.c.id == self.id)).scalar()
            with _cache_lock:
                cached = _vector_cache.get(key)
                if cached and cached[0] == updated:
                    return cached[1], cached[2]
            rows = c.execute(sa.select(chunks.c.id, chunks.c.vector).where(
                chunks.c.base_id == self.id, chunks.c.vector.is_not(None)).order_by(chunks.c.id))
            ids, vecs = [], []
            for r in rows:
                ids.append(r.id)
                vecs.append(np.frombuffer(r.vector, dtype=np.float16))
        matrix = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, 1), np.float32)
        with _cache_lock:
            _vector_cache[key] = (updated, np.asarray(ids), matrix)
        return np.asarray(ids), matrix

    def dense_search(self, query: str, n: int = CANDIDATES) -> list[int]:
        ids, matrix = self._vectors()
        if not len(ids):
            return []
        q = self.embedder.encode([query])[0]
        # In torch, not numpy: numpy's BLAS threads would wait for the cores torch's threads
        # still spin on after encoding the query (100 ms instead of 1 ms on 2 cores).
        sims = torch.from_numpy(matrix) @ torch.from_numpy(q)
        top = torch.topk(sims, min(n, len(ids))).indices.numpy()
        return [int(ids[i]) for i in top]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The k best chunks for the query. mode: "hybrid" (fused), "keyword" or "dense"."""
        if mode not in ("hybrid", "keyword", "dense"):
            raise KnowledgeError(f"unknown search mode {mode!r}: hybrid, keyword or dense")
        if k < 1:
            raise KnowledgeError("k must be at least 1")
        ranked = {"name": self.name_search(query) if mode == "hybrid" else [],
                  "keyword": self.keyword_search(query) if mode != "dense" else [],
                  "dense": self.dense_search(query) if mode != "keyword" else []}
        scores: dict[int, float] = {}
        ranks: dict[int, dict[str, int]] = {}
        for kind, ids in ranked.items():
            for rank, chunk_id in enumerate(ids, 1):
                scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
                ranks.setdefault(chunk_id, {})[kind] = rank
        best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        if not best:
            return []
        with self.engine.connect() as c:
            rows = {r.id: r for r in c.execute(
                sa.select(chunks.c.id, chunks.c.position, chunks.c.title, chunks.c.text,
                          sources.c.name.label("source"))
                .join(sources, sources.c.id == chunks.c.source_id)
                .where(chunks.c.id.in_(best)))}
        return [Hit(rows[i].source, rows[i].position, rows[i].title, rows[i].text,
                    round(scores[i], 6), ranks[i].get("name"), ranks[i].get("keyword"),
                    ranks[i].get("dense"))
                for i in best if i in rows]


def list_bases(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return [r[0] for r in c.execute(sa.select(bases.c.name).order_by(bases.c.name))]


def describe_bases(engine: Engine) -> list[dict]:
    with engine.connect() as c:
        rows = c.execute(sa.text(
            "SELECT b.name, b.embedder, b.updated, "
            "(SELECT COUNT(*) FROM knowledge_sources s WHERE s.base_id = b.id) AS sources, "
            "(SELECT COUNT(*) FROM knowledge_chunks k WHERE k.base_id = b.id) AS chunks "
            "FROM knowledge_bases b ORDER BY b.name"))
        return [dict(r._mapping) for r in rows]


def print_progress(message: str) -> None:
    print(f"\r  {message}", end="", file=sys.stderr, flush=True)
