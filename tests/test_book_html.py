"""The built book: its notebooks are clean, its pages load nothing from outside, and its panels work
in a real browser without a kernel.

Browser tests serve ``_build/html`` on localhost, drive the system's headless Chromium with Playwright
(its Python package, pointed at the binary; no browser download), and record every request the pages make. They skip when Chromium or the
built book is missing, unless ``LABKIT_REQUIRE_BROWSER=1`` (CI sets it), which makes them fail instead
(and builds the book if needed).

    make book && LABKIT_REQUIRE_BROWSER=1 .venv/bin/python -m pytest tests/test_book_html.py
    .venv/bin/python tests/test_book_html.py --screenshot book/images/loss-panel.png   # refresh the image
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "_build" / "html"
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
PAGES = ["book/intro.html", "book/how-to-use.html", "book/own-loop.html", "book/lab-tasks.html", "book/status.html",
         *(f"notebooks/{p.stem}.html" for p in CHAPTERS)]
REQUIRED = os.environ.get("LABKIT_REQUIRE_BROWSER", "").strip() not in ("", "0", "false", "no")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (LABKIT_REQUIRE_BROWSER=1 requires it)")
    pytest.skip(reason)


def chromium_binary() -> str | None:
    for name in (os.environ.get("LABKIT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


# -- the notebooks as committed (no browser needed) ----------------------------------------------------
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_notebooks_are_saved_clean(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"], "widget state makes myst-nb load the widget manager from a CDN"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "commit the notebook executed (notebooks/execute.py)"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    assert not any(WIDGET_VIEW in o.get("data", {}) for c in code for o in c.get("outputs", []))
    provenance = [c for c in code if "provenance" in c["metadata"].get("tags", [])]
    assert provenance and "quick mode" in "".join(provenance[0]["outputs"][0]["text"])
    sources = ["".join(c["source"]) for c in code]
    assert any(src.startswith("# NBVAL_CHECK_OUTPUT") for src in sources)
    panels = [src for src in sources if "trajectory_panel(" in src and not src.startswith("from labkit")]
    assert all(src.startswith("# NBVAL_IGNORE_OUTPUT") for src in panels)
    first = "".join(nb["cells"][0]["source"]).splitlines()
    assert re.fullmatch(r"\([\w-]+\)=", first[0]) and first[1].startswith("# "), "label, then the title"


# -- the built HTML as files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_book() -> Path:
    if not (HTML / "notebooks" / "loss_based.html").exists():
        if not REQUIRED:
            pytest.skip("no built book in _build/html (run `make book`)")
        subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO), "-W", "-n",
                        "--keep-going"], check=True, cwd=REPO)
    return HTML


def test_built_pages_reference_no_external_resource(built_book):
    loaded = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=[\"']((?:https?:)?//[^\"']+)", re.I)
    offenders = {}
    for page in built_book.rglob("*.html"):
        found = loaded.findall(page.read_text(errors="replace"))
        if found:
            offenders[str(page.relative_to(built_book))] = found[:3]
    assert not offenders, f"pages load resources from other sites: {offenders}"
    for page in PAGES:
        text = (built_book / page).read_text()
        assert not re.search(r"unpkg\.com|cdn\.jsdelivr|cdnjs\.", text), page


PANEL_FREE = {"serving", "sequences", "conclusions"}   # inference, text batching, the results summary: no rule to slide


# stale boxes and stubs an earlier version of the book carried, and the usual markers of unfinished text
PLACEHOLDERS = re.compile(r"Real training runs go here|not part of the package|\bTODO\b|\bFIXME\b|\bTBD\b|"
                          r"coming soon|lorem ipsum|\?\?\?", re.IGNORECASE)


def test_built_pages_carry_no_placeholder_text(built_book):
    found = {}
    for page in sorted(built_book.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", page.read_text(), flags=re.S)
        hits = sorted({m.group(0) for m in PLACEHOLDERS.finditer(text)})
        if hits:
            found[str(page.relative_to(built_book))] = hits
    assert not found, f"placeholder text in the built book: {found}"


def test_every_strategy_chapter_has_a_panel():
    for chapter in CHAPTERS:
        calls = "trajectory_panel(" in chapter.read_text()
        assert calls or chapter.stem in PANEL_FREE, f"{chapter.name} has no trajectory_panel"


def test_chapter_pages_carry_static_panels(built_book):
    for chapter in (c for c in CHAPTERS if c.stem not in PANEL_FREE):
        text = (built_book / "notebooks" / f"{chapter.stem}.html").read_text()
        assert 'class="labkit-panel"' in text and 'type="application/json"' in text, chapter.name
        assert WIDGET_VIEW not in text, "the HTML builder must prefer the static text/html view"


# -- a browser over the Chrome DevTools Protocol -------------------------------------------------------
class Browser:
    """Headless Chromium (the system's own binary) driven by Playwright, one page, recording every request."""

    def __init__(self, binary: str, width: int = 1280, height: int = 1000):
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        self.chromium = self.playwright.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        self.page = self.chromium.new_page(viewport={"width": width, "height": height})
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))

    def js(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return self.page.evaluate(expression)

    def wait_until(self, expression: str, timeout: float = 20) -> bool:
        """True once ``expression`` is truthy in the page, False after ``timeout`` seconds."""
        from playwright.sync_api import TimeoutError as Timeout

        try:
            self.page.wait_for_function(expression, timeout=timeout * 1000)
        except Timeout:
            return False
        return True

    def open(self, url: str) -> list[str]:
        """Navigate, wait for the load event, and return the URLs of every request the page made."""
        self.requests.clear()
        self.page.goto(url, wait_until="load")
        self.page.wait_for_timeout(300)  # late requests (fonts, MathJax) are still recorded
        return list(self.requests)

    def screenshot(self, path: Path, selector: str, above: int = 0, margin: int = 12):
        """PNG of the element ``selector`` plus ``above`` pixels of context over it."""
        element = self.page.locator(selector).first
        element.scroll_into_view_if_needed()
        box = element.bounding_box()
        clip = {"x": max(box["x"] - margin, 0), "y": max(box["y"] - margin - above, 0),
                "width": box["width"] + 2 * margin, "height": box["height"] + 2 * margin + above}
        self.page.screenshot(path=str(path), clip=clip)

    def close(self):
        try:
            self.chromium.close()
        finally:
            self.playwright.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """``root`` on a free localhost port, in a daemon thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def site(built_book):
    server, base = serve(built_book)
    yield base
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        unavailable("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright", reason="Playwright's Python package drives chromium (pip install playwright)")
    b = Browser(binary)
    yield b
    b.close()


def test_pages_make_no_request_outside_localhost(site, browser):
    outside = {}
    for page in PAGES:
        requests = browser.open(site + page)
        assert any(url.startswith(site) for url in requests), f"{page}: no request recorded at all?"
        timed = browser.js("performance.getEntriesByType('resource').map(e => e.name)")
        bad = [u for u in requests + timed if not u.startswith((site, "data:", "blob:", "about:"))]
        if bad:
            outside[page] = bad
    assert not outside, f"requests outside {site}: {outside}"


OVERFLOW = """(() => {
  // every output, table, formula, code block and image of the article: does it stick out of the text column
  // (unless inside its own horizontal scroll box, which must fit), and is an image shrunk below 60 %?
  const column = document.querySelector("main article, article.bd-article, main") || document.body;
  const right = column.getBoundingClientRect().right + 1;
  const scroller = el => {
    for (let e = el.parentElement; e && e !== column; e = e.parentElement) {
      const x = getComputedStyle(e).overflowX;
      if (x === "auto" || x === "scroll") return e;
    }
    return null;
  };
  const name = el => el.tagName.toLowerCase() + (el.className && el.className.baseVal === undefined
    ? "." + String(el.className).trim().split(/\\s+/).slice(0, 2).join(".") : "");
  const bad = [];
  for (const el of column.querySelectorAll("pre, table, mjx-container, img, .cell_output > div")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || el.closest(".labkit-panel")) continue;
    const own = scroller(el) || (["auto", "scroll"].includes(getComputedStyle(el).overflowX) ? el : null);
    const edge = own ? own.getBoundingClientRect().right : box.right;
    if (edge > right) bad.push(`${name(el)} sticks out by ${Math.round(edge - right)} px`);
    if (!own && el.scrollWidth > el.clientWidth + 1 && el.tagName !== "IMG" && el.tagName !== "MJX-CONTAINER")
      bad.push(`${name(el)} clips ${el.scrollWidth - el.clientWidth} px without a scroll box`);
    if (el.tagName === "IMG" && el.naturalWidth > 0 && box.width < 0.6 * el.naturalWidth)
      bad.push(`img shown at ${Math.round(100 * box.width / el.naturalWidth)} % of its ${el.naturalWidth} px`);
  }
  return bad;
})()"""


def test_nothing_overflows_its_column_and_no_image_is_shrunk(site, browser):
    problems = {}
    for page in PAGES:
        browser.open(site + page)
        browser.js("window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : true")
        bad = browser.js(OVERFLOW)
        if bad:
            problems[page] = sorted(set(bad))
    assert not problems, "\n".join(f"{page}: {'; '.join(bad)}" for page, bad in problems.items())


def test_math_is_typeset_from_the_vendored_mathjax(site, browser):
    requests = browser.open(site + "notebooks/loss_based.html")
    assert any("_static/vendor/mathjax/tex-chtml.js" in url for url in requests)
    assert browser.wait_until("document.querySelectorAll('mjx-container').length > 5"), "MathJax did not typeset"


def test_static_panel_renders_and_follows_its_sliders(site, browser):
    browser.open(site + "notebooks/loss_based.html")
    panel = "document.querySelector('.labkit-panel[data-strategy=\"loss\"]')"
    assert browser.wait_until(f"{panel} && {panel}.getAttribute('data-state') === 'ok'"), "panel did not render"
    path = f"{panel}.querySelector('path.lk-traj').getAttribute('d')"
    readout = f"{panel}.querySelector('.lk-readout').textContent"
    before, text_before = browser.js(path), browser.js(readout)
    assert before.startswith("M") and before.count("H") > 10

    def move(control: str, index: int) -> None:
        browser.js(f"""(() => {{ const el = {panel}.querySelector('[data-control="{control}"]');
            el.value = '{index}'; el.dispatchEvent(new Event(el.tagName === 'SELECT' ? 'change' : 'input'));
            }})()""")

    move("max_batch", 0)                       # 256 instead of 1024: the trajectory must change
    after = browser.js(path)
    assert after != before and browser.js(readout) != text_before
    assert "→ 256" in browser.js(readout) or "→ 128" in browser.js(readout)
    move("delta", 2)                           # variance: K becomes active, α greys out
    assert browser.js(f"{panel}.querySelector('[data-control=\"window\"]').disabled") is False
    assert browser.js(f"{panel}.querySelector('[data-control=\"alpha\"]').disabled") is True
    assert browser.js(path) != after


def test_static_panel_shows_the_strategy_error_for_an_invalid_point(site, browser):
    browser.open(site + "notebooks/strategies_overview.html")
    panel = "document.querySelector('.labkit-panel[data-strategy=\"exponential\"]')"
    assert browser.wait_until(f"{panel} && {panel}.getAttribute('data-state') === 'ok'")
    for control, index in (("multiple_of", 2), ("min_batch", 0)):   # m = 32 with min_batch = 8
        browser.js(f"""(() => {{ const el = {panel}.querySelector('[data-control="{control}"]');
            el.value = '{index}'; el.dispatchEvent(new Event('input')); }})()""")
    assert browser.js(f"{panel}.getAttribute('data-state')") == "error"
    readout = browser.js(f"{panel}.querySelector('.lk-readout').textContent")
    assert "min_batch=8 is not a multiple of multiple_of=32" in readout


def test_lr_panel_switches_rule(site, browser):
    browser.open(site + "notebooks/lr_coupling.html")
    panel = "document.querySelector('.labkit-panel[data-strategy=\"progressive\"]')"
    assert browser.wait_until(f"{panel} && {panel}.getAttribute('data-state') === 'ok'")
    lr = f"{panel}.querySelector('path.lk-lr').getAttribute('d')"
    before = browser.js(lr)
    browser.js(f"""(() => {{ const el = {panel}.querySelector('[data-control="lr_rule"]');
        el.value = 'none'; el.dispatchEvent(new Event('change')); }})()""")
    assert browser.js(lr) != before


def main(argv: list[str]) -> None:
    """Refresh the committed screenshot: ``python tests/test_book_html.py --screenshot PATH``."""
    target = Path(argv[argv.index("--screenshot") + 1]) if "--screenshot" in argv else \
        REPO / "book" / "images" / "loss-panel.png"
    binary = chromium_binary()
    if binary is None or not (HTML / "notebooks" / "loss_based.html").exists():
        raise SystemExit("needs chromium and a built book (make book)")
    server, base = serve(HTML)
    browser = Browser(binary, width=1280, height=1000)
    try:
        browser.open(base + "notebooks/loss_based.html")
        browser.wait_until("document.querySelectorAll('mjx-container').length > 5")
        browser.screenshot(target, '.labkit-panel[data-strategy="loss"]', above=150)
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv)
