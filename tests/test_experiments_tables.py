"""labkit.comparison's table helpers (short_label, comparison_table, separable, separations, against,
leaders, reach_verdict, tuning_grid, epoch_means, twins, retimed) and experiments' portable_command, ran_at
and short_commit, against small tables worked out by hand."""
import json
import math

import pandas as pd
import pytest

from labkit.comparison import (
    against,
    batch_band,
    comparison_table,
    epoch_means,
    gap_in_std,
    lab_goals,
    leaders,
    reach_verdict,
    retimed,
    separable,
    separations,
    short_label,
    standoff,
    tuning_grid,
    twins,
    verdict,
)
from labkit.experiments import portable_command, ran_at, short_commit


@pytest.mark.parametrize("run, short", [
    ("fixed-b_init=64", "fixed 64"),
    ("linear-b_init=64-a=64-max_batch=1024", "linear 64+64→1024"),
    ("progressive-b_init=64-target=1024-warmup=8", "progressive 64→1024"),
    ("loss-b_init=64-delta=ema-alpha=0.3-max_batch=1024", "loss/ema α=0.3"),
    ("loss-b_init=64-delta=variance-window=3-tolerance=0.05-max_batch=2048", "loss/variance w=3"),
    ("loss-b_init=64-delta=diff-max_batch=2048", "loss/diff"),
    ("gns-b_init=64-max_batch=1024", "gns 64→≤1024"),
    ("exponential-b_init=64-a=1.2-max_batch=1024", "exponential 64×1.2→1024"),
    ("epoch-b_init=64", "epoch milestones"),
    ("goodput-b_init=64-max_batch=1024", "goodput 64→≤1024"),
    ("big", "big"),                                   # a custom label: kept
    ("linear-b_init=64", "linear-b_init=64"),         # a parameter missing: kept
])
def test_short_label(run, short):
    assert short_label(run) == short


def histories() -> pd.DataFrame:
    """Run 'fixed-b_init=8' (2 seeds) and 'linear-b_init=8-a=8-max_batch=32' (3 seeds, seed 2 dead), 3 epochs
    of 10 s (linear: 5 s) each; energy 100 J per epoch; steps 10 per epoch (linear: 4)."""
    acc = {("fixed-b_init=8", 0): [0.5, 0.8, 0.9], ("fixed-b_init=8", 1): [0.6, 0.7, 0.8],
           ("linear-b_init=8-a=8-max_batch=32", 0): [0.7, 0.85, 0.88],
           ("linear-b_init=8-a=8-max_batch=32", 1): [0.6, 0.75, 0.84],
           ("linear-b_init=8-a=8-max_batch=32", 2): [0.1, 0.1, 0.1]}
    rows = []
    for (run, seed), accs in acc.items():
        fast = run.startswith("linear")
        for e, a in enumerate(accs, start=1):
            dead = seed == 2 and e == 3
            rows.append(dict(run=run, seed=seed, epoch=e, test_acc=a, wall_time_s=(5.0 if fast else 10.0) * e,
                             steps=(4 if fast else 10) * e, samples=32 * e, energy_j=100.0 * e, batch_size=8 * e if fast else 8,
                             reason="stopped: dead" if dead else "rule"))
    return pd.DataFrame(rows)


def test_comparison_table_by_hand():
    table = comparison_table(histories(), targets=[0.8, 0.85])
    fixed, linear = table.loc["fixed-b_init=8"], table.loc["linear-b_init=8-a=8-max_batch=32"]
    assert list(table.index) == ["linear-b_init=8-a=8-max_batch=32", "fixed-b_init=8"]   # 0.86 > 0.85
    assert (fixed.seeds, fixed.failed, linear.seeds, linear.failed) == (2, 0, 2, 1)   # the dead seed: out
    assert fixed.acc == pytest.approx(0.85) and fixed["acc ±"] == pytest.approx(math.sqrt(0.005))
    assert linear.acc == pytest.approx(0.86) and linear["acc ±"] == pytest.approx(math.sqrt(0.0008))
    assert (fixed["time s"], linear["time s"], fixed["time ±"]) == (30.0, 15.0, 0.0)
    assert (fixed["energy kJ"], fixed.updates, linear.updates, linear["final B"]) == (0.3, 30, 12, 24)
    # 0.8: fixed seed 0 at epoch 2 (20 s), seed 1 at epoch 3 (30 s); linear seeds 0 and 1 at epoch 2 and 3
    assert (fixed["to 0.8 s"], fixed["reached 0.8"]) == (25.0, 2)
    assert fixed["to 0.8 ±"] == pytest.approx(math.sqrt(50)) and math.isnan(fixed["to 0.85 ±"])
    assert (linear["to 0.8 s"], linear["reached 0.8"]) == (12.5, 2)
    # 0.85: fixed seed 0 only (30 s); linear seed 0 only (10 s); the other seeds do not count in the mean
    assert (fixed["to 0.85 s"], fixed["reached 0.85"], linear["to 0.85 s"]) == (30.0, 1, 10.0)


def test_comparison_table_without_energy_and_a_target_nobody_reaches():
    table = comparison_table(histories().drop(columns="energy_j"), targets=[0.95])
    assert table["energy kJ"].isna().all()
    assert (table["reached 0.95"] == 0).all() and table["to 0.95 s"].isna().all()


@pytest.mark.parametrize("a, b, verdict", [
    ([0.90, 0.91, 0.92], [0.80, 0.81, 0.82], "a"),        # gap 0.1, stds 0.01
    ([0.80, 0.81, 0.82], [0.90, 0.91, 0.92], "b"),
    ([0.90, 0.91, 0.92], [0.895, 0.905, 0.915], "cannot separate"),   # gap 0.005 < 0.01
    ([0.90, 0.92, 0.94], [0.88, 0.89, 0.90], "a"),        # gap 0.03 > std 0.02
    ([0.90, 0.92, 0.94], [0.905, 0.91, 0.915], "cannot separate"),   # gap 0.01 < std 0.02 (of a)
    ([0.9], [0.1, 0.2], "cannot separate"),               # one seed: no std
])
def test_separable(a, b, verdict):
    assert separable(a, b) == verdict


def test_separations_leave_failed_seeds_out():
    pairs = separations(histories())
    assert len(pairs) == 1
    pair = pairs.iloc[0]
    # fixed [0.9, 0.8] vs linear [0.88, 0.84] (the dead seed's 0.1 left out): gap -0.01 < std 0.0707
    assert pair.gap == pytest.approx(-0.01) and pair.verdict == "cannot separate"


def test_leaders_and_gap_in_std():
    table = pd.DataFrame({"acc": [0.9, 0.89, 0.8], "acc ±": [0.005, 0.02, 0.001]}, index=["x", "y", "z"])
    assert leaders(table, "acc", "acc ±") == ("x", ["y"])   # 0.01 < 0.02; 0.1 > 0.005
    assert leaders(table, "acc", "acc ±", higher=False) == ("z", [])
    gap, units = gap_in_std(table, "x", "z", "acc", "acc ±")
    assert gap == pytest.approx(0.1) and units == pytest.approx(20.0)


def test_reach_verdict():
    h = histories()
    # fixed 8 ends at 0.85 on average in 30 s; linear seeds 0 and 1 reach 0.85 at 10 s and never (0.84)
    assert reach_verdict(h, "fixed-b_init=8", goal=0.2, name="P4") == (
        "P4 vs fixed 8 (target 0.8500): not reached, 1 of 2 adaptive seeds (goal ≤ 0.2)")
    # at 0.8 both live linear seeds get there: (10 + 15) / 2 / 30 = 0.4167
    h.loc[h.run == "fixed-b_init=8", "test_acc"] -= 0.05
    line = reach_verdict(h, "fixed-b_init=8", goal=0.5)
    assert line == "ratio vs fixed 8 (target 0.8000): linear 8+8→32 at 0.42 (met, goal ≤ 0.5)"
    assert "missed" in reach_verdict(h, "fixed-b_init=8", goal=0.4)


def test_lab_goals_pick_the_most_accurate_fixed_run_for_p4b():
    h = histories()
    wide = h[h.run == "fixed-b_init=8"].assign(run="fixed-b_init=32", test_acc=lambda d: d.test_acc - 0.1)
    p4, p4b, best = lab_goals(pd.concat([h, wide]), start="fixed-b_init=32", p4=0.5, p4b=0.2)
    # fixed 32 ends at 0.75: both live linear seeds pass it at 5 s (0.7 at 5 s is below, 0.85 / 0.75 at
    # 10 s): mean 10 s over fixed 32's 30 s = 0.33
    assert p4 == "P4 vs fixed 32 (target 0.7500): linear 8+8→32 at 0.33 (met, goal ≤ 0.5)"
    assert p4b == reach_verdict(h, "fixed-b_init=8", goal=0.2, name="P4b")     # fixed 8 (0.85) beats 32
    assert best == "best tuned fixed batch: fixed 8, 0.8500 ± 0.0707"
    with pytest.raises(ValueError, match="no run labelled 'fixed"):
        lab_goals(h[h.run != "fixed-b_init=8"])


def test_standoff_by_hand():
    """fixed 8 ends at 0.9 and 0.8 (0.85 ± 0.071, 30 s); goodput reaches 0.85 at 5 s and 10 s and ends at
    0.88 and 0.87; goodput-adascale ends at 0.70 and 0.72; fixed 32 ends 0.1 under fixed 8."""
    def run(label, accs_by_seed):
        return pd.DataFrame([dict(run=label, seed=seed, epoch=e, test_acc=a, wall_time_s=5.0 * e, steps=4 * e,
                                  samples=32 * e, energy_j=100.0 * e, batch_size=8, reason="rule")
                             for seed, accs in enumerate(accs_by_seed) for e, a in enumerate(accs, start=1)])
    h = histories()
    wide = h[h.run == "fixed-b_init=8"].assign(run="fixed-b_init=32", test_acc=lambda d: d.test_acc - 0.1)
    table = standoff(pd.concat([h, wide, run("goodput-b_init=8-max_batch=32", [[0.86, 0.87, 0.88], [0.8, 0.86, 0.87]]),
                                run("goodput-adascale", [[0.5, 0.6, 0.7], [0.5, 0.6, 0.72]])]))
    assert table.index.name == "against fixed 8"
    assert list(table.index) == ["fixed 8", "goodput 8→≤32", "goodput-adascale", "linear 8+8→32"]
    assert list(table["vs best fixed"]) == ["-", "cannot separate", "below", "cannot separate"]
    assert list(table.reached) == ["1/2", "2/2", "0/2", "1/2"]     # linear's dead seed is out; 0.84 < 0.85
    assert table.at["goodput 8→≤32", "ratio"] == pytest.approx((5 + 10) / 2 / 30)
    assert table.ratio.drop("goodput 8→≤32").isna().all()
    assert list(table.failed) == [0, 0, 0, 1]
    assert table.at["goodput 8→≤32", "acc"] == pytest.approx(0.875)
    with pytest.raises(ValueError, match="no run labelled 'fixed"):
        standoff(h[h.run != "fixed-b_init=8"])


def test_verdict_reads_a_comparison_and_a_single_seed_never_leads():
    h = histories()
    lucky = h[(h.run == "fixed-b_init=8") & (h.seed == 0)].assign(run="exponential-b_init=8-a=2-max_batch=32",
                                                                   test_acc=0.99)
    result, lines = verdict(pd.concat([h, lucky]), target=0.8, start="fixed-b_init=8")
    # linear 0.86 ± 0.028 vs fixed 0.85 ± 0.071: tied; the one-seed 0.99 takes no part
    assert result["accuracy"] == "linear 8+8→32 (tied within noise: fixed 8)"
    # to 0.8: linear (10 + 15) / 2 = 12.5 s ± 3.5, fixed (20 + 30) / 2 = 25 s ± 7.1: a gap of 12.5 > 7.1
    assert result["time"] == "to 0.8: linear 8+8→32 (ahead by more than the seed std)"
    assert "first to 0.8 (every seed): linear 8+8→32 (ahead by more than the seed std), 12.5 s" in lines
    assert result["caveat"].startswith("0 of 2 adaptive runs above fixed 8 beyond the noise")
    assert result["caveat"].endswith("fewer seeds: exponential 8×2→32")
    assert "  linear 8+8→32: cannot separate" in lines


def test_batch_bands_follow_the_lab_sheet():
    assert [batch_band(b) for b in (1, 32, 33, 64, 512, 513, 1024, 65536)] == [
        "small", "small", "medium", "medium", "medium", "large", "large", "large"]
    with pytest.raises(ValueError, match="batch=0 is out of range"):
        batch_band(0)


def test_tuning_grid():
    table = pd.DataFrame([
        ("fixed-b_init=8", 0.1, 0.80, False), ("fixed-b_init=8", 0.2, 0.85, False),
        ("fixed-b_init=8", 0.4, 0.10, True),
        ("fixed-b_init=32", 0.2, 0.70, False), ("fixed-b_init=32", 0.4, 0.75, False),
        ("fixed-b_init=32", 0.8, 0.78, False),
        ("linear-b_init=8-a=8-max_batch=32", 0.1, 0.90, False), ("linear-b_init=8-a=8-max_batch=32", 0.2, 0.88, False),
    ], columns=["label", "lr", "val_acc", "failed"])
    grid = tuning_grid(table)
    assert list(grid.columns) == ["0.1", "0.2", "0.4", "0.8", "edge"]
    assert grid.loc["fixed-b_init=8"].tolist() == ["0.800", "0.850*", "failed", "", "below failed"]
    assert grid.loc["fixed-b_init=32"].tolist() == ["", "0.700", "0.750", "0.780*", "high"]
    assert grid.loc["linear-b_init=8-a=8-max_batch=32"].tolist() == ["0.900*", "0.880", "", "", "low"]


def test_epoch_means():
    means = epoch_means(histories(), "linear-b_init=8-a=8-max_batch=32", ["test_acc", "batch_size"])
    # epoch 3 over all three seeds (epoch_means does not judge failures): (0.88 + 0.84 + 0.1) / 3
    assert means.test_acc.tolist() == pytest.approx([0.7 / 3 * 2, 1.7 / 3, 1.82 / 3])
    assert means.batch_size.tolist() == [8, 16, 24]
    with pytest.raises(ValueError, match="not in these histories"):
        epoch_means(histories(), "fixed-b_init=1", ["test_acc"])


def test_against():
    pairs = pd.DataFrame([("x", "y", 0.1, "a"), ("x", "z", -0.1, "b"), ("y", "z", 0.0, "cannot separate"),
                          ("w", "x", 0.0, "cannot separate")], columns=["a", "b", "gap", "verdict"])
    assert against(pairs, "x").to_dict() == {"y": "below", "z": "above", "w": "cannot separate"}
    assert against(pairs, "z").to_dict() == {"x": "below", "y": "cannot separate"}


@pytest.mark.parametrize("command, portable", [
    ("python3 /work/main/bench/sequence.py --out results/bench_sequence.csv",
     "python3 bench/sequence.py --out results/bench_sequence.csv"),
    ("python3 -m labkit serve-bench --load 0.5 2 --out /root/out/results/bench_serving.csv",
     "python3 -m labkit serve-bench --load 0.5 2 --out results/bench_serving.csv"),
    ("labkit tune --out /tmp/x/y/tune.csv --lrs 0.1", "labkit tune --out tune.csv --lrs 0.1"),
    ("labkit sweep --runs fixed:b_init=64 --out runs/a", "labkit sweep --runs fixed:b_init=64 --out runs/a"),
])
def test_portable_command(command, portable):
    assert portable_command(command) == portable


def test_decision_trail_by_hand():
    from labkit.experiments import decision_trail

    log = [(1, 64, 64, "hold"), (2, 64, 64, "hold"), (3, 64, 64, "hold"), (4, 64, 128, "grow"),
           (5, 128, 128, "hold"), (6, 128, 128, "hold"), (7, 128, 64, "oom"), (8, 64, 64, "hold")]
    trail = decision_trail(pd.DataFrame(log, columns=["step", "old", "new", "reason"]))
    # runs of equal (old, new, reason): 1–3, 4, 5–6, 7, 8 (a 'hold' after a change starts a new block)
    assert trail.to_dict("records") == [dict(steps="1–3", old=64, new=64, reason="hold"),
                                        dict(steps="4", old=64, new=128, reason="grow"),
                                        dict(steps="5–6", old=128, new=128, reason="hold"),
                                        dict(steps="7", old=128, new=64, reason="oom"),
                                        dict(steps="8", old=64, new=64, reason="hold")]


def test_paired_gaps_by_hand():
    from labkit.comparison import paired_gaps

    rows = {("plain", "fixed 128"): (0.80, 0.01, 10.0, 1000), ("curriculum", "fixed 128"): (0.78, 0.01, 5.0, 600),
            ("plain", "ramp"): (0.80, 0.02, 8.0, 1000), ("curriculum", "ramp"): (0.79, 0.01, 8.0, 1000)}
    table = pd.DataFrame(rows.values(), index=pd.MultiIndex.from_tuples(rows, names=["data", "run"]),
                         columns=["acc", "acc ±", "time s", "samples"])
    entry, lines = paired_gaps(table, "plain", "curriculum")
    # fixed 128: gap 0.02 = 2 × 0.01, 10 / 5 = 2× faster, 1 − 600/1000 = 40 % fewer; ramp: 0.01 < 0.02 → noise
    assert lines == [("fixed 128: plain − curriculum accuracy +0.0200 (2.0× the seed std);\n  curriculum 2.00× "
                      "faster, 40% fewer examples seen"),
                     ("ramp: plain − curriculum accuracy +0.0100 (within noise);\n  curriculum 1.00× faster, "
                      "0% fewer examples seen")]
    assert entry["accuracy"] == "plain data: fixed 128 +0.020 (2.0× std); ramp +0.010 (within noise)"
    assert entry["time"] == "curriculum: fixed 128 2.00× faster; ramp 1.00× faster"


def test_twins_are_runs_with_the_same_trajectory_in_every_seed():
    h = histories()
    same = h[h.run == "fixed-b_init=8"].assign(run="copy", wall_time_s=lambda d: d.wall_time_s * 1.5)
    near = same.assign(run="near", test_acc=lambda d: d.test_acc.where(d.epoch < 3, d.test_acc + 1e-9))
    pairs = twins(pd.concat([h, same, near]))
    assert pairs[["a", "b", "seeds"]].values.tolist() == [["fixed-b_init=8", "copy", 2]]
    assert pairs.loc[0, "time a"] == 30.0 and pairs.loc[0, "time b"] == 45.0       # last epochs: 3 x 10 s
    assert pairs.loc[0, "ratio"] == pytest.approx(2 / 3)
    assert twins(h).empty and list(twins(h).columns) == ["a", "b", "seeds", "time a", "time b", "ratio"]


def test_retimed_pairs_each_seed_trained_again_with_its_first_training():
    h = histories()
    slower = h[(h.run == "fixed-b_init=8") & (h.seed == 0)].assign(wall_time_s=lambda d: d.wall_time_s * 1.2)
    again = pd.concat([slower,
                       h[(h.run == "linear-b_init=8-a=8-max_batch=32") & (h.seed == 1)]
                       .assign(batch_size=lambda d: d.batch_size.where(d.epoch < 3, 16)),
                       h[h.run == "fixed-b_init=8"].assign(run="never-ran-first")])
    table = retimed(h, again.sample(frac=1, random_state=0).sort_values("run", kind="stable"))
    assert list(table.index) == ["fixed-b_init=8", "linear-b_init=8-a=8-max_batch=32"]
    fixed, linear = table.iloc[0], table.iloc[1]
    assert (fixed.seed, bool(fixed.same), fixed["time first"]) == (0, True, 30.0)   # last epoch: 3 x 10 s
    assert fixed["time again"] == pytest.approx(36.0) and fixed.ratio == pytest.approx(1.2)
    assert (linear.seed, bool(linear.same), linear.ratio) == (1, False, 1.0)        # epoch 3 ran at 16, not 24
    assert retimed(h, again.iloc[:0]).empty


def test_ran_at_gives_each_run_the_days_and_commits_of_its_seeds(tmp_path):
    full = "def5678" + "9" * 33                                     # the same commit as def5678, in 40 digits
    for run, seed, date, commit in [("a", 0, "2026-12-01T10:00", "abc1234"), ("a", 1, "2026-12-02T09:00", "def5678"),
                                    ("a", 2, "2026-12-02T11:00", full), ("b", 0, "2026-12-02T12:00", full)]:
        (tmp_path / run / f"seed{seed}").mkdir(parents=True)
        config = {"config": {}, "provenance": {"date": date, "commit": commit}}
        (tmp_path / run / f"seed{seed}" / "config.json").write_text(json.dumps(config))
    assert ran_at(tmp_path).to_dict() == {"a": "2026-12-01 abc1234, 2026-12-02 def5678", "b": "2026-12-02 def5678"}


def test_short_commit_keeps_seven_digits_and_the_dirty_mark():
    assert short_commit("50520dedfb78+dirty") == "50520de+dirty"
    assert short_commit("c7f0afcd77fcb4854d784310aa5060642e57ad53") == "c7f0afc"
    assert short_commit("unknown") == "unknown"
