"""Interactive panels the chapters reuse: sliders for a, α, K, B_init and the bounds → a trajectory plot.

    >>> from labkit.widgets import trajectory_panel
    >>> panel = trajectory_panel("loss", steps=40, alpha=[0.1, 0.3, 0.9])   # a synthetic loss curve
    >>> panel                      # in Jupyter: live ipywidgets; in the built book: static HTML + JS

``noise_panel()`` draws SGD's noise scale and the updates of a "decay LR" run against a "grow batch" one
(``labkit.lr_schedules.step_pair``) for sliders over the milestones, γ, the starting lr and batch.

Also: ``trajectory(strategy, steps, signals)`` steps any strategy over a signal sequence and returns
B_0 … B_steps; ``synthetic_loss`` / ``synthetic_entropy`` / ``synthetic_gns`` make deterministic signal
curves; ``plot_trajectories`` draws trajectories with matplotlib.
Chapters: every strategy chapter of the book.
"""
from labkit.widgets.curriculum import CurriculumPanel, curriculum_panel
from labkit.widgets.goodput import GoodputPanel, goodput_panel
from labkit.widgets.grid import MAX_POINTS, trajectory
from labkit.widgets.noise import NoisePanel, noise_panel, plot_pair
from labkit.widgets.panel import TrajectoryPanel, trajectory_panel
from labkit.widgets.plot import plot_trajectories
from labkit.widgets.sequences import SequencesPanel, sequences_panel
from labkit.widgets.serving import ServingPanel, serving_panel
from labkit.widgets.synthetic import (MemoryModel, StepTimeModel, default_signals, synthetic_entropy, synthetic_gns,
                                      synthetic_loss)

__all__ = ["trajectory_panel", "TrajectoryPanel", "trajectory", "plot_trajectories", "synthetic_loss",
           "synthetic_entropy", "synthetic_gns", "default_signals", "MemoryModel", "MAX_POINTS", "noise_panel",
           "NoisePanel", "plot_pair", "goodput_panel", "GoodputPanel", "StepTimeModel",
           "sequences_panel", "SequencesPanel", "serving_panel", "ServingPanel",
           "curriculum_panel", "CurriculumPanel"]
