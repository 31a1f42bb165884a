"""labkit.plots.plain_log: the ticks it keeps and how it prints them."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from labkit.plots import plain_log


def test_plain_log_keeps_the_ticks_in_view_and_prints_them_plainly():
    fig, ax = plt.subplots()
    ax.plot([3, 700], [1, 2])
    ax.set(xscale="log", xlim=(3, 700))
    # of 0.5, 1, 2, 5, ..., 50000 only those in [3, 700] stay
    assert plain_log(ax.xaxis) == [5, 10, 20, 50, 100, 200, 500]
    assert list(ax.get_xticks()) == [5, 10, 20, 50, 100, 200, 500]
    labels = [ax.xaxis.get_major_formatter()(t, i) for i, t in enumerate(ax.get_xticks())]
    assert labels == ["5", "10", "20", "50", "100", "200", "500"]
    assert ax.xaxis.get_minor_formatter()(4, 0) == ""
    assert plain_log(ax.xaxis, ticks=(1, 4, 1000)) == [4]
    plt.close(fig)
