"""`llmos knowledge`: knowledge bases (the LLM OS's disk) built from files and searched."""

from __future__ import annotations

import json
import sys

from llmos.cli.flags import RAW

DB_HELP = "database: a SQLite path or postgresql://... (default llmos.db)"


def add_knowledge(sub) -> None:
    s = sub.add_parser("knowledge", help="build and search knowledge bases for retrieval",
                       description="Knowledge bases: files cut into chunks, stored in the "
                       "database and found by keywords (BM25) and by meaning (sentence "
                       "embeddings), fused. The search_knowledge tool reads them "
                       "(docs/llm-os.md).")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    a = verbs.add_parser("add", help="read sources into a knowledge base (made if missing)",
                         formatter_class=RAW,
                         description="Read SOURCES into knowledge base NAME. A source is a file "
                         "(.txt .md .rst .py .html .pdf),\na folder (its files of those kinds) "
                         "or builtin:stdlib (the running Python's standard library).\nOnly "
                         "sources that are new or changed since the last add are read again.")
    a.add_argument("name", metavar="NAME")
    a.add_argument("sources", nargs="+", metavar="SOURCE")
    a.add_argument("--db", default="llmos.db", metavar="URL", help=DB_HELP)
    a.set_defaults(func=cmd_knowledge_add)

    q = verbs.add_parser("search", help="the best chunks for a query",
                         description="Print the K best chunks for QUERY (or for each line of "
                         "--queries FILE, one JSON line of hits per query).")
    q.add_argument("name", metavar="NAME")
    q.add_argument("query", nargs="?", metavar="QUERY")
    q.add_argument("-k", type=int, default=5, help="how many chunks (default 5)")
    q.add_argument("--queries", metavar="FILE", help="one query a line; prints JSON lines")
    q.add_argument("--json", action="store_true", help="print {\"hits\": [...]} as JSON")
    q.add_argument("--mode", default="hybrid", choices=["hybrid", "keyword", "dense"],
                   help="fused (default), BM25 only or embeddings only")
    q.add_argument("--db", default="llmos.db", metavar="URL", help=DB_HELP)
    q.set_defaults(func=cmd_knowledge_search)

    ls = verbs.add_parser("list", help="the knowledge bases, or one base's sources")
    ls.add_argument("name", nargs="?", metavar="NAME")
    ls.add_argument("--db", default="llmos.db", metavar="URL", help=DB_HELP)
    ls.set_defaults(func=cmd_knowledge_list)

    rm = verbs.add_parser("remove", help="remove sources from a base, or a whole base",
                          description="Remove the named SOURCES (as `list NAME` shows them) "
                          "from NAME, or with --all the whole knowledge base.")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("sources", nargs="*", metavar="SOURCE")
    rm.add_argument("--all", action="store_true", help="remove the whole knowledge base")
    rm.add_argument("--db", default="llmos.db", metavar="URL", help=DB_HELP)
    rm.set_defaults(func=cmd_knowledge_remove)


def cmd_knowledge_add(args):
    from llmos.agent.knowledge import KnowledgeBase, print_progress
    from llmos.data.chunking import iter_sources
    from llmos.data.sources import SkipReport

    list(iter_sources(args.sources, SkipReport()))  # a bad source fails before a base is made
    kb = KnowledgeBase.open(args.db, args.name, create=True)
    stats = kb.add(args.sources, progress=print_progress)
    if stats["read"]:
        print(file=sys.stderr)
    skipped = sum(stats["skipped"].get("counts", {}).values()) if stats["skipped"] else 0
    print(f"knowledge base {args.name!r}: {stats['sources']} sources ({stats['read']} read, "
          f"{stats['unchanged']} unchanged, {skipped} skipped), {stats['chunks']} new chunks, "
          f"{kb.count()} in all, {stats['seconds']} s")


def _print_hits(hits) -> None:
    for n, h in enumerate(hits, 1):
        first = h.text.splitlines()[0] if h.text else ""
        print(f"{n}. {h.cite}  {h.title}  (score {h.score:.4f})")
        print(f"   {first[:160]}")


def cmd_knowledge_search(args):
    from llmos.agent.knowledge import KnowledgeBase

    if (args.query is None) == (args.queries is None):
        raise ValueError("give a QUERY or --queries FILE (one of them)")
    kb = KnowledgeBase.open(args.db, args.name)
    if args.queries:
        with open(args.queries, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    hits = kb.search(line.strip(), args.k, args.mode)
                    print(json.dumps({"query": line.strip(),
                                      "hits": [h.to_dict() for h in hits]}), flush=True)
        return
    hits = kb.search(args.query, args.k, args.mode)
    if args.json:
        print(json.dumps({"query": args.query, "hits": [h.to_dict() for h in hits]}, indent=1))
    elif not hits:
        print("no matching chunks")
    else:
        _print_hits(hits)


def cmd_knowledge_list(args):
    from llmos import db
    from llmos.agent.knowledge import KnowledgeBase, describe_bases

    if args.name:
        for s in KnowledgeBase.open(args.db, args.name).sources():
            print(f"{s['chunks']:6d}  {s['name']}")
        return
    rows = describe_bases(db.open_database(args.db, must_exist=True))
    if not rows:
        print("no knowledge bases (make one: llmos knowledge add NAME SOURCES...)")
    for r in rows:
        print(f"{r['name']:24s} {r['sources']:6d} sources {r['chunks']:8d} chunks  "
              f"({r['embedder']})")


def cmd_knowledge_remove(args):
    from llmos.agent.knowledge import KnowledgeBase

    kb = KnowledgeBase.open(args.db, args.name)
    if args.all == bool(args.sources):
        raise ValueError("name the SOURCES to remove, or --all for the whole base (not both)")
    if args.all:
        kb.drop()
        print(f"removed knowledge base {args.name!r}")
    else:
        print(f"removed {len(args.sources)} sources ({kb.remove(args.sources)} chunks) "
              f"from {args.name!r}")


def add_memory(sub) -> None:
    s = sub.add_parser("memory", help="the facts profiles remembered about a user",
                       description="What the remember tool saved for a user (OpenAI's `user` "
                       "field in `llmos serve`, --user in `llmos chat`): list, add, forget.")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_ in (("list", "the user's memories, newest first"),
                        ("add", "save a memory by hand"),
                        ("forget", "delete memories by id (as list shows them)"),
                        ("clear", "delete all of the user's memories")):
        v = verbs.add_parser(verb, help=help_)
        if verb == "add":
            v.add_argument("text", metavar="TEXT")
        if verb == "forget":
            v.add_argument("ids", nargs="+", type=int, metavar="ID")
        v.add_argument("--user", default="default", help="whose memories (default: default)")
        v.add_argument("--db", default="llmos.db", metavar="URL", help=DB_HELP)
        v.set_defaults(func=cmd_memory)


def cmd_memory(args):
    from llmos.agent.memory import MemoryStore

    store = MemoryStore.open(args.db, must_exist=args.verb != "add")
    if args.verb == "list":
        saved = store.list(args.user)
        for m in saved:
            print(f"{m['id']:6d}  {m['text']}")
        if not saved:
            print(f"no memories for {args.user!r}")
    elif args.verb == "add":
        print(f"saved as {store.add(args.user, args.text)}")
    elif args.verb == "forget":
        missing = [i for i in args.ids if not store.forget(args.user, i)]
        if missing:
            raise ValueError(f"no memory {', '.join(map(str, missing))} for {args.user!r}; "
                             "`llmos memory list` shows them")
        print(f"forgot {len(args.ids)}")
    else:
        print(f"forgot {store.clear(args.user)} memories of {args.user!r}")


def add_profile(sub) -> None:
    s = sub.add_parser("profile", help="custom GPTs stored in the database: list, import, export",
                       description="Profiles (custom GPTs, docs/llm-os.md) kept in the database, "
                       "as the web UI's /profiles page makes them: import a TOML file, export "
                       "one back, list and delete them. Shipped profiles are listed too.")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_ in (("list", "the shipped profiles and those in the database"),
                        ("import", "store a profile's TOML file in the database"),
                        ("export", "write a profile (stored or shipped) as a TOML file"),
                        ("delete", "delete a profile from the database")):
        v = verbs.add_parser(verb, help=help_)
        if verb == "import":
            v.add_argument("file", metavar="FILE")
            v.add_argument("--replace", action="store_true",
                           help="overwrite a stored profile of the same name")
        elif verb != "list":
            v.add_argument("name", metavar="NAME")
        if verb == "export":
            v.add_argument("-o", "--out", metavar="FILE", help="where (default: print it)")
            v.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
        v.add_argument("--db", default="llmos.db", metavar="URL", help=DB_HELP)
        v.set_defaults(func=cmd_profile)


def cmd_profile(args):
    from pathlib import Path

    from llmos.agent import profiles
    from llmos.agent.profile_store import ProfileExists, ProfileStore, find
    from llmos.db import DatabaseMissing

    if args.verb == "import":
        profile = profiles.load(args.file) if Path(args.file).is_file() else None
        if profile is None:
            raise FileNotFoundError(f"no profile file {args.file}")
        try:
            new = ProfileStore.open(args.db).save(profile, replace=args.replace)
        except ProfileExists as e:
            raise ProfileExists(f"{e}; --replace overwrites it") from e
        print(f"{'stored' if new else 'replaced'} profile {profile.name!r} in {args.db}")
        return
    if args.verb == "list":
        for name in profiles.shipped():
            print(f"{name:32s} shipped")
        try:
            stored = ProfileStore.open(args.db, must_exist=True).all()
        except DatabaseMissing:  # nothing stored yet: no database is made just to say so
            stored = []
        for p in stored:
            print(f"{p.name:32s} database  {p.description}")
    elif args.verb == "export":
        text = find(args.name, args.db).to_toml()
        if not args.out:
            sys.stdout.write(text)
            return
        out = Path(args.out)
        if out.exists() and not args.force:
            raise FileExistsError(f"{out} exists: give --force to overwrite it")
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    else:
        store = ProfileStore.open(args.db, must_exist=True)
        if not store.delete(args.name):
            raise ValueError(f"no profile {args.name!r} in {args.db}; stored: "
                             f"{', '.join(store.names()) or 'none'}")
        print(f"deleted profile {args.name!r} from {args.db}")
