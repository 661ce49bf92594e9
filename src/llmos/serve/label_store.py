"""What the labeling app stores and computes: projects with instructions and prompt queues,
candidate answers, labels and their revisions; uploads, the queue, agreement and exports.

Three kinds of work, each a row in `label_labels` (one per item, labeler and kind):

- write: the ideal assistant answer to the item's prompt (starting from the model's draft)
  -> a conversation for `llmos sft`.
- compare: an order of the item's 2-4 candidate answers, best first (or only the best), with an
  optional reason -> comparisons for `llmos reward` / `llmos dpo`.
- review: the model critiques a label against the project's instructions; the labeler accepts
  it (status "accepted") or revises it (status "revised"; the old version is kept in
  `label_revisions`).

Functions here take an open `Session` and do no I/O of their own, so the HTTP routes, the CLI
and the tests share them.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import time
from collections import Counter, defaultdict

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    case,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from llmos.db import Base

KINDS = ("write", "compare")
MAX_PROMPT_CHARS = 20_000
MAX_UPLOAD_ERRORS = 20  # an upload's error message names at most this many lines

DEFAULT_INSTRUCTIONS = """\
# Labeling instructions

Write and choose the answers an excellent assistant would give. In order of importance:

## Harmless
- Refuse to help with things that would hurt people (weapons, malware, harassment), briefly and
  without lecturing; offer a safe alternative when there is one.
- Never reveal private data about real people.

## Truthful
- Say only what is true. When unsure, say so; never invent facts, quotes, numbers or sources.
- Arithmetic and code must be right: check them (the assistant may use its calculator and
  Python tools).

## Helpful
- Answer the question that was asked, first, then add what the user needs to act on it.
- Be concise: no filler, no repeating the question. Use lists and code blocks where they help.
- If the request is ambiguous, answer the most likely reading and say what you assumed.

## Comparing answers
Prefer the answer that breaks fewer of the rules above, judged in that order (a harmful answer
loses to an unhelpful one). Write a short reason when the choice is not obvious.
"""


# ---- tables ------------------------------------------------------------------------------------


class Project(Base):
    __tablename__ = "label_projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default=DEFAULT_INSTRUCTIONS)
    overlap: Mapped[int] = mapped_column(Integer, default=2)  # labels per item and kind
    answers: Mapped[int] = mapped_column(Integer, default=2)  # candidates per compare item
    created: Mapped[float] = mapped_column(Float, default=time.time)

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "instructions": self.instructions,
                "overlap": self.overlap, "answers": self.answers}


class Item(Base):
    __tablename__ = "label_items"
    __table_args__ = (UniqueConstraint("project_id", "prompt_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("label_projects.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[list] = mapped_column(JSON)  # messages, ending with the user's turn
    prompt_hash: Mapped[str] = mapped_column(String(64))
    given: Mapped[list | None] = mapped_column(JSON, nullable=True)  # uploaded answers
    created: Mapped[float] = mapped_column(Float, default=time.time)


class Answer(Base):
    """A candidate answer shown in compare, made once per item so every labeler sees the same."""

    __tablename__ = "label_answers"
    __table_args__ = (UniqueConstraint("item_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("label_items.id", ondelete="CASCADE"),
                                         index=True)
    position: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    content: Mapped[str] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float, default=time.time)


class Label(Base):
    __tablename__ = "label_labels"
    __table_args__ = (UniqueConstraint("item_id", "user_id", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("label_items.id", ondelete="CASCADE"),
                                         index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("label_users.id", ondelete="CASCADE"),
                                         index=True)
    kind: Mapped[str] = mapped_column(String(16))
    content: Mapped[str | None] = mapped_column(Text, nullable=True)  # write: the answer
    draft: Mapped[str | None] = mapped_column(Text, nullable=True)  # write: model's draft
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)  # compare: answer ids
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="submitted")
    critique: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    updated: Mapped[float] = mapped_column(Float, default=time.time)


class Revision(Base):
    """A label as it was before the labeler revised it."""

    __tablename__ = "label_revisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("label_labels.id", ondelete="CASCADE"),
                                          index=True)
    content: Mapped[str | None] = mapped_column(Text, nullable=True)
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    critique: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[float] = mapped_column(Float, default=time.time)


# ---- projects and uploads ----------------------------------------------------------------------


def add_project(s: Session, name: str, instructions: str | None = None, overlap: int = 2,
                answers: int = 2) -> Project:
    name = name.strip()
    if not 1 <= len(name) <= 128:
        raise ValueError("a project name is 1-128 characters")
    if not 1 <= overlap <= 10:
        raise ValueError("overlap (labels per item) must be 1-10")
    if not 2 <= answers <= 4:
        raise ValueError("answers per comparison must be 2-4")
    if s.scalar(select(Project).where(Project.name == name)):
        raise ValueError(f"a project named {name!r} already exists")
    project = Project(name=name, instructions=instructions or DEFAULT_INSTRUCTIONS,
                      overlap=overlap, answers=answers)
    s.add(project)
    s.flush()
    return project


class UploadError(ValueError):
    """A malformed upload: `problems` are (line number, what is wrong); nothing was imported."""

    def __init__(self, problems: list[tuple[int, str]]):
        self.problems = problems
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:MAX_UPLOAD_ERRORS])
        more = len(problems) - MAX_UPLOAD_ERRORS
        super().__init__(f"{len(problems)} malformed line{'s' * (len(problems) > 1)}, nothing "
                         f"was imported: {shown}" + (f"; and {more} more" if more > 0 else ""))


def _prompt_messages(raw) -> list[dict]:
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise ValueError("the prompt is neither a string nor a non-empty list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} needs a role of system, user or assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise ValueError(f"message {i} has no text content")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    return out


def parse_prompt_line(line: str, fmt: str) -> tuple[list[dict], list[str] | None]:
    """One uploaded line -> (prompt messages, given answers or None); ValueError says why not.

    jsonl: {"prompt": "text" | [messages], "answers": [2-4 strings]?} or {"messages": [...]}
    (a conversation up to the user's turn; a trailing assistant answer is dropped).
    text: the line is the user's message."""
    if fmt == "text":
        return _prompt_messages(line.strip()), None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    if "prompt" in rec:
        prompt = _prompt_messages(rec["prompt"])
    elif "messages" in rec:
        msgs = rec["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) \
                and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        prompt = _prompt_messages(msgs)
    else:
        raise ValueError("no 'prompt' or 'messages' field")
    given = rec.get("answers")
    if given is not None:
        if not isinstance(given, list) or not 2 <= len(given) <= 4 or not all(
                isinstance(a, str) and a.strip() for a in given):
            raise ValueError("'answers' must be a list of 2-4 non-empty strings")
    if sum(len(m["content"]) for m in prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    return prompt, given


def parse_upload(data: bytes, fmt: str) -> list[tuple[list[dict], list[str] | None]]:
    """Every prompt of an upload, or `UploadError` naming each bad line (blank lines skip)."""
    if fmt not in ("jsonl", "text"):
        raise ValueError("format must be jsonl or text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UploadError([(line, "not valid UTF-8")]) from None
    rows, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(parse_prompt_line(line, fmt))
        except ValueError as e:
            problems.append((n, str(e)))
    if problems:
        raise UploadError(problems)
    if not rows:
        raise UploadError([(1, "the upload holds no prompts")])
    return rows


def prompt_hash(prompt: list[dict]) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()


def add_items(s: Session, project: Project, rows) -> dict:
    """Queue the prompts (one transaction: the caller's). A prompt already queued is skipped."""
    seen = set(s.scalars(select(Item.prompt_hash).where(Item.project_id == project.id)))
    added = 0
    for prompt, given in rows:
        h = prompt_hash(prompt)
        if h in seen:
            continue
        seen.add(h)
        s.add(Item(project_id=project.id, prompt=prompt, prompt_hash=h, given=given))
        added += 1
    s.flush()
    return {"added": added, "duplicates": len(rows) - added}


# ---- the queue ---------------------------------------------------------------------------------


def next_item(s: Session, project: Project, user_id: int, kind: str,
              skip: list[int] = ()) -> Item | None:
    """The next item this labeler has not done in `kind`, among those with fewer than `overlap`
    labels; items that already have a label come first, so that the second labels that measure
    agreement arrive early instead of after the whole queue."""
    done = func.count(Label.id)
    q = (select(Item).outerjoin(Label, and_(Label.item_id == Item.id, Label.kind == kind))
         .where(Item.project_id == project.id)
         .group_by(Item.id)
         .having(done < project.overlap)
         .having(func.sum(case((Label.user_id == user_id, 1), else_=0)) == 0)
         .order_by(done.desc(), Item.id))
    if skip:
        q = q.where(Item.id.not_in(list(skip)))
    return s.scalars(q.limit(1)).first()


def candidates(s: Session, item_id: int) -> list[Answer]:
    return list(s.scalars(select(Answer).where(Answer.item_id == item_id)
                          .order_by(Answer.position)))


def submit(s: Session, item: Item, user_id: int, kind: str, content: str | None = None,
           ranking: list[int] | None = None, reason: str | None = None,
           draft: str | None = None) -> Label:
    """Store one label (IntegrityError from the unique constraint if this labeler has one)."""
    content, ranking = check_label(s, item, kind, content, ranking)
    label = Label(item_id=item.id, user_id=user_id, kind=kind, content=content,
                  ranking=ranking, reason=(reason or "").strip() or None, draft=draft)
    s.add(label)
    s.flush()
    return label


def check_label(s: Session, item: Item, kind: str, content, ranking):
    if kind == "write":
        if not isinstance(content, str) or not content.strip():
            raise ValueError("the answer is empty")
        return content.strip(), None
    if kind != "compare":
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    ids = [a.id for a in candidates(s, item.id)]
    if not ids:
        raise ValueError("this item has no answers to compare yet")
    if not isinstance(ranking, list) or not ranking or not all(
            isinstance(x, int) for x in ranking):
        raise ValueError("ranking is a list of answer ids, best first")
    if len(set(ranking)) != len(ranking) or not set(ranking) <= set(ids):
        raise ValueError(f"ranking must name distinct answers of this item ({ids})")
    if len(ranking) == len(ids) - 1:  # the last one's place is implied
        ranking = ranking + [i for i in ids if i not in ranking]
    return None, ranking


def revise(s: Session, label: Label, content=None, ranking=None, reason=None) -> Label:
    item = s.get(Item, label.item_id)
    content, ranking = check_label(s, item, label.kind, content, ranking)
    s.add(Revision(label_id=label.id, content=label.content, ranking=label.ranking,
                   reason=label.reason, critique=label.critique))
    label.content, label.ranking = content, ranking
    label.reason = (reason or "").strip() or None
    label.status, label.updated = "revised", time.time()
    return label


# ---- agreement ---------------------------------------------------------------------------------


def cohen_kappa(pairs: list[tuple[object, object]]) -> float | None:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e), where p_e is
    the agreement expected from each rater's own category shares. None when it is undefined
    (no pairs, or both raters always use one and the same category)."""
    if not pairs:
        return None
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(ca[c] * cb[c] for c in ca) / n / n
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def compare_agreement(labels: list[dict]) -> dict:
    """labels: {"item", "user", "ranking" (answer ids best first), "positions" ({id: position})}.
    Pairs of labelers on one item: how often they picked the same best answer, Cohen's kappa
    of that choice (by candidate position; the earlier label is rater A), and the share of
    answer pairs both ordered that they ordered the same way."""
    by_item = defaultdict(list)
    for lab in sorted(labels, key=lambda x: (x["item"], x["user"])):
        by_item[lab["item"]].append(lab)
    pairs, same_order, both_ordered = [], 0, 0
    for labs in by_item.values():
        for a, b in itertools.combinations(labs, 2):
            pairs.append((a["positions"][a["ranking"][0]], b["positions"][b["ranking"][0]]))
            ra, rb = _ordered(a["ranking"]), _ordered(b["ranking"])
            for pair in ra.keys() & rb.keys():
                both_ordered += 1
                same_order += ra[pair] == rb[pair]
    return {"items": sum(len(v) > 1 for v in by_item.values()), "pairs": len(pairs),
            "same_best": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
            "kappa": cohen_kappa(pairs),
            "pair_order_agreement": same_order / both_ordered if both_ordered else None}


def _ordered(ranking: list[int]) -> dict[tuple[int, int], bool]:
    """{(smaller id, larger id): whether the smaller id ranks first} for every ordered pair."""
    return {(min(a, b), max(a, b)): a < b for a, b in itertools.combinations(ranking, 2)}


def write_agreement(labels: list[dict]) -> dict:
    """labels: {"item", "user", "content"}. Mean text similarity (difflib ratio, 0..1) of two
    labelers' ideal answers to one prompt: free text has no exact agreement."""
    by_item = defaultdict(list)
    for lab in labels:
        by_item[lab["item"]].append(lab["content"])
    ratios = [difflib.SequenceMatcher(None, a, b).ratio()
              for texts in by_item.values() for a, b in itertools.combinations(texts, 2)]
    return {"items": sum(len(v) > 1 for v in by_item.values()), "pairs": len(ratios),
            "mean_similarity": sum(ratios) / len(ratios) if ratios else None}


def project_stats(s: Session, project: Project) -> dict:
    items = s.scalar(select(func.count()).select_from(Item)
                     .where(Item.project_id == project.id)) or 0
    rows = s.execute(select(Label, Item.id).join(Item, Item.id == Label.item_id)
                     .where(Item.project_id == project.id)).all()
    labels = [r[0] for r in rows]
    positions = {a.id: a.position for a in s.scalars(
        select(Answer).join(Item, Item.id == Answer.item_id)
        .where(Item.project_id == project.id))}
    compare = [{"item": x.item_id, "user": x.user_id, "ranking": x.ranking,
                "positions": positions} for x in labels if x.kind == "compare"]
    write = [{"item": x.item_id, "user": x.user_id, "content": x.content}
             for x in labels if x.kind == "write"]
    status = Counter(x.status for x in labels)
    reviewed = sum(1 for x in labels if x.critique)
    done = Counter((x.item_id, x.kind) for x in labels)
    return {"items": items,
            "labels": {k: sum(1 for x in labels if x.kind == k) for k in KINDS},
            "complete": {k: sum(1 for (i, kk), n in done.items() if kk == k
                                and n >= project.overlap) for k in KINDS},
            "status": dict(status), "reviewed": reviewed,
            "agreement": {"compare": compare_agreement(compare),
                          "write": write_agreement(write)}}


# ---- exports -----------------------------------------------------------------------------------


def export_conversations(s: Session, project: Project) -> list[dict]:
    """Every written label as {"messages": prompt + the ideal answer} (the `llmos sft` shape)."""
    rows = s.execute(select(Label, Item).join(Item, Item.id == Label.item_id)
                     .where(Item.project_id == project.id, Label.kind == "write")
                     .order_by(Item.id, Label.id)).all()
    return [{"messages": item.prompt + [{"role": "assistant", "content": label.content}]}
            for label, item in rows]


def export_comparisons(s: Session, project: Project) -> list[dict]:
    """Every ordered pair of every compare label, TRL's conversational shape: prompt messages,
    chosen and rejected assistant turns. A full order of k answers gives k(k-1)/2 pairs; a best
    pick gives best-vs-each-other. Pairs of identical texts, or with an empty one (no
    preference a trainer could read), are left out."""
    rows = s.execute(select(Label, Item).join(Item, Item.id == Label.item_id)
                     .where(Item.project_id == project.id, Label.kind == "compare")
                     .order_by(Item.id, Label.id)).all()
    out = []
    for label, item in rows:
        text = {a.id: a.content for a in candidates(s, item.id)}
        ranked = list(label.ranking)
        rest = [i for i in text if i not in ranked]
        pairs = list(itertools.combinations(ranked, 2)) + [(r, u) for r in ranked for u in rest]
        for chosen, rejected in pairs:
            if text[chosen] == text[rejected] or not (text[chosen].strip()
                                                       and text[rejected].strip()):
                continue
            out.append({"prompt": item.prompt,
                        "chosen": [{"role": "assistant", "content": text[chosen]}],
                        "rejected": [{"role": "assistant", "content": text[rejected]}]})
    return out


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
