"""Data: corpus sources -> documents -> token shards -> training batches."""

from llmos.data.shards import (
    ShardError,
    TokenLoader,
    iter_eval_batches,
    read_manifest,
    read_shard,
    write_manifest,
    write_shards,
)
from llmos.data.sources import (
    CorpusError,
    Document,
    SkipReport,
    SourceError,
    iter_corpus,
    iter_source,
    load_corpus,
    split_of,
)

__all__ = [
    "CorpusError",
    "Document",
    "ShardError",
    "SkipReport",
    "SourceError",
    "TokenLoader",
    "iter_corpus",
    "iter_eval_batches",
    "iter_source",
    "load_corpus",
    "read_manifest",
    "read_shard",
    "split_of",
    "write_manifest",
    "write_shards",
]
