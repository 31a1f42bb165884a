"""The chapters' rule panels (sequences, serving, curriculum): their precomputed numbers are the library's, computed
here independently; their static view only looks them up (its readout equals the Python one, in node and in
Chromium); they fetch nothing; bad arguments fail with one message naming the value."""
from __future__ import annotations

import html
import itertools
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from labkit.buckets import BucketBatcher, RandomBatcher, TokenBatcher
from labkit.curriculum import Curriculum, competence
from labkit.serving import poisson_arrivals
from labkit.serving.replay import formula_batch, replay
from labkit.widgets import (CurriculumPanel, MemoryModel, SequencesPanel, ServingPanel, curriculum_panel,
                            sequences_panel, serving_panel, trajectory_panel)
from panel_checks import check_in_chromium, embedded_data, expected_lines, run_in_node


def assert_self_contained(page: str, name: str) -> None:
    assert f'data-panel="{name}"' in page
    assert not re.search(r"https?:|//[a-z0-9]", page, re.I), "the panel must not name an external address"
    assert not re.search(r"<(?:img|link|iframe|source)\b|\bsrc=|fetch\(|XMLHttpRequest|import\(", page)
    assert len(re.findall(r"<script>(.*?)</script>", page, re.S)) == 1


def random_sequences(n: int = 300, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.empty(n).exponential_(0.05, generator=g).long() + 1).clamp(max=120)
    return [torch.ones(int(k), dtype=torch.long) for k in lengths]


# -- sequences ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seq() -> SequencesPanel:
    return sequences_panel(random_sequences(), batch=[8, 32, 64], max_tokens=[128, 512, 1024], pool=[1, 10])


def one_epoch(batcher):
    for _ in batcher:
        pass
    return batcher.stats


def test_every_sequences_point_is_one_epoch_of_the_library_batchers(seq):
    x, y = seq.sequences, torch.zeros(len(seq.sequences), dtype=torch.long)
    for b, t, pool in itertools.product(*seq.options.values()):
        static = seq.series(batch=b, max_tokens=t, pool=pool)
        expected = {"global": one_epoch(RandomBatcher(x, y, b, pad="global")),
                    "dynamic": one_epoch(RandomBatcher(x, y, b, pad="batch")),
                    "bucket": one_epoch(BucketBatcher(x, y, b, pool=pool)),
                    "tokens": one_epoch(TokenBatcher(x, y, t, pool=pool))}
        for kind, s in expected.items():
            assert static[kind]["padding"] == pytest.approx(s.padding_fraction, abs=5e-4), (kind, b, t, pool)
            assert static[kind]["steps"] == s.steps and static[kind]["min_batch"] == min(s.sizes)
            assert static[kind]["max_batch"] == max(s.sizes)
            assert sum(s.sizes) == len(x)
        assert static == seq.point(batch=b, max_tokens=t, pool=pool)


def test_sequences_numbers_behave_as_the_chapter_says(seq):
    p = seq.series(batch=64, max_tokens=512, pool=10)
    assert p["global"]["padding"] > p["dynamic"]["padding"] > p["bucket"]["padding"]
    assert p["global"]["steps"] == p["dynamic"]["steps"] == p["bucket"]["steps"] == 5     # ⌈300 / 64⌉
    few, many = seq.series(max_tokens=1024, pool=10), seq.series(max_tokens=128, pool=10)
    assert few["tokens"]["steps"] < many["tokens"]["steps"]


def test_sequences_html_carries_the_data_and_is_self_contained(seq):
    page = seq.to_html()
    assert embedded_data(page) == json.loads(json.dumps(seq.data()))
    assert_self_contained(page, "sequences")
    assert set(seq._repr_mimebundle_()) == {"text/plain", "text/html"}
    assert repr(seq).startswith("SequencesPanel(300 sequences")
    again = sequences_panel(random_sequences(), batch=[8, 32, 64], max_tokens=[128, 512, 1024], pool=[1, 10])
    assert page == again.to_html()                                          # deterministic


def test_sequences_on_the_sms_lengths_match_the_chapter_table():
    from labkit import data, text
    try:
        d = text.load("sms-spam")
    except (FileNotFoundError, OSError, RuntimeError) as err:
        pytest.skip(f"the SMS data is not here ({err}); root {data.data_root()}")
    panel = sequences_panel(d.x_train, d.y_train, batch=[64], max_tokens=[1280], pool=[50])
    p = panel.series()
    assert [p[k]["padding"] for k in ("global", "dynamic", "bucket")] == [0.901, 0.748, 0.13]
    assert p["tokens"]["padding"] == pytest.approx(0.041, abs=0.005) and p["global"]["steps"] == 70


# -- serving ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv() -> ServingPanel:
    return serving_panel(service_ms=1.0, requests=1000, rate=[1000, 16000, 64000], window=[0.5, 1, 2],
                         max_batch=[8, 64])


def brute_force(arrivals, window_ms, max_batch, service_ms):
    """The close rule request by request (no searchsorted): a batch takes requests while they arrive before
    it closes and it is not full; it closes at max(first + w, worker free), or at the filling arrival."""
    sizes, latency, free, k, n = [], [], 0.0, 0, len(arrivals)
    while k < n:
        close, end = max(arrivals[k] + window_ms / 1e3, free), k + 1
        while end < n and end - k < max_batch and arrivals[end] <= close:
            end += 1
        if end - k == max_batch:
            close = max(arrivals[end - 1], free)
        free = close + service_ms / 1e3
        latency += [(free - a) * 1e3 for a in arrivals[k:end]]
        sizes.append(end - k)
        k = end
    return np.array(sizes), np.array(latency)


def test_every_serving_point_is_the_replay_of_the_close_rule(srv):
    for rate, w, b in itertools.product(*srv.options.values()):
        arrivals = poisson_arrivals(rate, count=1000, seed=0)
        sizes, latency = brute_force(arrivals, w, b, 1.0)
        static = srv.series(rate=rate, window=w, max_batch=b)
        assert static["mean_batch"] == pytest.approx(sizes.mean(), rel=1e-3), (rate, w, b)
        assert static["formula"] == pytest.approx(formula_batch(rate, w, b), rel=1e-3)
        assert static["p99"] == pytest.approx(np.percentile(latency, 99), rel=1e-3)
        assert static["max"] == pytest.approx(latency.max(), rel=1e-3)
        assert static["mean"] == pytest.approx(latency.mean(), rel=1e-3)
        assert static == srv.point(rate=rate, window=w, max_batch=b)
        if rate * 1.0 / 1e3 < b and w >= 1.0:                  # the worker keeps up, w >= s: the bound
            assert static["max"] <= w + 1.0 + 1e-9


def test_serving_replay_under_light_load_follows_the_formula():
    arrivals = poisson_arrivals(4000, count=20_000, seed=3)
    sizes, latency = replay(arrivals, 2.0, 64)
    assert sizes.mean() == pytest.approx(formula_batch(4000, 2.0, 64), rel=0.02)
    assert latency.max() <= 2.0 + 1e-9 and sizes.sum() == len(arrivals)


def test_serving_html_and_readout(srv):
    page = srv.to_html()
    assert embedded_data(page) == json.loads(json.dumps(srv.data()))
    assert_self_contained(page, "serving")
    line = srv.readout(rate=64000, window=1, max_batch=8)
    assert line.startswith("λ 64000/s, w 1 ms, B_max 8: mean batch 8 (1 + λw capped: 8)")
    assert line.endswith("overloaded: λ > B_max/s") and "\n" not in line
    assert repr(srv) == ("ServingPanel(service_ms=1, requests=1000, seed=0; controls: rate[3] × window[3] × "
                         "max_batch[2])")


# -- curriculum -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cur() -> CurriculumPanel:
    return curriculum_panel(n=1000, epochs=10, c0=[0.1, 0.25, 1.0], T=[1, 3, 8])


def test_every_curriculum_point_is_curriculum_pool(cur):
    for c0, T, shape in itertools.product(*cur.options.values()):
        static = cur.series(c0=c0, T=T, shape=shape)
        pacing = Curriculum(torch.rand(1000, generator=torch.Generator().manual_seed(1)), c0=c0, epochs=T,
                            shape=shape)
        assert static == [len(pacing.pool(t)) for t in range(10)]
        assert static == [max(1, math.ceil(round(competence(t, T, c0, shape) * 1000, 9))) for t in range(10)]
        assert static[0] == math.ceil(c0 * 1000) and all(p == 1000 for p in static[T:])
        assert static == sorted(static) and static == cur.pools(c0=c0, T=T, shape=shape)


def test_curriculum_html_and_readout(cur):
    page = cur.to_html()
    assert embedded_data(page) == json.loads(json.dumps(cur.data()))
    assert_self_contained(page, "curriculum")
    assert cur.readout(c0=1.0) == ("c0 1, T 3, sqrt: pool 1000 at epoch 0, all 1000 from epoch 0 · 10000 "
                                   "examples served in 10 epochs, 1.000 of plain training")
    assert "not all 1000 within 3 epochs" in curriculum_panel(n=1000, epochs=3, T=[8]).readout()


# -- the chapters' trajectory panels with a rule to show ---------------------------------------------------
def test_the_memory_chapter_panel_starts_where_the_rule_reaches_its_target():
    panel = trajectory_panel("memory", steps=20, initial={"max_batch": 4096})   # as notebooks/memory.ipynb
    sizes, usage = panel.trajectory(), MemoryModel()
    assert panel.initial["target"] == 0.8 and usage.fits(0.8) <= panel.initial["max_batch"]
    assert sizes[-1] == sizes[-5] and usage(sizes[-1]) == pytest.approx(0.8, abs=2e-3)
    assert trajectory_panel("memory", steps=20).trajectory()[-1] == 1024                 # capped short


def test_the_epoch_milestones_panel_follows_its_table():
    table = {10: 64, 20: 256, 30: 1024}                                     # as notebooks/schedules.ipynb
    panel = trajectory_panel("epoch", steps=40, milestones=table)
    sizes = panel.trajectory(b_init=32)
    assert sizes[:10] == [32] * 10 and sizes[10:20] == [64] * 10 and sizes[30:] == [1024] * 11
    # no dropdown over tables yet: the grid takes numbers or strings as options, and milestones only once
    with pytest.raises(TypeError, match="every option must be a finite number"):
        trajectory_panel("epoch", milestones=[table, {5: 128}])
    with pytest.raises(ValueError, match="milestones must be a single value in a panel"):
        trajectory_panel("epoch", milestones=["10>64;20>256", "5>128"])


# -- the static views' scripts, run ------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_sequences_script_writes_the_python_readout(seq, tmp_path):
    moves = [[0, 0], [1, 0], [2, 0], [0, 2]]
    out = run_in_node(seq, moves, tmp_path)
    assert out["lines"] == expected_lines(seq, moves) and out["state"] == "ok"
    assert out["svg"].count('class="lk-pad"') == 4 and out["svg"].count('class="lk-steps"') == 4


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_serving_script_writes_the_python_readout(srv, tmp_path):
    moves = [[0, 2], [2, 0], [1, 0], [0, 0]]
    out = run_in_node(srv, moves, tmp_path)
    assert out["lines"] == expected_lines(srv, moves) and out["state"] == "ok"
    assert out["svg"].count('<path class="lk-p99"') == 1 and out["svg"].count('<path class="lk-batch"') == 1


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_curriculum_script_writes_the_python_readout(cur, tmp_path):
    moves = [[0, 0], [2, 0], [1, 0], [0, 2], [1, 2]]                # the last control is the shape <select>
    out = run_in_node(cur, moves, tmp_path)
    assert out["lines"] == expected_lines(cur, moves) and out["state"] == "ok"
    assert out["svg"].count('class="lk-bar"') == 10


def test_sequences_panel_in_chromium(seq, tmp_path):
    check_in_chromium(seq, "sequences", "max_tokens", tmp_path, {"max_tokens": 128})


def test_serving_panel_in_chromium(srv, tmp_path):
    check_in_chromium(srv, "serving", "window", tmp_path, {"window": 0.5})


def test_curriculum_panel_in_chromium(cur, tmp_path):
    check_in_chromium(cur, "curriculum", "c0", tmp_path, {"c0": 1.0})


def test_sequences_live_widget_follows_its_controls(seq, monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    box = seq.widget()
    controls = {w.description: w for w in box.children[1].children}
    assert set(controls) == {"batch B", "token budget T", "pool (batches)"}
    controls["token budget T"].value = 128
    assert box.children[-1].value == html.escape(seq.readout(max_tokens=128))


def test_serving_and_curriculum_live_widgets_follow_their_controls(srv, cur, monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    box = srv.widget()
    controls = {w.description: w for w in box.children[1].children}
    assert set(controls) == {"arrival rate λ (/s)", "window w (ms)", "max batch B_max"}
    controls["window w (ms)"].value = 0.5
    assert box.children[-1].value == html.escape(srv.readout(window=0.5))
    box = cur.widget()
    controls = {w.description: w for w in box.children[1].children}
    controls["shape"].value = "linear"
    assert box.children[-1].value == html.escape(cur.readout(shape="linear"))


# -- arguments -------------------------------------------------------------------------------------------
SEQS = random_sequences(40)


@pytest.mark.parametrize("call, error, message", [
    (lambda: sequences_panel(SEQS, max_tokens=[64, 512]), ValueError, "max_tokens=64 is out of range"),
    (lambda: sequences_panel(SEQS, batch=[0]), ValueError, "batch=0 is out of range"),
    (lambda: sequences_panel(SEQS, pool=[10, 10]), ValueError, "pool=[10, 10] repeats an option"),
    (lambda: sequences_panel(SEQS, batch=[]), ValueError, "batch=[]: give at least one option"),
    (lambda: sequences_panel(torch.ones(4, 5, dtype=torch.long)), TypeError, "expected a list of 1-D token"),
    (lambda: sequences_panel(SEQS, initial={"batch": 3}), ValueError, "initial batch=3 is not on the grid"),
    (lambda: sequences_panel(SEQS).series(lr=0.1), TypeError, "'lr' is not a control of this panel"),
    (lambda: sequences_panel(SEQS).series(pool=7), ValueError, "pool=7 is not on the panel's grid"),
    (lambda: sequences_panel(SEQS).batcher("sorted"), ValueError, "kind='sorted': expected one of"),
    (lambda: serving_panel(service_ms=-1), ValueError, "service_ms=-1 is out of range"),
    (lambda: serving_panel(rate=[0, 100]), ValueError, "rate=0 is out of range"),
    (lambda: serving_panel(max_batch=[8.5]), TypeError, "max_batch=8.5 must be an integer"),
    (lambda: serving_panel(requests=5), ValueError, "requests=5 is out of range"),
    (lambda: serving_panel(initial={"window": 3}), ValueError, "initial window=3 is not on the grid"),
    (lambda: curriculum_panel(c0=[0, 0.5]), ValueError, "c0=0 is out of range"),
    (lambda: curriculum_panel(c0=[1.5]), ValueError, "c0=1.5 is out of range"),
    (lambda: curriculum_panel(T=[0]), ValueError, "T=0 is out of range"),
    (lambda: curriculum_panel(shape=["cosine"]), ValueError, "shape='cosine'"),
    (lambda: curriculum_panel().series(T=5), ValueError, "T=5 is not on the panel's grid"),
])
def test_bad_arguments_say_what_to_do(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
