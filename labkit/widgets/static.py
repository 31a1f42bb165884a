"""The kernel-free view of a panel: one HTML fragment with the precomputed grid embedded as JSON and a small
vanilla-JavaScript view that draws inline SVG.

No file, font or script is fetched from anywhere: the fragment is self-contained, so the built book works
offline and makes no request outside its own site. ``render_fragment`` writes the frame every panel shares
(title, controls, plot, readout, data, scripts) and ``KIT_JS`` the JavaScript they share (``window.labkitKit``:
the controls, escaping, mounting), defined once per page. ``JS`` is the trajectory panel's view: controls →
grid index → ``lookup`` → a trajectory in ``runs`` (or a message in ``errors``) → SVG; ``labkit.widgets.noise``
has the noise-scale panel's.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

CSS = """
.labkit-panel{border:1px solid rgba(127,127,127,.35);border-radius:6px;padding:.6em .8em;margin:.5em 0;
  font-size:.9em;max-width:760px}
.labkit-panel .lk-title{font-weight:600;margin-bottom:.3em}
.labkit-panel .lk-controls{display:flex;flex-wrap:wrap;gap:.25em 1.2em;margin-bottom:.4em}
.labkit-panel .lk-ctl{display:flex;align-items:center;gap:.4em;white-space:nowrap}
.labkit-panel .lk-ctl.lk-off{opacity:.4}
.labkit-panel .lk-ctl input[type=range]{width:8.5em}
.labkit-panel .lk-ctl output{min-width:3.2em;font-variant-numeric:tabular-nums}
.labkit-panel svg{width:100%;height:auto;display:block}
.labkit-panel .lk-axis{stroke:currentColor;stroke-opacity:.5;fill:none}
.labkit-panel .lk-grid{stroke:currentColor;stroke-opacity:.12}
.labkit-panel .lk-bound{stroke:#c2410c;stroke-dasharray:4 3;stroke-opacity:.8}
.labkit-panel .lk-traj{stroke:#2563eb;stroke-width:2.2;fill:none}
.labkit-panel .lk-signal{stroke:#15803d;stroke-width:1.5;fill:none}
.labkit-panel .lk-lr{stroke:#7c3aed;stroke-width:1.8;fill:none}
.labkit-panel text{fill:currentColor;font-size:11px}
.labkit-panel .lk-readout{font-variant-numeric:tabular-nums;margin-top:.2em}
.labkit-panel .lk-error{color:#b91c1c}
.labkit-panel .lk-fixed{opacity:.75;font-size:.9em}
"""

KIT_JS = r"""
(function () {
  "use strict";
  if (window.labkitKit) return;
  var esc = function (s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c];
    });
  };
  // a readout formatter: strings and integers as they are, other numbers through round(v)
  var formatter = function (round) {
    return function (v) {
      if (typeof v === "string") return v;
      if (Number.isInteger(v)) return String(v);
      return String(round(v));
    };
  };
  // <label class="lk-ctl"><span>text</span>input[output]</label>, appended to root's .lk-controls
  var labelled = function (root, text, input, out) {
    var wrap = document.createElement("label"), name = document.createElement("span");
    wrap.className = "lk-ctl";
    name.textContent = text;
    wrap.appendChild(name);
    wrap.appendChild(input);
    if (out) wrap.appendChild(out);
    root.querySelector(".lk-controls").appendChild(wrap);
    return wrap;
  };
  // one input per entry of data.controls: a <select> of option indices for kind "choice", else a range
  // 0 … size − 1 beside an <output>; ui.idx holds the chosen indices, changed() runs after every move
  var controls = function (root, controls, changed) {
    var ui = {idx: controls.map(function (c) { return c.init; }), inputs: [], outputs: [], wraps: []};
    controls.forEach(function (c, i) {
      var input, out = document.createElement("output");
      if (c.kind === "choice") {
        input = document.createElement("select");
        c.values.forEach(function (v, j) {
          var o = document.createElement("option");
          o.value = String(j); o.textContent = v; input.appendChild(o);
        });
      } else {
        input = document.createElement("input");
        input.type = "range"; input.min = "0"; input.max = String(c.size - 1); input.step = "1";
      }
      input.value = String(c.init);
      input.name = c.name;
      input.setAttribute("data-control", c.name);
      var wrap = labelled(root, c.label, input, c.kind === "choice" ? null : out);
      var onChange = function () { ui.idx[i] = parseInt(input.value, 10); changed(); };
      input.addEventListener("input", onChange);
      input.addEventListener("change", onChange);
      ui.inputs.push(input); ui.outputs.push(out); ui.wraps.push(wrap);
    });
    return ui;
  };
  // draw panel `id` from its embedded JSON: the controls here, the rest by panels[name](root, data, ui),
  // which returns its update(), run now and after every move of a control
  var mount = function (id, name) {
    var root = document.getElementById(id), update = null;
    var data = JSON.parse(document.getElementById(id + "-data").textContent);
    var ui = controls(root, data.controls, function () { update(); });
    ui.plot = root.querySelector(".lk-plot"); ui.readout = root.querySelector(".lk-readout");
    update = window.labkitKit.panels[name](root, data, ui);
    update();
  };
  // each fragment (re)defines its panel in panels just before mounting it, so it runs with its own code
  window.labkitKit = {esc: esc, formatter: formatter, labelled: labelled, mount: mount, panels: {}};
})();
"""

JS = r"""
// the trajectory panel: controls → grid index → lookup → a trajectory in runs (or an error) → SVG
window.labkitKit.panels.trajectory = function (root, data, ui) {
  "use strict";
  var kit = window.labkitKit, esc = kit.esc, controls = data.controls, idx = ui.idx;
  var plot = ui.plot, readout = ui.readout;
  var fmt = kit.formatter(function (v) { return Math.round(v * 1000) / 1000; });
  var niceStep = function (n) {
    var steps = [1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000];
    for (var i = 0; i < steps.length; i++) if (n / steps[i] <= 8) return steps[i];
    return Math.ceil(n / 8);
  };
  var options = function (c, chosen) { return c.depends ? c.values[chosen[c.depends]] : c.values; };

  var lrSelect = null;
  if (data.lr) {
    lrSelect = document.createElement("select");
    lrSelect.name = "lr_rule"; lrSelect.setAttribute("data-control", "lr_rule");
    data.lr.rules.forEach(function (r) {
      var o = document.createElement("option"); o.value = r; o.textContent = r; lrSelect.appendChild(o);
    });
    lrSelect.addEventListener("change", function () { update(); });
    kit.labelled(root, "LR rule", lrSelect);
  }

  function update() {
    var chosen = {}, key = 0;
    controls.forEach(function (c, i) { chosen[c.name] = options(c, chosen)[idx[i]]; });
    controls.forEach(function (c, i) {
      var active = !c.when || chosen[c.when[0]] === c.when[1];
      ui.wraps[i].classList.toggle("lk-off", !active);
      ui.inputs[i].disabled = !active;
      ui.outputs[i].textContent = fmt(chosen[c.name]);
      key += (active ? idx[i] : 0) * data.strides[i];
    });
    var id = data.lookup[String(key)];
    if (id === undefined) { readout.textContent = "no precomputed point here"; return; }
    var lower = [];
    if (data.signal) lower.push({label: data.signal.label, values: data.signal.values, offset: 1, step: false});
    if (id < 0) {
      plot.innerHTML = draw(null, chosen, lower);
      readout.innerHTML = '<span class="lk-error">' + esc(data.errors[-1 - id]) + "</span>";
      root.setAttribute("data-state", "error");
      return;
    }
    var run = data.runs[id];
    if (data.lr) {
      var rule = lrSelect.value;
      lower.push({label: "learning rate, " + rule + " rule (base " + fmt(data.lr.base_lr) + " at B\u2080)",
                  values: data.lr.values[rule][id], offset: 0, step: true});
    }
    plot.innerHTML = draw(run, chosen, lower);
    var sum = 0, changes = 0;
    run.forEach(function (b, k) { sum += b; if (k > 0 && b !== run[k - 1]) changes += 1; });
    readout.textContent = "B: " + run[0] + " \u2192 " + run[run.length - 1] +
      " \u00b7 mean " + fmt(Math.round(sum / run.length * 10) / 10) + " \u00b7 changes " + changes;
    root.setAttribute("data-state", "ok");
  }

  function draw(run, chosen, lower) {
    var W = 640, left = 52, right = 12, top = 10, ph = 190, gap = 34, sh = 64, sgap = 30;
    var H = top + ph + gap + lower.length * (sh + sgap), n = data.steps;
    var lo = Math.log2(data.ymin), hi = Math.log2(data.ymax);
    var x = function (k) { return left + (W - left - right) * k / Math.max(n, 1); };
    var y = function (b) { return top + ph * (hi - Math.log2(Math.max(b, data.ymin))) / (hi - lo); };
    var s = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="batch size trajectory">'];
    for (var e = Math.ceil(lo); e <= Math.floor(hi); e++) {
      var yy = y(Math.pow(2, e)).toFixed(1);
      s.push('<line class="lk-grid" x1="' + left + '" x2="' + (W - right) + '" y1="' + yy +
             '" y2="' + yy + '"/>');
      s.push('<text x="' + (left - 6) + '" y="' + yy + '" dy="3.5" text-anchor="end">' + Math.pow(2, e) +
             "</text>");
    }
    var xs = niceStep(n), axisY = top + ph;
    for (var k = 0; k <= n; k += xs) {
      s.push('<text x="' + x(k).toFixed(1) + '" y="' + (axisY + 14) + '" text-anchor="middle">' + k + "</text>");
    }
    s.push('<text x="' + (W - right) + '" y="' + (axisY + 27) + '" text-anchor="end">decision k</text>');
    s.push('<text x="12" y="' + (top + ph / 2) + '" text-anchor="middle" transform="rotate(-90 12 ' +
           (top + ph / 2) + ')">batch size B</text>');
    s.push('<path class="lk-axis" d="M' + left + " " + top + "V" + axisY + "H" + (W - right) + '"/>');
    ["min_batch", "max_batch"].forEach(function (b) {
      var v = chosen[b] !== undefined ? chosen[b] : data.base[b];
      if (v === undefined || v === null) return;
      var yb = y(v).toFixed(1);
      s.push('<line class="lk-bound" x1="' + left + '" x2="' + (W - right) + '" y1="' + yb + '" y2="' + yb + '"/>');
    });
    if (run) {
      var d = "M" + x(0).toFixed(1) + " " + y(run[0]).toFixed(1);
      for (var j = 1; j < run.length; j++) d += "H" + x(j).toFixed(1) + "V" + y(run[j]).toFixed(1);
      d += "H" + x(n).toFixed(1);
      s.push('<path class="lk-traj" d="' + d + '"/>');
    }
    lower.forEach(function (panel, p) {
      var sv = panel.values, smin = Math.min.apply(null, sv), smax = Math.max.apply(null, sv);
      var t0 = top + ph + gap + p * (sh + sgap), span = (smax - smin) || 1;
      var ys = function (v) { return t0 + sh * (smax - v) / span; };
      var path = "";
      sv.forEach(function (v, i) {
        var px = x(i + panel.offset).toFixed(1), py = ys(v).toFixed(1);
        if (!i) path = "M" + px + " " + py;
        else path += panel.step ? "H" + px + "V" + py : "L" + px + " " + py;
      });
      if (panel.step) path += "H" + x(n).toFixed(1);
      s.push('<path class="lk-axis" d="M' + left + " " + t0 + "V" + (t0 + sh) + "H" + (W - right) + '"/>');
      s.push('<path class="' + (panel.step ? "lk-lr" : "lk-signal") + '" d="' + path + '"/>');
      s.push('<text x="' + (left - 6) + '" y="' + (t0 + 4) + '" text-anchor="end">' +
             fmt(Number(smax.toPrecision(3))) + "</text>");
      s.push('<text x="' + (left - 6) + '" y="' + (t0 + sh) + '" text-anchor="end">' +
             fmt(Number(smin.toPrecision(3))) + "</text>");
      s.push('<text x="' + (left + 6) + '" y="' + (t0 + sh + 16) + '">' + esc(panel.label) + "</text>");
    });
    s.push("</svg>");
    return s.join("");
  }
  return update;
};
"""


def panel_id(data: dict[str, Any]) -> str:
    """A stable element id from the content (the same panel renders the same HTML on every run)."""
    return "labkit-panel-" + hashlib.sha1(_json(data).encode()).hexdigest()[:10]


def render_html(data: dict[str, Any]) -> str:
    """The self-contained HTML fragment for ``data`` (as built by ``TrajectoryPanel.data()``)."""
    fixed = ", ".join(f"{k} = {v}" for k, v in data.get("fixed", {}).items())
    return render_fragment(data, JS, "trajectory", attrs={"data-strategy": data["name"]},
                           after=f'<div class="lk-fixed">fixed: {_escape(fixed)}</div>' if fixed else "")


def render_fragment(data: dict[str, Any], script: str, entry: str, *, attrs: dict[str, str], css: str = "",
                    after: str = "") -> str:
    """One panel as self-contained HTML: the title, the empty controls, plot and readout, ``data`` as JSON,
    then ``KIT_JS`` (the shared helpers, defined once per page: ``window.labkitKit``) and ``script``, which
    defines ``labkitKit.panels[entry](root, data, ui)``; ``labkitKit.mount`` builds the controls and calls it.

    Args:
        data: the panel's JSON-ready data, with a ``title``; it also fixes the element id (``panel_id``).
        script: the panel's JavaScript; ``entry``: the name it gives its view in ``labkitKit.panels``.
        attrs: extra attributes of the panel's ``<div>`` (escaped here); ``css``: rules after ``CSS``;
        after: HTML placed under the readout.
    """
    pid = panel_id(data)
    extra = "".join(f' {k}="{_escape(v)}"' for k, v in attrs.items())
    return (
        f'<div class="labkit-panel" id="{pid}"{extra}>'
        f"<style>{CSS.strip()}{css.strip()}</style>"
        f'<div class="lk-title">{_escape(data["title"])}</div>'
        f'<div class="lk-controls"></div><div class="lk-plot"></div>'
        '<div class="lk-readout">Static panel: view it in the built book, or run the cell in Jupyter for the '
        f'live version.</div>{after}'
        "<noscript>This interactive panel needs JavaScript; the notebook version needs a Jupyter kernel."
        "</noscript>"
        f'<script type="application/json" id="{pid}-data">{_json(data)}</script>'
        f"<script>{KIT_JS.strip()}\n{script.strip()}\n"
        f"window.labkitKit.mount({json.dumps(pid)}, {json.dumps(entry)});</script>"
        "</div>"
    )


def _json(data: dict[str, Any]) -> str:
    # compact, ASCII-only, and safe inside <script>: "</" would end the element early
    return json.dumps(data, separators=(",", ":"), sort_keys=True).replace("</", "<\\/")


def _escape(text: str) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))
