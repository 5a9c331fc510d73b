"""The web UI in a real browser: Debian's chromium driven by Playwright, against the real
server (uvicorn on 127.0.0.1, the tiny models). Upload PDFs, see them in the library, ask a
question, watch the answer stream in, see the retrieved pages and their similarity maps.

Playwright cannot download its own browser here, so the system's chromium is launched by path
(`make test` installs Debian's `chromium` where it is missing; PAGERAG_CHROMIUM overrides the
path). Set PAGERAG_UPDATE_SCREENSHOTS=1 to refresh the README's screenshots in docs/.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.server.app import create_app
from rag.service import PageRAG
from tests.conftest import CORPUS
from tests.pdfs import make_pdf
from tests.scripted import ScriptedGenerator
from tests.serving import running_server

pytestmark = [
    pytest.mark.browser,
    # Gradio's queue still uses pandas options that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # generous: a busy 2-core machine slows Gradio down a lot


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("PAGERAG_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no chromium found (install Debian's `chromium`, as `make test` does, "
            "or set PAGERAG_CHROMIUM)"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service(
        "browser",
        new_tokens=24,
        max_visual_tokens=64,  # a finer patch grid: the similarity map shows more detail
    )
    # The tiny model writes a whole answer in milliseconds: its chunks are handed out a little
    # apart, so a browser polling the page can see the answer grow.
    svc.generator = ScriptedGenerator(inner=svc.generator, delay=0.15)
    yield svc
    svc.close()


def settle(page: Any, selector: str) -> None:
    """Wait until the images under `selector` are loaded and Gradio's busy overlay is gone."""
    page.wait_for_function(
        f"[...document.querySelectorAll('{selector} img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    page.wait_for_selector(f"{selector} [data-testid='status-tracker'].hide", state="attached")
    page.wait_for_timeout(400)  # Gradio fades updated components in


def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("PAGERAG_UPDATE_SCREENSHOTS"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(tmp_path / name, ROOT / "docs" / name)


def test_upload_ask_stream_gallery_and_similarity_map(
    browser: Any, service: PageRAG, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    files = [make_pdf(tmp_path / "in" / "quarterly-report.pdf", ["Revenue 2015", "Costs 2015"])]
    table = CORPUS / "nics-background-checks-2015-11.pdf"
    if table.is_file():  # a real table makes a more telling screenshot
        files.append(table)
    notes = tmp_path / "in" / "notes.pdf"
    notes.write_text("plain text, not a PDF")
    with running_server(create_app(service)) as url:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#chat")

        # Library: drop the files, add them, see the documents and the per-file error.
        page.get_by_role("tab", name="Library").click()
        page.locator("#upload input[type=file]").set_input_files([str(f) for f in [*files, notes]])
        # Uploaded: the list shows the last file (its stem; the extension is a separate element).
        page.wait_for_function("document.querySelector('#upload').innerText.includes('notes')")
        page.locator("#add-button").click()
        # One progress line with a stage from the start; the library stays in view meanwhile
        # (no busy overlay on it).
        progress: list[str] = []
        covered = 0
        end = time.monotonic() + TIMEOUT_MS / 1000
        while "could not be read" not in page.inner_text("#upload-report"):
            assert time.monotonic() < end, "the upload did not end"
            progress.append(page.inner_text("#upload-status"))
            covered += page.locator(
                "#documents [data-testid='status-tracker']:not(.hide), "
                "#thumbs [data-testid='status-tracker']:not(.hide)"
            ).count()
            assert page.locator("#documents").is_visible()
            time.sleep(0.05)
        assert [t for t in progress if t.startswith("Adding: ")], progress
        assert covered == 0
        report = page.inner_text("#upload-report")
        assert f"Added {len(files)} documents" in report
        assert "notes.pdf: the file is plain text" in report
        page.wait_for_function(
            "document.querySelector('#documents').innerText.includes('quarterly-report.pdf')"
        )
        assert page.locator("#thumbs img").count() == len(files)
        settle(page, "#thumbs")
        screenshot(page, tmp_path, "ui-library.png")

        # Ask: the answer streams in, then the pages and their source chips appear.
        page.get_by_role("tab", name="Ask").click()
        page.locator("#question textarea").fill("What were the costs in 2015?")
        page.locator("#question textarea").press("Enter")
        bot = page.locator("#chat [data-testid='bot']")
        seen: list[str] = []
        early = False  # the pages showed while the answer was still being written
        end = time.monotonic() + TIMEOUT_MS / 1000
        while "retrieval" not in page.inner_text("#ask-note"):
            assert time.monotonic() < end, "no answer"
            if bot.count():
                seen.append(bot.last.inner_text())
                early |= page.locator("#pages img").count() == 2
            time.sleep(0.03)
        final = bot.last.inner_text()
        partial = [t for t in dict.fromkeys(seen) if t and t != final]
        assert partial, "the answer appeared at once instead of streaming"
        assert early, "the pages appeared only after the answer"
        page.wait_for_function("document.querySelectorAll('#pages img').length == 2")
        captions = page.locator("#pages .caption-label").all_inner_texts()
        assert len(captions) == 2 and all("score" in c for c in captions)
        chips = page.locator("#citations label")
        assert chips.count() == 2 and chips.first.inner_text().lstrip("★ ").startswith("[1]")

        # The similarity-map toggle swaps in the overlays.
        before = page.locator("#pages img").first.get_attribute("src")
        page.locator("#show-map input").check()
        page.wait_for_function(
            "[...document.querySelectorAll('#pages .caption-label')]"
            ".every(c => c.innerText.includes('similarity map'))"
        )
        assert page.locator("#pages img").first.get_attribute("src") != before
        settle(page, "#pages")
        screenshot(page, tmp_path, "ui.png")

        # A source chip opens its page in the gallery.
        chips.nth(1).click()
        page.wait_for_selector("#pages .preview")

        # Stop ends an answer being written; the partial text stays, marked. (The first
        # answer's chain ends by disabling Stop: wait for it, or it could land mid-answer.)
        # Chunks come 2.5 s apart now: a busy machine could otherwise finish the answer before
        # the click lands, and Stop would have nothing to stop.
        page.wait_for_function("document.querySelector('#stop-button').disabled")
        service.generator.delay = 2.5
        request.addfinalizer(lambda: setattr(service.generator, "delay", 0.15))
        page.locator("#show-map input").uncheck()
        page.locator("#question textarea").fill("And the revenue?")
        page.locator("#ask-button").click()
        page.wait_for_function(
            "document.querySelectorAll('#chat [data-testid=\"bot\"]').length == 2 && "
            "document.querySelectorAll('#chat [data-testid=\"bot\"]')[1].innerText.length > 0"
        )
        page.locator("#stop-button").click()
        page.wait_for_function("document.querySelector('#ask-note').innerText.includes('Stopped')")
        stopped = bot.last.inner_text()
        page.wait_for_timeout(3000)  # a chunk every 2.5 s: the answer would have grown
        assert bot.last.inner_text() == stopped
        assert service.generator.log[-1] == "start"  # closed mid-answer, not run to its end
        service.generator.delay = 0.15
        assert page.locator("#stop-button").is_disabled()
        assert service._model_lock.acquire(timeout=10)  # the generation let the model go
        service._model_lock.release()

        # A click on a row chooses its document; its title and tags can be edited and saved.
        page.get_by_role("tab", name="Library").click()
        page.locator("#documents [role=gridcell]", has_text="quarterly-report.pdf").first.click()
        page.get_by_text("Edit title and tags").click()
        title = page.locator("#edit-title input")
        page.wait_for_function("(document.querySelector('#edit-title input')?.value || '') !== ''")
        title.fill("Quarterly report")
        page.locator("#edit-tags input").fill("finance, q4")
        page.locator("#edit-save").click()
        page.wait_for_function(
            "document.querySelector('#documents').innerText.includes('finance, q4')"
        )
        page.wait_for_timeout(500)  # the refresh re-sends the menu: the result line stays
        assert "Saved quarterly-report.pdf" in page.inner_text("#edit-result")
        assert "Quarterly report" in page.inner_text("#documents")

        # Delete asks first, naming the document and its pages; Cancel keeps it.
        page.locator("#to-delete input").click()
        page.locator("#to-delete [role=option]", has_text="quarterly-report.pdf").click()
        page.get_by_role("button", name="Delete…").click()
        page.wait_for_selector("#delete-confirm-text", state="visible")
        prompt = page.inner_text("#delete-confirm-text")
        assert "Delete quarterly-report.pdf?" in prompt and "2 pages" in prompt
        page.locator("#delete-no").click()
        page.wait_for_selector("#delete-confirm", state="hidden")
        assert "quarterly-report.pdf" in page.inner_text("#documents")
        page.get_by_role("button", name="Delete…").click()
        page.locator("#delete-yes").click()
        page.wait_for_function(
            "document.querySelector('#upload-report').innerText.includes('Deleted')"
        )
        page.wait_for_function(
            "!document.querySelector('#documents').innerText.includes('quarterly-report.pdf')"
        )
        page.close()


def test_answers_render_as_plain_text_and_load_nothing(
    browser: Any, service: PageRAG, tmp_path: Path
) -> None:
    """A page can steer what the model writes: an answer with HTML, a Markdown image and a
    link shows as the literal text, and the browser fetches none of them."""
    hits: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    evil = f"http://127.0.0.1:{listener.server_address[1]}"
    answer = [
        f"PWNED <img src={evil}/img.png> ",
        f"![x]({evil}/md.png)\n",
        f"[click]({evil}/link) <script>fetch('{evil}/js')</script>",
    ]
    service.ingest([make_pdf(tmp_path / "in" / "plain.pdf", ["Plain text only"])])
    original = service.generator
    service.generator = ScriptedGenerator(*answer)
    try:
        with running_server(create_app(service)) as url:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            page.wait_for_selector("#chat")
            page.locator("#question textarea").fill("What is <i>plain</i>?")
            page.locator("#question textarea").press("Enter")
            page.wait_for_function(
                "document.querySelector('#ask-note').innerText.includes('retrieval')"
            )
            bot = page.locator("#chat [data-testid='bot']").last
            text = bot.inner_text()
            assert f"<img src={evil}/img.png>" in text and f"![x]({evil}/md.png)" in text
            assert f"[click]({evil}/link) <script>" in text
            assert bot.locator("img, a, script").count() == 0
            user = page.locator("#chat [data-testid='user']").last.inner_text()
            assert "What is <i>plain</i>?" in user
            page.wait_for_timeout(500)  # time for any stray request to show
            page.close()
    finally:
        service.generator = original
        listener.shutdown()
    assert not [u for u in requested if u.startswith(evil)] and hits == []


# Words cut across lines (a letter per line, an id broken every two characters), text cut
# off by its box, and the page wider than the phone, measured on the rendered page.
LAYOUT_PROBLEMS = """(selectors) => {
  const problems = [];
  const rects = (node, start, end) => {
    const range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, end);
    return [...range.getClientRects()];
  };
  for (const selector of selectors) {
    for (const root of document.querySelectorAll(selector)) {
      const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (!node.parentElement.offsetParent) continue;  // hidden
        for (const m of node.textContent.matchAll(/[A-Za-z0-9]{2,}/g)) {  // a word, an id
          const parts = rects(node, m.index, m.index + m[0].length);
          const lines = new Set(parts.map(r => Math.round(r.top))).size;
          // Broken although it would fit on one line of its cell: a wrong break.
          const width = parts.reduce((sum, r) => sum + r.width, 0);
          const box = node.parentElement.closest('td, th, .caption-label, p, li')
            || node.parentElement;
          if (lines > 1 && width <= box.clientWidth)
            problems.push(`${selector}: "${m[0]}" on ${lines} lines`);
        }
      }
    }
    for (const th of document.querySelectorAll(`${selector} th`)) {  // header text fits
      const text = th.querySelector('span') || th;
      if (!th.offsetParent || !text.firstChild) continue;
      const node = text.firstChild;
      const width = Math.max(0, ...rects(node, 0, node.length).map(r => r.width));
      if (width > th.clientWidth)
        problems.push(`${selector}: header "${th.innerText}" ${width} px in ${th.clientWidth}`);
    }
    for (const el of document.querySelectorAll(`${selector} .caption-label`)) {
      if (el.offsetParent && el.scrollWidth > el.clientWidth + 1)
        problems.push(`${selector}: caption "${el.innerText}" cut`);
    }
  }
  const page = document.documentElement.scrollWidth;
  if (page > window.innerWidth + 1) problems.push(`the page is ${page} px wide`);
  return problems;
}"""


def test_the_three_tabs_fit_a_phone(
    browser: Any, service: PageRAG, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    long_name = "annual-report-of-the-regional-board-2015-final-version.pdf"
    service.ingest([make_pdf(tmp_path / "in" / long_name, ["Revenue 2015", "Costs 2015"])])
    from rag.models.download import DOWNLOADS

    request.addfinalizer(lambda: DOWNLOADS.forget("vidore/colqwen2-base"))
    downloading = DOWNLOADS.track("vidore/colqwen2-base", "ColQwen2")  # as a first run shows it
    progress = downloading.__enter__()
    progress(total=4_400_000_000, unit="B", disable=True).update(1_100_000_000)
    with running_server(create_app(service)) as url:
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#chat")
        page.wait_for_function(
            "document.querySelector('#banner').innerText.includes('1.10 GB of 4.40 GB')"
        )
        banner = page.evaluate(LAYOUT_PROBLEMS, ["#banner"])
        downloading.__exit__(None, None, None)  # the download ends: the banner goes
        page.wait_for_function("document.querySelector('#banner').innerText.trim() === ''")
        page.locator("#question textarea").fill("What were the costs in 2015?")
        page.locator("#question textarea").press("Enter")
        page.wait_for_function(
            "document.querySelector('#ask-note').innerText.includes('retrieval')"
        )
        settle(page, "#pages")
        for selector in ("#ask-button", "#stop-button", "#question"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
        ask = page.evaluate(LAYOUT_PROBLEMS, ["#pages", "#ask-note", "#citations"])
        page.screenshot(path=str(tmp_path / "ui-phone-ask.png"), full_page=True)

        page.get_by_role("tab", name="Library").click()
        page.wait_for_function(
            f"document.querySelector('#documents').innerText.includes('{long_name[:20]}')"
        )
        settle(page, "#thumbs")
        library = page.evaluate(
            LAYOUT_PROBLEMS,
            [
                "#documents",
                "#thumbs",
                "#library-summary",
                "#upload",
                "#to-delete",
                "#edit-document",
            ],
        )
        page.screenshot(path=str(tmp_path / "ui-phone-library.png"), full_page=True)

        page.get_by_role("tab", name="Status").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('Retriever')")
        status = page.evaluate(LAYOUT_PROBLEMS, ["#status", "#intro"])
        page.screenshot(path=str(tmp_path / "ui-phone-status.png"), full_page=True)

        # The header's link to the other libraries: a plain page listing what this session
        # may open (here the one library, the UI at /).
        link = page.locator("#intro a", has_text="other libraries").get_attribute("href")
        assert link == "/libraries"
        page.goto(url + link)  # (Gradio opens Markdown links in a new tab)
        page.wait_for_selector("h1:text('Libraries')")
        listed = page.locator("li a")
        assert listed.all_inner_texts() == ["default"] and listed.get_attribute("href") == "/"
        page.close()
    assert (banner, ask, library, status) == ([], [], [], [])
