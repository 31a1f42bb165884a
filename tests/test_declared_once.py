"""A strategy's parameters are declared once: a class defined here, in the test, reaches ``build``, the
command line and the panel builder with no edit anywhere else."""
import pytest

from labkit.arguments import build_parser
from labkit.cli import _strategy_params
from labkit.checks import check_float
from labkit.strategies import REGISTRY, Param, Strategy, build
from labkit.widgets import trajectory_panel


@pytest.fixture
def halving():
    class Halving(Strategy):
        """Halve the batch (divide by ``factor``) when the loss rises, else hold."""

        name = "halving"
        uses = requires = ("loss",)
        params = {"factor": Param("divide the batch by this when the loss rises", "factor ÷", [1.5, 2.0, 4.0])}

        def __init__(self, b_init: int = 32, *, factor: float = 2.0, **bounds):
            super().__init__(b_init, **bounds)
            self.factor = check_float("factor", factor, low=1.0, low_open=True)
            self.last: float | None = None

        def _decide(self, loss: float) -> tuple[float, str]:
            rose, self.last = self.last is not None and loss > self.last, loss
            return (self.value / self.factor, "loss rose") if rose else (self.value, "hold")

    yield Halving
    REGISTRY.pop("halving", None)


def test_a_new_strategy_reaches_build_the_cli_and_the_panels(halving):
    s = build("halving", b_init=64, factor=4.0, min_batch=8)
    assert [s.step(loss=v) for v in (1.0, 2.0, 1.5, 3.0)] == [64, 16, 16, 8]
    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--strategy", "halving", "--factor", "4"])
    assert _strategy_params(args) == {"factor": 4.0}                 # typed from the annotation: a float
    train = parser._subparsers._group_actions[0].choices["train"]
    assert "halving: divide the batch by this when the loss rises" in train.format_help()
    panel = trajectory_panel("halving", steps=10, signals={"loss": [2, 1, 3, 2, 4, 1, 1, 2, 3, 1]})
    control = {c.name: c for c in panel.controls}["factor"]
    assert (control.label, control.values) == ("factor ÷", (1.5, 2.0, 4.0))
    assert panel.trajectory(factor=4.0)[:4] == [32, 32, 32, 8]       # B_0, then the decisions


def test_a_parameter_without_its_param_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"strategy 'sloppy' \(Sloppy\) declares no Param for \['step'\]"):
        class Sloppy(Strategy):
            name = "sloppy"

            def __init__(self, b_init: int = 32, *, step: int = 8, **bounds):
                super().__init__(b_init, **bounds)

            def _decide(self) -> tuple[float, str]:
                return self.value + 8, "grow"
    assert "sloppy" not in REGISTRY


def test_run_flags_default_to_train_config():
    from dataclasses import fields

    from labkit.train import TrainConfig

    args = build_parser().parse_args(["train", "--out", "runs/never-written", "--device", "cpu"])
    for f in fields(TrainConfig):
        if hasattr(args, f.name) and f.name not in ("device", "quick"):
            assert getattr(args, f.name) == f.default, f.name
