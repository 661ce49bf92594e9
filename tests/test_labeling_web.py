"""The labeling app in a real browser (headless Chromium through Playwright) against a real
server with a served model: set up the owner, make a project, upload prompts (a malformed file
first), write from the model's draft, compare its sampled answers, have it review a label,
edit the instructions, label as a second person, export - then finetune on the export with
`llmos sft` and read the comparisons back."""

from __future__ import annotations

import json
import time

import pytest
import test_serve
from conftest import ARTIFACTS
from test_labeling import jsonl, label_server

memorised = test_serve.memorised

PROMPTS = [{"prompt": "Hello!"},
           {"prompt": "What is 347 * 29?",
            "answers": ["347 * 29 = 10063.", "347 * 29 = 10000.", "Sorry, I can't do math."]}]


def wait_status(page, text: str) -> None:
    page.wait_for_function("t => document.getElementById('status').textContent.includes(t)",
                           arg=text, timeout=30_000)


def log_in(page, name: str, password: str) -> None:
    page.wait_for_selector("#view-login:not([hidden])")
    page.fill("#login-name", name)
    page.fill("#login-password", password)
    page.click("#login-submit")
    page.wait_for_selector("#view-projects:not([hidden])")


@pytest.mark.slow
def test_label_in_the_browser_then_train_on_the_export(browser, database_url, memorised,
                                                       tmp_path):
    from llmos import cli
    from llmos.data.comparisons import read_comparisons
    from llmos.serve.served import load_models

    models = load_models([f"memo={memorised}"], max_batch=8)
    with label_server(database_url, models) as url:
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(url + "/label")

        # the first visitor makes the owner account
        page.wait_for_selector("#setup-note:not([hidden])")
        log_in(page, "ann", "owner-password")
        assert page.inner_text("#whoami") == "ann (owner)"
        page.fill("#new-project-name", "greetings")
        page.click("#new-project button[type=submit]")
        page.wait_for_selector("#tab-data:not([hidden])")

        # a malformed upload is refused whole, naming its lines; a good one is queued
        page.set_input_files("#upload-file", files=[{
            "name": "bad.jsonl", "mimeType": "text/plain",
            "buffer": (jsonl(PROMPTS) + '{"prompt": 3}\n').encode()}])
        page.click("#upload")
        wait_status(page, "line 3")
        assert "nothing was imported" in page.inner_text("#status")
        page.set_input_files("#upload-file", files=[{
            "name": "prompts.jsonl", "mimeType": "text/plain", "buffer": jsonl(PROMPTS).encode()}])
        page.click("#upload")
        wait_status(page, "queued 2 prompts")
        assert "2" in page.inner_text("#stats tr:first-child td")

        # write: the model's draft is in the box; the labeler edits it
        page.click("#tabs a[data-tab=write]")
        page.wait_for_function("document.getElementById('write-answer').value.length > 0",
                               timeout=30_000)
        assert page.inner_text("#write-prompt").strip().endswith("Hello!")
        assert page.input_value("#write-answer") == "Hello! How can I help you today?"
        page.fill("#write-answer", "Hello! What can I do for you today?")
        page.click("#write-submit")
        wait_status(page, "saved")

        # compare: the model's two sampled answers (first prompt), then the uploaded three
        page.click("#tabs a[data-tab=compare]")
        page.wait_for_selector("#compare-answers .answer >> nth=1", timeout=30_000)
        page.locator("#compare-answers .best").first.click()
        page.fill("#compare-reason", "the first one greets back")
        page.click("#compare-submit")
        page.wait_for_selector("#compare-answers .answer >> nth=2", timeout=30_000)
        texts = page.locator("#compare-answers .answer-text").all_inner_texts()
        assert sorted(texts) == sorted(PROMPTS[1]["answers"])
        order = [PROMPTS[1]["answers"][i] for i in (0, 2, 1)]  # right, honest, wrong
        ids = page.eval_on_selector_all("#compare-answers .answer", "els => els.map(e => "
                                        "[e.dataset.id, e.querySelector('.answer-text')"
                                        ".textContent])")
        rank_of = {text: order.index(text) + 1 for text in order}
        for answer_id, text in ids:
            page.select_option(f"#rank-{answer_id}", str(rank_of[text]))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "labeling_compare.png"), full_page=True)
        page.click("#compare-submit")
        wait_status(page, "saved")
        page.wait_for_selector("text=Nothing left to compare")

        # review: the model critiques the written answer; ann revises it
        page.click("#tabs a[data-tab=review]")
        page.locator("#review-list a", has_text="write").click()
        page.click("#review-critique")
        page.wait_for_selector("#review-critique-text:not([hidden])", timeout=30_000)
        assert page.locator("#review-edit-box").is_visible()
        page.screenshot(path=str(ARTIFACTS / "labeling_review.png"), full_page=True)
        page.fill("#review-edit", "Hello! How can I help you today?")
        page.click("#review-revise")
        wait_status(page, "revised")
        assert "revised" in page.inner_text("#review-list")
        page.locator("#review-list a", has_text="compare").first.click()
        page.click("#review-accept")
        wait_status(page, "accepted")
        assert page.locator("#review-edit-box").is_hidden()  # a comparison is re-ranked

        # the owner edits the instructions; labelers read them rendered
        page.click("#tabs a[data-tab=instructions]")
        assert "Harmless" in page.inner_text("#instructions-view h2 >> nth=0")
        page.fill("#instructions-edit", "# Greetings\n\n- Greet back **warmly**.\n")
        page.click("#instructions-save")
        wait_status(page, "instructions saved")
        assert page.inner_html("#instructions-view") == (
            "<h1>Greetings</h1><ul><li>Greet back <strong>warmly</strong>.</li></ul>")

        # a second labeler: account made by the owner, then the same first prompt
        page.click("header h1 a")
        page.wait_for_selector("#new-user:not([hidden])")
        page.fill("#new-user-name", "bob")
        page.fill("#new-user-password", "labeler-password")
        page.click("#new-user button[type=submit]")
        wait_status(page, "added bob")
        page.click("#logout")
        log_in(page, "bob", "labeler-password")
        assert page.locator("#new-project").is_hidden()  # not an owner
        page.click("text=greetings")
        page.wait_for_function("document.getElementById('write-answer').value.length > 0",
                               timeout=30_000)
        # the prompt ann labeled comes first: its second label measures agreement
        assert page.inner_text("#write-prompt").strip().endswith("Hello!")
        page.click("#write-submit")
        wait_status(page, "saved")
        page.click("#tabs a[data-tab=compare]")
        page.wait_for_selector("#compare-answers .answer >> nth=1", timeout=30_000)
        page.locator("#compare-answers .best").first.click()
        page.click("#compare-submit")
        wait_status(page, "saved")
        page.click("#tabs a[data-tab=data]")
        assert page.locator("#upload").is_hidden()

        # back as the owner: progress, agreement and the exports
        page.click("#logout")
        log_in(page, "ann", "owner-password")
        page.click("text=greetings")
        page.click("#tabs a[data-tab=data]")
        page.wait_for_selector("#stats tr")
        stats = page.inner_text("#stats")
        assert "2 (1 prompts done)" in stats  # two written answers of the first prompt
        assert "of 1 pairs of labelers" in stats
        page.screenshot(path=str(ARTIFACTS / "labeling_stats.png"), full_page=True)
        exports = {}
        for kind in ("conversations", "comparisons"):
            href = page.get_attribute(f"#export-{kind}", "href")
            r = page.request.get(url + href)
            assert r.ok
            exports[kind] = tmp_path / f"{kind}.jsonl"
            exports[kind].write_text(r.text())
        page.close()

    convs = [json.loads(x) for x in exports["conversations"].read_text().splitlines()]
    assert [c["messages"][-1]["content"] for c in convs] == [
        "Hello! How can I help you today?", "Hello! How can I help you today?"]
    pairs, skipped = read_comparisons([str(exports["comparisons"])])
    assert skipped.total == 0 and len(pairs) >= 3  # the three-answer order alone gives 3

    # train from the export: a few steps of `llmos sft` on the labeled conversations
    out = tmp_path / "sft"
    t0 = time.time()
    cli.main(["sft", "--model", str(memorised), "--data", str(exports["conversations"]),
              "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
              "--set", "sft.train.max_steps=3", "--set", "sft.train.batch_size=2",
              "--set", "sft.train.seq_len=64", "--set", "sft.val_fraction=0",
              "--set", "sft.eval_items=0", "--set", "sft.train.eval_every=0",
              "--set", "sft.train.warmup_steps=1", "--set", "sft.train.compile=false",
              "--set", "sft.train.dtype=fp32", "--set", "sft.train.log_every=1"])
    meta = json.loads((out / "llmos.json").read_text())
    assert meta["step"] == 3 and time.time() - t0 < 120
