"""Strict state: ``load_state_dict`` takes exactly what ``state_dict()`` wrote, re-checks it, and changes
nothing when it refuses."""
import json
import math

import pytest

import labkit.strategies as S
from labkit.checks import check_float, check_int
from labkit.lr_schedules import LRSchedule
from labkit.signals import LossDiff, LossEMA, LossVariance, window_std, window_variance
from labkit.state import StateKeyError

PARAMS = {"loss": {"delta": "variance", "window": 3}, "epoch": {"milestones": {2: 128, 4: 256}},
          "cyclical": {"period": 4}, "linear": {"a": 16.0}}
SIGNALS = dict(loss=1.0, entropy=0.5, gns=100.0, memory=0.5, step_time=0.01)


def used(name):
    s = S.build(name, b_init=64, min_batch=16, max_batch=512, multiple_of=8, **PARAMS.get(name, {}))
    for k in range(3):
        s.step(**{**SIGNALS, "loss": 1.0 - 0.1 * k})
    return s


def refuses(obj, state, error, *words):
    before, attributes = obj.state_dict(), dict(vars(obj))
    with pytest.raises(error) as info:
        obj.load_state_dict(state)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert obj.state_dict() == before and all(vars(obj)[k] is v for k, v in attributes.items())  # untouched
    return str(info.value)


ALL = sorted(S.STRATEGIES)


@pytest.mark.parametrize("name", ALL)
def test_round_trip_through_json_into_a_default_object(name):
    s = used(name)
    fresh = S.build(name, **({"milestones": {}} if name == "epoch" else {}))
    fresh.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert fresh.state_dict() == s.state_dict()
    assert fresh.step(**SIGNALS) == s.step(**SIGNALS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [None, "garbage", 42, ["batch_size", 64]])
def test_non_dict_is_a_type_error(name, bad):
    refuses(used(name), bad, TypeError, f"{S.STRATEGIES[name].__name__}.load_state_dict", "needs the dict")


@pytest.mark.parametrize("name", ALL)
def test_missing_and_unknown_keys_are_named(name):
    s = used(name)
    state = s.state_dict()
    del state["steps"]
    text = refuses(s, {**state, "speed": 1}, KeyError, "missing keys ['steps']", "unknown keys ['speed']",
                   S.STRATEGIES[name].__name__)
    assert not text.startswith("'")      # a sentence, not a quoted KeyError repr
    refuses(s, {"batch_size": 10**9}, StateKeyError, "missing keys")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("key, value, error, words", [
    ("batch_size", 10**9, ValueError, "batch_size=1000000000 is out of range"),
    ("batch_size", "abc", TypeError, "batch_size='abc' must be an integer"),
    ("batch_size", True, TypeError, "batch_size=True must be an integer"),
    ("batch_size", 64.0, TypeError, "batch_size=64.0 must be an integer"),
    ("batch_size", 60, ValueError, "not a multiple of multiple_of=8"),
    ("steps", -1, ValueError, "steps=-1"),
    ("value", math.nan, ValueError, "value=nan is not finite"),
    ("value", math.inf, ValueError, "value=inf is not finite"),
    ("value", 4096.0, ValueError, "value=4096"),
    ("min_batch", 1024, ValueError, "min_batch=1024 is greater than max_batch=512"),
    ("max_batch", 8, ValueError, "min_batch=16 is greater than max_batch=8"),
    ("multiple_of", 0, ValueError, "multiple_of=0"),
    ("b_init", 8, ValueError, "b_init=8 is outside"),
    ("history", [{"step": 1}], ValueError, "history entry"),
    ("history", "x", TypeError, "history='x' must be a list"),
])
def test_bad_values_and_broken_invariants_are_refused(name, key, value, error, words):
    s = used(name)
    refuses(s, {**s.state_dict(), key: value}, error, words, S.STRATEGIES[name].__name__)


@pytest.mark.parametrize("name", ALL)
def test_another_strategys_state_is_refused(name):
    s = used(name)
    for other in ALL:
        if other != name:
            refuses(s, used(other).state_dict(), (ValueError, KeyError), S.STRATEGIES[other].__name__)


def test_inverted_bounds_consistent_in_every_field_are_still_refused():
    s = used("linear")
    state = {**s.state_dict(), "min_batch": 512, "max_batch": 16}
    refuses(s, state, ValueError, "min_batch=512 is greater than max_batch=16")


def test_hyper_parameters_are_rechecked():
    s = used("exponential")
    refuses(s, {**s.state_dict(), "a": -2.0}, ValueError, "a=-2")
    refuses(s, {**s.state_dict(), "a": "2"}, TypeError, "a='2' must be a number")
    loss = used("loss")
    refuses(loss, {**loss.state_dict(), "delta": "median"}, ValueError, "delta='median'")
    refuses(loss, {**loss.state_dict(), "alpha": 0.0}, ValueError, "alpha=0")
    memory = used("memory")
    refuses(memory, {**memory.state_dict(), "failed": 0}, ValueError, "failed=0")
    refuses(memory, {**memory.state_dict(), "failed": "x"}, TypeError, "failed='x'")
    refuses(memory, {**memory.state_dict(), "readings": [[64, 0.5]] * 3}, ValueError, "at most 2")
    gns = used("gns")
    refuses(gns, {**gns.state_dict(), "smoothed": -3.0}, ValueError, "smoothed=-3")
    epoch = used("epoch")
    refuses(epoch, {**epoch.state_dict(), "milestones": [[2, 4096]]}, ValueError, "milestones[2]=4096")


def test_nested_tracker_state_is_checked_and_may_change_class():
    a = S.LossBased(b_init=64, delta="ema", alpha=0.5)
    for loss in (1.0, 0.9, 0.8):
        a.step(loss=loss)
    b = S.LossBased(b_init=64, delta="variance", window=4)      # other hyper-parameters: the state decides
    b.load_state_dict(a.state_dict())
    assert type(b.tracker) is LossEMA and b.step(loss=0.7) == a.step(loss=0.7)
    state = a.state_dict()
    state["tracker"] = {**state["tracker"], "average": "high"}
    refuses(a, state, TypeError, "average='high'")
    state["tracker"] = LossDiff().state_dict()
    refuses(a, state, ValueError, "'LossDiff'")


def test_trackers_and_lr_schedule_are_strict():
    v = LossVariance(window=3)
    for loss in (1.0, 2.0):
        v.update(loss)
    refuses(v, {**v.state_dict(), "values": [1.0, 2.0, 3.0, 4.0]}, ValueError, "at most 3")
    refuses(v, {**v.state_dict(), "values": [1.0, "2"]}, TypeError, "must be a number")
    refuses(v, {**v.state_dict(), "values": [1.0, math.nan]}, ValueError, "not finite")
    s = LRSchedule("cosine", total_samples=100)
    refuses(s, None, TypeError, "LRSchedule.load_state_dict needs the dict")
    refuses(s, {**s.state_dict(), "seen": 1.5}, TypeError, "seen=1.5")
    refuses(s, {**s.state_dict(), "class": "LossDiff"}, ValueError, "'LossDiff'")


@pytest.mark.parametrize("bad", ["16", "0.5", b"2"])
def test_strings_are_not_numbers(bad):
    with pytest.raises(TypeError, match="must be a number, not a string"):
        check_float("a", bad)
    with pytest.raises(TypeError, match="must be an integer, not a string"):
        check_int("b_init", bad)
    with pytest.raises(TypeError, match="not a string"):
        S.build("linear", a=bad)
    with pytest.raises(TypeError, match="not a string"):
        S.build("fixed", b_init=bad)


def test_windowed_variance_of_huge_losses_does_not_overflow():
    assert window_variance([1e300, 1e300, 1e300]) == 0.0
    assert window_std([1e300, 2e300, 3e300]) == pytest.approx(math.sqrt(2 / 3) * 1e300)
    assert window_variance([1e300, 2e300, 3e300]) == math.inf          # 6.7e599 is beyond the largest float
    assert window_variance([1.0, 2.0, 3.0]) == pytest.approx(2 / 3)
    s = S.LossBased(b_init=64, delta="variance", window=3)
    for loss in (1e300, 1.0001e300, 1e300, 1.00001e300):
        s.step(loss=loss)
    assert s.history[-1].reason.startswith("grow: loss settled")     # cv ≈ 5e-5, not inf


def test_find_batch_size_refuses_inverted_bounds():
    from labkit.finder import find_batch_size
    with pytest.raises(ValueError, match="min_batch=512 is greater than max_batch=64"):
        find_batch_size("mlp", "digits", min_batch=512, max_batch=64, device="cpu")
