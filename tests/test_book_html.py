"""The built book: its notebooks are clean, its pages load nothing from outside, and its panels work
in a real browser without a kernel.

Browser tests serve ``_build/html`` on localhost, drive headless Chromium through the Chrome DevTools
Protocol (``websocket-client``), and record every request the pages make. They skip when Chromium or the
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
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "_build" / "html"
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
PAGES = ["book/intro.html", "book/how-to-use.html", "book/status.html",
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
    """Headless Chromium with a fresh profile, driven over one DevTools websocket."""

    def __init__(self, binary: str, width: int = 1280, height: int = 1000):
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="labkit-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--hide-scrollbars", "--mute-audio", f"--window-size={width},{height}",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        for _ in range(50):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                targets = json.loads(response.read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params):
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for_event(self, method: str, timeout: float = 30):
        deadline = time.time() + timeout
        self.ws.settimeout(timeout)
        while time.time() < deadline:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.js(expression):
                return True
            time.sleep(0.1)
        return False

    def open(self, url: str) -> list[str]:
        """Navigate, wait for the load event, and return the URLs of every request the page made."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for_event("Page.loadEventFired")
        self.wait_until("document.readyState === 'complete'")
        time.sleep(0.3)  # late requests (fonts, MathJax) are still recorded below
        self.call("Runtime.evaluate", expression="1")  # drain pending events
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, selector: str, above: int = 0, margin: int = 12):
        """PNG of the element ``selector`` plus ``above`` pixels of context over it."""
        box = self.js(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            el.scrollIntoView({{block: 'end'}}); window.scrollBy(0, 40); const r = el.getBoundingClientRect();
            return {{x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height}}; }})()""")
        time.sleep(0.3)
        clip = {"x": max(box["x"] - margin, 0), "y": max(box["y"] - margin - above, 0),
                "width": box["w"] + 2 * margin, "height": box["h"] + 2 * margin + above, "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=False)["data"]
        import base64

        path.write_bytes(base64.b64decode(data))

    def close(self):
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


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
    pytest.importorskip("websocket", reason="websocket-client is needed to drive chromium")
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
