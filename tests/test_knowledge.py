"""Knowledge bases: chunking real files, the keyword and embedding indexes in a real database
(SQLite and PostgreSQL), fused search, the `llmos knowledge` command and the search_knowledge
tool the model calls."""

from __future__ import annotations

import json
import textwrap

import pytest

from llmos.agent.knowledge import KnowledgeBase, KnowledgeError
from llmos.agent.knowledge_tool import knowledge_tool
from llmos.agent.tools import call_tool
from llmos.cli import main
from llmos.data.chunking import (
    PYDOCS,
    builtin_available,
    chunk_source,
    iter_sources,
    python_chunks,
)
from llmos.data.readable import readable_html
from llmos.data.sources import SkipReport, SourceError

PYTHON = textwrap.dedent('''\
    """Tools for brewing tea."""

    def steep(leaves, minutes=3):
        """Soak the leaves in hot water for the given number of minutes."""
        return leaves * minutes

    class Kettle:
        """A vessel that boils water."""

        def boil(self):
            """Heat the water until it bubbles."""
            self.hot = True
    ''')
MARKDOWN = "# Gardening\n\nRoses need sun.\n\n## Watering\n\nWater tomatoes every morning.\n"
RST = "Birds\n=====\n\nSparrows eat seeds.\n\nMigration\n---------\n\nSwallows fly south.\n"
HTML = ("<html><head><title>Trains</title><script>var x = 'hidden';</script></head><body>"
        "<nav>menu</nav><h1>Steam engines</h1><p>A locomotive burns coal to make steam.</p>"
        "<ul><li>Boiler</li><li>Piston</li></ul><a href='/more.html'>more</a></body></html>")


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "tea.py").write_text(PYTHON)
    (d / "garden.md").write_text(MARKDOWN)
    (d / "birds.rst").write_text(RST)
    (d / "trains.html").write_text(HTML)
    (d / "broken.txt").write_bytes(b"\xff\xfe\x00\x00binary")
    (d / "image.png").write_bytes(b"\x89PNG")
    return d


def test_python_chunks_follow_definitions_docstring_first():
    chunks = python_chunks("tea.py", "tea", PYTHON)
    assert [c.title for c in chunks] == ["tea", "tea.steep", "tea.Kettle", "tea.Kettle.boil"]
    steep = chunks[1]
    assert steep.cite == "tea.py#1"
    assert steep.text.startswith("Soak the leaves")
    assert "def steep(leaves, minutes=3):" in steep.text and "return leaves * minutes" in steep.text
    assert "def boil" not in chunks[2].text  # a method is its own chunk, not its class's


def test_prose_html_and_unreadable_files(docs):
    skips = SkipReport()
    found = {s.path.name: s for s in iter_sources([str(docs)], skips)}
    assert set(found) == {"tea.py", "garden.md", "birds.rst", "trains.html", "broken.txt"}
    assert skips.counts["unsupported_type"] == 1  # the PNG
    garden = chunk_source(found["garden.md"], skips)
    assert [c.title for c in garden] == ["garden.md > Gardening", "garden.md > Watering"]
    assert garden[1].text == "Water tomatoes every morning."
    birds = chunk_source(found["birds.rst"], skips)
    assert [c.title for c in birds] == ["birds.rst > Birds", "birds.rst > Migration"]
    trains = chunk_source(found["trains.html"], skips)
    text = " ".join(c.text for c in trains)
    assert "burns coal" in text and "Piston" in text
    assert "hidden" not in text and "menu" not in text  # scripts and navigation are not read
    assert chunk_source(found["broken.txt"], skips) == []
    assert skips.counts["binary"] == 1


def test_readable_html_keeps_structure_and_links():
    page = readable_html(HTML, base_url="http://site.test/a/")
    assert page.title == "Trains"
    assert "# Steam engines" in page.text and "- Boiler" in page.text
    assert page.links == [("more", "http://site.test/more.html")]


SPHINX = """<html><head><title>tea — Tea making — Docs 1.0</title></head><body>
<div class="related" role="navigation"><ul><li><a href="index.html">index</a></li></ul></div>
<div class="body"><h1>tea — Tea making<a class="headerlink" href="#tea">¶</a></h1>
<p>Steep green tea for three minutes.</p>
<pre><span>&gt;&gt;&gt; </span>steep(2)
6</pre>
<div role="navigation"><div><p>previous page</p></div></div><p>Serve hot.</p></div>
<div class="sphinxsidebar" role="navigation"><h3>Quick search</h3></div></body></html>"""


def test_documentation_pages_read_without_their_chrome():
    text = readable_html(SPHINX).text
    assert text.splitlines()[0] == "# tea — Tea making"  # no pilcrow, no navigation bar
    assert ">>> steep(2)\n6" in text  # an example keeps its lines
    assert "Serve hot." in text  # the text after a nested navigation block is read
    assert "index" not in text and "previous" not in text and "Quick search" not in text


def test_a_file_named_two_ways_is_one_source(docs, monkeypatch):
    monkeypatch.chdir(docs.parent)
    names = {s.name for spec in ("docs/garden.md", "./docs/garden.md", str(docs / "garden.md"),
                                 "docs/../docs/garden.md")
             for s in iter_sources([spec], SkipReport())}
    assert names == {"docs/garden.md"}
    assert "docs/garden.md" in {s.name for s in iter_sources(["./docs"], SkipReport())}


@pytest.mark.skipif(not builtin_available(PYDOCS), reason="Debian's python3.X-doc is not "
                    "installed (.ci/run installs it)")
def test_the_python_documentation_is_a_source():
    skips = SkipReport()
    pages = {s.name: s for s in iter_sources([PYDOCS], skips)}
    assert len(pages) > 200 and "pydocs/json.html" in pages
    chunks = chunk_source(pages["pydocs/json.html"], skips)
    basic = [c for c in chunks if c.title == "json.html > Basic Usage"]
    assert basic and "json.dump(obj, fp" in basic[0].text
    assert not any("¶" in c.title or "modules |" in c.text for c in chunks)


def test_pdf_pages_are_read(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.text(0.1, 0.5, "Photosynthesis turns light into sugar.")
    fig.savefig(tmp_path / "plants.pdf")
    plt.close(fig)
    skips = SkipReport()
    [source] = iter_sources([str(tmp_path / "plants.pdf")], skips)
    [chunk] = chunk_source(source, skips)
    assert chunk.title == "plants.pdf p.1" and "Photosynthesis" in chunk.text


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        list(iter_sources([str(tmp_path / "missing")], SkipReport()))
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(SourceError, match="unsupported file type"):
        list(iter_sources([str(tmp_path / "x.bin")], SkipReport()))
    with pytest.raises(SourceError, match="builtin:stdlib"):
        list(iter_sources(["builtin:nope"], SkipReport()))


def test_build_search_update_and_remove(docs, database_url):
    kb = KnowledgeBase.open(database_url, "notes", create=True)
    stats = kb.add([str(docs)])
    assert stats["read"] == 5 and stats["chunks"] == kb.count() > 6
    assert stats["skipped"]["counts"] == {"unsupported_type": 1, "binary": 1}

    hit = kb.search("how long should tea leaves soak", k=3)[0]
    assert hit.title == "tea.steep" and hit.cite.endswith("tea.py#1")
    assert kb.search("tea.Kettle.boil", k=1)[0].title == "tea.Kettle.boil"  # by name
    # Each ranking works alone: words for BM25, meaning for the embeddings.
    assert kb.search("tomatoes", k=1, mode="keyword")[0].title == "garden.md > Watering"
    assert kb.search("railway locomotive fuel", k=1, mode="dense")[0].source.endswith(
        "trains.html")

    assert kb.add([str(docs)])["read"] == 0  # nothing changed: nothing is read again
    (docs / "garden.md").write_text("# Gardening\n\nWater cucumbers at night.\n")
    again = kb.add([str(docs)])
    assert again["read"] == 1 and again["unchanged"] == 4
    assert kb.search("tomatoes", k=5, mode="keyword") == []  # the old text is gone everywhere
    assert kb.search("cucumbers", k=1)[0].text == "Water cucumbers at night."

    reopened = KnowledgeBase.open(database_url, "notes")  # what was stored stays stored
    before = reopened.count()
    birds = [s["name"] for s in reopened.sources() if s["name"].endswith("birds.rst")]
    assert reopened.remove(birds) == 2 and reopened.count() == before - 2
    with pytest.raises(KnowledgeError, match="not in knowledge base"):
        reopened.remove(["nope.txt"])
    reopened.drop()
    with pytest.raises(KnowledgeError, match="no knowledge base 'notes'"):
        KnowledgeBase.open(database_url, "notes")


def test_bad_names_and_queries(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    with pytest.raises(KnowledgeError, match="bad knowledge base name"):
        KnowledgeBase.open(url, "../etc", create=True)
    kb = KnowledgeBase.open(url, "empty", create=True)
    assert kb.search("anything at all") == []
    assert kb.search("?!") == []  # no words: no keyword query, and nothing to embed against
    with pytest.raises(KnowledgeError, match="unknown search mode"):
        kb.search("x", mode="magic")


def test_search_knowledge_tool(docs, tmp_path):
    kb = KnowledgeBase.open(f"sqlite:///{tmp_path / 'k.db'}", "notes", create=True)
    kb.add([str(docs / "tea.py"), str(docs / "garden.md")])
    tool = knowledge_tool([kb], k=2, max_chars=400)
    out = call_tool("search_knowledge", {"query": "tea.steep"}, {tool.name: tool})
    first = out.splitlines()[0]
    assert first.startswith(f"[{docs / 'tea.py'}#1] tea.steep: Soak the leaves")
    assert len(out.splitlines()) == 2 and all(len(x) <= 200 for x in out.splitlines())
    assert call_tool("search_knowledge", {"query": "  "}, {tool.name: tool}) == \
        "error: empty query"
    assert "missing argument(s): query" in call_tool("search_knowledge", {}, {tool.name: tool})
    assert "unexpected argument" in call_tool("search_knowledge", {"query": "a", "k": 9},
                                              {tool.name: tool})


def test_knowledge_command(docs, tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    main(["knowledge", "add", "notes", str(docs), "--db", db])
    assert "5 read" in capsys.readouterr().out
    main(["knowledge", "search", "notes", "soak tea leaves", "-k", "2", "--json", "--db", db])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 2 and hits[0]["title"] == "tea.steep"
    assert {"source", "text", "score", "cite"} <= set(hits[0])
    queries = tmp_path / "q.txt"
    queries.write_text("tomatoes\n\nsteam engines\n")
    main(["knowledge", "search", "notes", "--queries", str(queries), "-k", "1", "--db", db])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["query"] for x in lines] == ["tomatoes", "steam engines"]
    assert lines[0]["hits"][0]["title"] == "garden.md > Watering"
    main(["knowledge", "list", "--db", db])
    assert "notes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["knowledge", "search", "nothere", "x", "--db", db])
    assert "no knowledge base 'nothere'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["knowledge", "remove", "notes", "--db", db])  # neither sources nor --all
    main(["knowledge", "remove", "notes", "--all", "--db", db])
    main(["knowledge", "list", "--db", db])
    assert "no knowledge bases" in capsys.readouterr().out


def test_lookup_conversations_show_the_passage_the_live_tool_returns(tmp_path):
    """builtin:assistant's lookup turns must read exactly what search_knowledge will return:
    the same chunk, rendered the same way."""
    import sysconfig
    from pathlib import Path

    from llmos.data.builtin.assistant import assistant_dataset
    from llmos.data.builtin.lookup import INSTRUCTIONS, PASSAGE_CHARS

    train, _ = assistant_dataset()
    lookups = [c for c in train if c.task == "lookup" and c.subject.startswith("textwrap.")]
    assert lookups
    conv = lookups[0]
    assert conv.messages[0] == {"role": "system", "content": INSTRUCTIONS}
    call, shown, answer = conv.messages[2], conv.messages[3]["content"], conv.messages[4]
    assert call["tool_calls"][0]["function"]["arguments"] == {"query": conv.subject}
    assert answer["content"].endswith(f"[{shown[1:shown.index(']')]}]")  # cites the passage

    textwrap_py = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    kb = KnowledgeBase.open(f"sqlite:///{tmp_path / 'k.db'}", "t", create=True)
    kb.add([str(textwrap_py)])
    longer = len(str(textwrap_py)) - len("textwrap.py")  # the source is named by its path
    tool = knowledge_tool([kb], k=1, max_chars=PASSAGE_CHARS + longer)
    live = call_tool("search_knowledge", {"query": conv.subject}, {tool.name: tool})
    assert live == shown.replace("[textwrap.py#", f"[{textwrap_py}#", 1)


def test_lookup_answers_are_scored_without_their_citation():
    from llmos.envs.verifiers import score

    gold = "Remove any common leading whitespace from every line in text."
    answer = "`textwrap.dedent` removes any common leading whitespace from every line in " \
             "text. [textwrap.py#14]"
    assert score("lookup", gold, answer) > score("docstring", gold, answer)
    assert score("lookup", gold, "[textwrap.py#14]") == 0.0


def test_assistant_eval_asks_lookups_only_where_the_tool_is(tmp_path):
    from llmos.agent.tools import BUILTIN_TOOLS
    from llmos.data.builtin.assistant import assistant_dataset
    from llmos.evals.assistant_tasks import plan

    _, heldout = assistant_dataset()
    assert "lookup" not in {c.task for c in plan(heldout, 400)}
    kb = KnowledgeBase.open(f"sqlite:///{tmp_path / 'k.db'}", "t", create=True)
    tools = {**BUILTIN_TOOLS, "search_knowledge": knowledge_tool([kb])}
    assert "lookup" in {c.task for c in plan(heldout, 400, tools)}


@pytest.mark.skipif(not builtin_available(PYDOCS), reason="Debian's python3.X-doc is not "
                    "installed (.ci/run installs it)")
def test_questions_find_the_documentation_page_that_answers_them(tmp_path):
    """Retrieval on prose written by people: a few pages of the Library Reference, and
    questions asked in other words than the page's."""
    from llmos.data.chunking import PYDOCS_DIR

    pages = [str(PYDOCS_DIR / f"{m}.html") for m in ("json", "textwrap", "shutil", "random",
                                                       "zipfile")]
    kb = KnowledgeBase.open(str(tmp_path / "docs.db"), "docs", create=True)
    kb.add(pages)
    asked = {"How can I make the JSON text indented so people can read it?": "json.html",
             "strip the margin that all lines of a text share": "textwrap.html",
             "copy a folder with everything inside it": "shutil.html",
             "choose one element of a list at random": "random.html",
             "read a file out of a compressed archive": "zipfile.html"}
    for question, page in asked.items():
        top = kb.search(question, 3)
        assert any(h.source.endswith(page) for h in top), (question, [h.source for h in top])
