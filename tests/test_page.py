"""The search page in a real headless browser (Debian's chromium driven by Playwright) against a live server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lsr.eval.loadtest import free_port, wait_until_ready

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); `make setup` installs it",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; `make setup` installs it")


@pytest.fixture(scope="module")
def server_url(hybrid_engine):
    import uvicorn

    from lsr.server.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(hybrid_engine.index_dir), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, 120)  # the index loads in the background
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        # offline: the page must not need anything but the server itself
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server_url)
                      else route.abort())
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.errors = errors
        yield page
        browser.close()


def test_search_page(page, server_url):
    page.goto(server_url + "/")
    expect = sync_api.expect
    expect(page.locator("footer")).to_contain_text("documents", timeout=30_000)  # stats loaded
    page.fill("#q", "random numbers")
    page.press("#q", "Enter")
    hits = page.locator("li.hit")
    expect(hits.first).to_be_visible(timeout=30_000)
    assert hits.count() == 10
    status = page.locator("#status")
    expect(status).to_contain_text("sparse")
    expect(status).to_contain_text("ms")
    assert float(status.get_attribute("data-latency")) > 0
    first_sparse = hits.first.locator(".doc-id").inner_text()
    marks = page.locator("li.hit mark")
    assert marks.count() > 0, "matched terms are highlighted"
    assert "random" in [m.lower() for m in marks.all_inner_texts()]
    assert page.locator("li.hit .term").count() > 0, "explain terms are shown"

    # inference-free queries (tokenizer + IDF table), then back to the model
    expect(page.locator("#query-encoder-label")).to_be_visible()
    page.select_option("#query_encoder", "inference-free")
    expect(status).to_contain_text("inference-free")
    expect(hits.first).to_be_visible()
    page.select_option("#query_encoder", "model")
    expect(status).not_to_contain_text("inference-free")

    # switch retriever: dense, then hybrid (fusion controls appear, per-retriever scores shown)
    page.click("#retriever button[data-value=dense]")
    expect(status).to_contain_text("dense")
    expect(hits.first).to_be_visible()
    page.click("#retriever button[data-value=hybrid]")
    expect(status).to_contain_text("hybrid")
    expect(page.locator("#fusion")).to_be_visible()
    expect(hits.first.locator(".meta")).to_contain_text("dense")
    assert "retriever=hybrid" in page.url
    assert hits.count() == 10 and first_sparse

    # expansion terms get their own highlight colour where a document contains them
    page.fill("#q", "how do I make a copy of a list")
    page.press("#q", "Enter")
    expect(status).to_contain_text("hybrid")
    expect(hits.first).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=False)

    # an error is shown, not swallowed
    page.fill("#q", "x" * 1001)
    page.evaluate("document.getElementById('q').removeAttribute('maxlength')")
    page.fill("#q", "x" * 1001)
    page.press("#q", "Enter")
    expect(status).to_contain_text("Error 400")
    assert page.errors == []
