"""What the panel tests share: the panel's embedded JSON, its script run in node on a stand-in DOM, and the
panel alone in Chromium (through tests/test_book_html.py's Browser). Each checks that the static view only
looks up what Python precomputed: its readout must equal ``panel.readout`` at every point it visits."""
from __future__ import annotations

import json
import re
import subprocess

import pytest


def embedded_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="([^"]+)-data">(.*?)</script>', page, re.S)
    assert match, "the static HTML has no embedded JSON data"
    return json.loads(match.group(2))


NODE_DOM = r"""
function El(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.listeners = {};
  this.textContent = ""; this.innerHTML = ""; this.value = ""; this.classList = {toggle: function () {}}; }
El.prototype.appendChild = function (c) { this.children.push(c); return c; };
El.prototype.setAttribute = function (k, v) { this.attrs[k] = String(v); };
El.prototype.getAttribute = function (k) { return this.attrs[k]; };
El.prototype.addEventListener = function (k, f) { (this.listeners[k] = this.listeners[k] || []).push(f); };
var parts = {".lk-controls": new El("div"), ".lk-plot": new El("div"), ".lk-readout": new El("div")};
var root = new El("div"); root.querySelector = function (s) { return parts[s]; };
var inputs = [];
global.window = {};
global.document = {
  getElementById: function (id) { return /-data$/.test(id) ? {textContent: DATA} : root; },
  createElement: function (tag) {
    var e = new El(tag); if (tag === "input" || tag === "select") inputs.push(e); return e;
  },
};
"""
NODE_MOVES = r"""
var lines = [parts[".lk-readout"].textContent];
MOVES.forEach(function (m) {
  inputs[m[0]].value = String(m[1]);
  inputs[m[0]].listeners[EVENT].forEach(function (f) { f(); });
  lines.push(parts[".lk-readout"].textContent);
});
console.log(JSON.stringify({lines: lines, state: root.attrs["data-state"], svg: parts[".lk-plot"].innerHTML}));
"""


def run_in_node(panel, moves, tmp_path, event: str = "change") -> dict:
    """Run the panel's script in node on a stand-in DOM, move its controls (``moves``: [control index,
    option index] pairs, each followed by ``event``) and return the readout after each move, the state
    and the SVG."""
    script = re.search(r"<script>(.*?)</script>", panel.to_html(), re.S).group(1)
    path = tmp_path / "panel.js"
    path.write_text(f"var DATA = {json.dumps(json.dumps(panel.data()))};\nvar MOVES = {json.dumps(moves)};\n"
                    f"var EVENT = {json.dumps(event)};\n"
                    + NODE_DOM + script + NODE_MOVES)
    result = subprocess.run(["node", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def expected_lines(panel, moves) -> list[str]:
    """What the readout should say after each move, computed in Python."""
    index = [panel.options[k].index(panel.initial[k]) for k in panel.options]
    lines = [panel.readout()]
    for control, j in moves:
        index[control] = j
        lines.append(panel.readout(**{k: panel.options[k][i] for k, i in zip(panel.options, index)}))
    return lines


def check_in_chromium(panel, name, control, tmp_path, chosen):
    """The panel alone on a local page in Chromium: it requests nothing else, renders, writes the Python
    readout, and after ``control`` is set to ``chosen[control]`` writes ``panel.readout(**chosen)``."""
    book_html = pytest.importorskip("test_book_html")
    binary = book_html.chromium_binary()
    if binary is None:
        book_html.unavailable("chromium is not installed (apt-get install -y chromium)")
    try:
        browser = book_html.Browser(binary)
    except ImportError as err:
        book_html.unavailable(f"{err.name} is needed to drive chromium")
    (tmp_path / "index.html").write_text(f"<!doctype html><meta charset=utf-8><body>{panel.to_html()}</body>")
    server, base = book_html.serve(tmp_path)
    try:
        requests = browser.open(base + "index.html")
        assert requests and all(u.startswith((base, "data:", "about:")) for u in requests), requests
        root = f"document.querySelector('.labkit-panel[data-panel=\"{name}\"]')"
        assert browser.wait_until(f"{root} && {root}.getAttribute('data-state') === 'ok'"), "did not render"
        readout = f"{root}.querySelector('.lk-readout').textContent"
        assert browser.js(readout) == panel.readout()
        j = panel.options[control].index(chosen[control])
        browser.js(f"""(() => {{ const el = {root}.querySelector('[data-control="{control}"]');
            el.value = '{j}'; el.dispatchEvent(new Event('input')); }})()""")
        assert browser.js(readout) == panel.readout(**chosen)
        assert browser.js(f"{root}.querySelectorAll('svg').length") == 1
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
