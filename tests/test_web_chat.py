"""The web chat in a real browser (headless Chromium through Playwright) against a real server:
type a message, watch the answer stream in, compare it with what the API says."""

from __future__ import annotations

import time

import httpx
import pytest
import test_serve
from conftest import ARTIFACTS
from test_serve import API_KEY, run_server

memorised = test_serve.memorised  # the session's tiny model that recites its conversations


@pytest.fixture(scope="module")
def web_server(memorised):
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    models = load_models([f"memo={memorised}", f"twin={memorised}"], max_batch=8)
    with run_server(create_app(models, [API_KEY])) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser):
    return browser.new_page(viewport={"width": 900, "height": 700})


def api_answer(url: str, text: str, **params) -> str:
    body = {"model": "memo", "messages": [{"role": "user", "content": text}], **params}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    return r.json()["choices"][0]["message"]["content"]


def answers(page) -> list[str]:
    return [" ".join(m.locator(".content").all_inner_texts())
            for m in page.locator(".msg.assistant").all()]


def send(page, text: str) -> None:
    before = len(answers(page))
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_selector(f".msg.assistant >> nth={before}", timeout=10_000)
    last = page.locator(".msg.assistant").last
    deadline = time.time() + 30
    while last.get_attribute("data-done") != "1":
        assert time.time() < deadline, "the answer never finished"
        time.sleep(0.02)


def test_web_chat_streams_answers_and_tools(web_server, page):
    page.goto(web_server + "/")
    # the server wants a key: the page says so, and lists the models once it has one
    page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    assert page.locator("#model-box").is_visible()
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
        "memo", "twin"]
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "64")
    page.click("#toggle-settings")

    send(page, "Hello!")
    want = api_answer(web_server, "Hello!", temperature=0, max_tokens=64)
    assert answers(page) == [want] and want
    chunks = int(page.locator(".msg.assistant").last.get_attribute("data-chunks"))
    assert chunks > 3  # the text arrived piece by piece

    page.click("#new-chat")  # the test model knows its conversations from their first turn
    assert answers(page) == []
    send(page, "What is 347 * 29?")  # a built-in tool runs; the page shows the call and result
    tool = page.locator(".msg.assistant").last.locator(".tool").first.inner_text(timeout=1000)
    assert "calculator" in tool and "10063" in tool
    assert answers(page) == ["347 * 29 = 10063."]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)


def test_a_think_setting_votes_and_shows_what_it_spent(web_server, page):
    page.goto(web_server + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2 || "
                           "document.getElementById('status').textContent.includes('API key')")
    if not page.locator("#settings").is_visible():
        page.click("#toggle-settings")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    page.fill("#temperature", "0.7")
    page.select_option("#think", "vote")
    page.fill("#think-n", "4")
    page.dispatch_event("#think", "change")
    page.click("#new-chat")
    send(page, "Hello!")
    assert answers(page) == ["Hello! How can I help you today?"]
    note = page.locator(".msg.assistant").last.locator(".thought").inner_text(timeout=1000)
    assert note.startswith("vote: 4 samples, ") and "tokens" in note
    page.select_option("#think", "")  # the next tests chat without it
    page.dispatch_event("#think", "change")


def test_markdown_is_rendered_and_html_escaped(web_server, page):
    page.goto(web_server + "/")
    html = page.evaluate("""() => renderMarkdown(
        "Some **bold** and *it* with `x < y`\\n\\n- one\\n- two\\n\\n1. first\\n\\n"
        + "```py\\nprint('<b>')\\n```\\n<img src=x onerror=alert(1)>")""")
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>x &lt; y</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li></ol>" in html
    assert "<pre><code>print(&#39;&lt;b&gt;&#39;)</code></pre>" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
