"""labkit.comparison.first_reach, against a small table worked out by hand."""
import math

import pandas as pd

from labkit.comparison import first_reach


def histories() -> pd.DataFrame:
    """Two runs: 'a' with seeds 0 and 1, 'b' with seed 0; 3 epochs of 100 steps, 10 s and 6400 samples each.
    Rows of a-1 are shuffled: first_reach must go by epoch, not by row order."""
    acc = {("a", 0): [0.5, 0.9, 0.95], ("a", 1): [0.91, 0.8, 0.92], ("b", 0): [0.6, 0.7, 0.89]}
    rows = [dict(run=run, seed=seed, epoch=e, test_acc=a, wall_time_s=10.0 * e, steps=100 * e, samples=6400 * e)
            for (run, seed), accs in acc.items() for e, a in enumerate(accs, start=1)]
    frame = pd.DataFrame(rows)
    return pd.concat([frame.iloc[[5, 3, 4]], frame.drop(index=[3, 4, 5])], ignore_index=True)


def test_first_reach_by_hand():
    table = first_reach(histories(), target=0.9).set_index(["run", "seed"])
    # a-0 first reaches 0.9 at epoch 2 (0.9 >= 0.9 counts); a-1 at epoch 1 (it dips later); b-0 never
    assert table.loc[("a", 0)].to_dict() == dict(reached=True, epoch=2, wall_time_s=20.0, steps=200, samples=12800)
    assert table.loc[("a", 1)].to_dict() == dict(reached=True, epoch=1, wall_time_s=10.0, steps=100, samples=6400)
    missed = table.loc[("b", 0)]
    assert not missed.reached
    assert all(math.isnan(missed[c]) for c in ("epoch", "wall_time_s", "steps", "samples"))
    by_run = table.groupby("run").agg(reached=("reached", "sum"), time=("wall_time_s", "mean"))
    assert by_run.loc["a"].tolist() == [2, 15.0] and by_run.loc["b", "reached"] == 0


def test_first_reach_target_above_everything_and_below_everything():
    assert not first_reach(histories(), target=0.99).reached.any()
    low = first_reach(histories(), target=0.0)
    assert low.reached.all() and (low.epoch == 1).all() and (low.wall_time_s == 10.0).all()
