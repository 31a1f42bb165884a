"""labkit.cost: run costs against numbers worked by hand, the trapezoid rule against integrals known in
closed form, and the energy meter on a CPU and against a fake ``pynvml`` (counter and power sampling)."""
import math
import sys
import threading
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch

from labkit.cost import EnergyMeter, Prices, PriceWindows, Upfront, cost_table, run_cost, trapezoid_joules


def history(epoch_s: float, accs=(0.5, 0.8, 0.9, 0.92), watts: float | None = None) -> pd.DataFrame:
    """A fit-style history: 100 steps of 64 examples and ``epoch_s`` seconds per epoch, at ``watts``."""
    epochs = range(1, len(accs) + 1)
    frame = pd.DataFrame(dict(epoch=list(epochs), steps=[100 * e for e in epochs], samples=[6400 * e for e in epochs],
                              wall_time_s=[epoch_s * e for e in epochs], test_acc=list(accs), reason=""))
    return frame if watts is None else frame.assign(energy_j=watts * frame.wall_time_s)


# -- run_cost / cost_table -------------------------------------------------------------------------------

def test_run_cost_of_the_whole_run():
    cost = run_cost(history(360.0, watts=500.0))            # 4 epochs: 1440 s = 0.4 h, 400 steps, 720 kJ
    owned = cost.pop("owned_usd")
    assert cost == pytest.approx(dict(time_s=1440.0, steps=400, samples=25600, per_step_s=3.6, energy_j=720e3,
                                      kwh=0.2, cloud_usd=1.2, energy_usd=0.03))     # 0.4 h · 3.00, 0.2 kWh · 0.15
    assert math.isnan(owned)                                                         # no upfront given


def test_upfront_hardware_is_spread_over_its_useful_hours():
    card = Upfront(hardware_usd=26_280.0, lifetime_years=2.0, utilisation=0.5)   # 8760 useful hours
    assert card.hourly == pytest.approx(3.0)
    assert card.break_even(gpu_hour=6.0) == pytest.approx(0.25)                  # 26 280 / (17 520 · 6)
    cost = run_cost(history(360.0, watts=500.0), Prices(gpu_hour=2.0, kwh=0.15, gpus=4, upfront=card))
    # 0.4 h on 4 GPUs = 1.6 GPU-hours: rented 1.6 · 2.00 = 3.20; owned 1.6 · 3.00 + 0.2 kWh · 0.15 = 4.83
    assert (cost["cloud_usd"], cost["owned_usd"]) == pytest.approx((3.2, 4.83))
    with pytest.raises(ValueError, match="utilisation=0 is out of range"):
        Upfront(utilisation=0)
    with pytest.raises(ValueError, match="gpus=0 is out of range"):
        Prices(gpus=0)
    with pytest.raises(TypeError, match="upfront=.* must be an Upfront"):
        Prices(upfront=25_000)


def test_run_cost_stops_at_the_first_epoch_that_reaches_the_target():
    prices = Prices(gpu_hour=2.0, kwh=0.5)
    for target in (0.85, 0.9):                               # epoch 3 (0.90) is the first at or above both
        cost = run_cost(history(360.0, watts=500.0), prices, target_acc=target)
        assert cost["reached"] is True and math.isnan(cost.pop("owned_usd"))
        assert cost == pytest.approx(dict(time_s=1080.0, steps=300, samples=19200, per_step_s=3.6, energy_j=540e3,
                                          kwh=0.15, cloud_usd=0.6, energy_usd=0.075, reached=True))
    missed = run_cost(history(360.0, watts=500.0), prices, target_acc=0.95)
    assert missed["reached"] is False and missed["time_s"] == 1440.0 and missed["cloud_usd"] == pytest.approx(0.8)


def test_run_cost_without_energy_column_has_nan_energy():
    cost = run_cost(history(360.0))
    assert "reached" not in cost and cost["cloud_usd"] == pytest.approx(1.2)
    assert all(math.isnan(cost[key]) for key in ("energy_j", "kwh", "energy_usd"))


def test_cost_table_means_over_seeds_and_counts_those_that_reached():
    frames = [history(360.0, watts=400.0).assign(run="fixed", seed=0),        # 1440 s
              history(540.0, watts=400.0).assign(run="fixed", seed=1),        # 2160 s
              history(900.0, watts=400.0).assign(run="fixed", seed=2),        # 3600 s: mean 2400, median 2160
              history(180.0, watts=400.0).assign(run="linear", seed=0),       # 720 s; 0.85 reached at 540 s
              history(240.0, accs=(0.5, 0.6, 0.7, 0.8), watts=400.0).assign(run="linear", seed=1)]  # never
    histories = pd.concat(frames, ignore_index=True)
    table = cost_table(histories)
    assert list(table.index) == ["linear", "fixed"]                      # cheapest first, not alphabetical
    assert table.seeds.tolist() == [2, 3] and "reached" not in table
    assert table.time_s.tolist() == pytest.approx([840.0, 2400.0])
    assert table.cloud_usd.tolist() == pytest.approx([0.7, 2.0])
    assert table.kwh.tolist() == pytest.approx([400 * 840 / 3.6e6, 400 * 2400 / 3.6e6])
    targeted = cost_table(histories, target_acc=0.85)
    assert targeted.loc["linear", "reached"] == 1 and targeted.loc["fixed", "reached"] == 3
    assert targeted.loc["linear", "time_s"] == pytest.approx((540 + 960) / 2)
    assert targeted.loc["fixed", "time_s"] == pytest.approx((1080 + 1620 + 2700) / 3)
    assert targeted.loc["fixed", "steps"] == 300
    spread = cost_table(histories, spread=True)
    assert spread.loc["fixed", "time_s_std"] == pytest.approx(np.std([1440.0, 2160.0, 3600.0], ddof=1))
    assert spread.loc["linear", "cloud_usd_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert spread.drop(columns=[c for c in spread if c.endswith("_std")]).equals(table)


@pytest.mark.parametrize("target, match", [(0, r"target_acc=0 is out of range.*\(0, 1\]"),
                                           (1.5, r"target_acc=1.5 is out of range"),
                                           (float("nan"), r"target_acc=nan is not finite")])
def test_bad_target_is_named(target, match):
    with pytest.raises(ValueError, match=match):
        run_cost(history(360.0), target_acc=target)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"missing column\(s\) 'steps', 'samples'"):
        run_cost(history(360.0).drop(columns=["steps", "samples"]))
    with pytest.raises(ValueError, match=r"missing column\(s\) 'test_acc'"):
        run_cost(history(360.0).drop(columns="test_acc"), target_acc=0.9)
    run_cost(history(360.0).drop(columns="test_acc"))                        # needed only with a target
    with pytest.raises(ValueError, match=r"histories .* missing column\(s\) 'run', 'seed'"):
        cost_table(history(360.0))
    with pytest.raises(ValueError, match="no rows"):
        run_cost(history(360.0).iloc[:0])


def test_bad_prices_are_named():
    with pytest.raises(ValueError, match="gpu_hour=-1 is out of range"):
        Prices(gpu_hour=-1)
    with pytest.raises(TypeError, match="kwh='cheap' must be a number"):
        Prices(kwh="cheap")
    with pytest.raises(TypeError, match="prices=.* must be a Prices"):
        run_cost(history(360.0), prices={"gpu_hour": 2.0})


# -- electricity price by hour of day --------------------------------------------------------------------

NIGHT_DAY = PriceWindows(((7, 23, 0.25), (0, 7, 0.10), (23, 24, 0.10)))      # any order


def test_price_windows_price_at():
    assert [NIGHT_DAY.price_at(h) for h in (0, 6.5, 7, 22.9, 23, 23.5, 30, -1)] == \
        [0.10, 0.10, 0.25, 0.25, 0.10, 0.10, 0.10, 0.10]


def test_price_windows_cost_spreads_energy_over_the_span():
    assert NIGHT_DAY.cost(kwh=2.0, start_hour=6, hours=2) == pytest.approx(0.10 + 0.25)     # 1 kWh at each
    assert NIGHT_DAY.cost(kwh=4.0, start_hour=22, hours=4) == pytest.approx(0.25 + 0.10 + 2 * 0.10)   # midnight
    assert NIGHT_DAY.cost(kwh=48.0, start_hour=0, hours=48) == pytest.approx(2 * (7 * 0.10 + 16 * 0.25 + 0.10))
    flat = PriceWindows(((0, 24, 0.15),))
    assert flat.cost(kwh=3.0, start_hour=17.3, hours=50) == pytest.approx(3.0 * 0.15)


def test_price_windows_must_tile_the_day():
    with pytest.raises(ValueError, match=r"window \(8, 24, 0.2\) should start at 7"):
        PriceWindows(((0, 7, 0.1), (8, 24, 0.2)))
    with pytest.raises(ValueError, match="the last one ends at 20"):
        PriceWindows(((0, 20, 0.1),))
    with pytest.raises(ValueError, match=r"price of window \(0, 24, -0.1\)=-0.1 is out of range"):
        PriceWindows(((0, 24, -0.1),))
    with pytest.raises(ValueError, match="hours=0 is out of range"):
        NIGHT_DAY.cost(kwh=1.0, start_hour=0, hours=0)


# -- trapezoid rule ----------------------------------------------------------------------------------------

def test_trapezoid_constant_power():
    assert trapezoid_joules([0.0, 0.5, 1.0, 2.0], [100.0] * 4) == pytest.approx(200.0)    # 100 W for 2 s


def test_trapezoid_is_exact_for_a_linear_ramp():
    times = [0.0, 0.3, 1.0, 2.5, 4.0]                       # uneven samples of P(t) = 10 t
    assert trapezoid_joules(times, [10 * t for t in times]) == pytest.approx(80.0)       # ∫ 10 t dt = 5 · 4²


def test_trapezoid_edge_cases_and_errors():
    assert trapezoid_joules([], []) == 0.0 and trapezoid_joules([1.0], [50.0]) == 0.0
    with pytest.raises(ValueError, match="2 times and 3 power samples"):
        trapezoid_joules([0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="0.5 follows 1.0"):
        trapezoid_joules([0.0, 1.0, 0.5], [1.0, 1.0, 1.0])


# -- EnergyMeter -------------------------------------------------------------------------------------------

def test_energy_meter_on_cpu_is_unavailable_and_reads_nan():
    with EnergyMeter("cpu") as meter:
        assert math.isnan(meter.read())
    assert not meter.available and meter.reason.startswith("CPU device")
    assert math.isnan(meter.joules) and math.isnan(meter.watts) and meter.seconds >= 0
    assert "unavailable: CPU device" in repr(meter)


def test_energy_meter_misuse():
    meter = EnergyMeter("cpu")
    with pytest.raises(RuntimeError, match=r"read\(\) before start\(\)"):
        meter.read()
    with pytest.raises(RuntimeError, match=r"stop\(\) without a running start\(\)"):
        meter.stop()
    meter.start()
    with pytest.raises(RuntimeError, match="already running"):
        meter.start()
    with pytest.raises(ValueError, match="interval=0 is out of range"):
        EnergyMeter("cpu", interval=0)


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


@pytest.fixture
def fake_nvml(monkeypatch):
    """A fake ``pynvml`` on a machine that says it has CUDA: one GPU, UUID "GPU-abc", as NVML's index 0.
    Set ``counter_mj`` (a list of readings, in order) and ``power_mw`` (constant) on it; left None, that
    reading raises NotSupported. ``calls`` records (function, handle)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError, nvml.NVMLError_NotSupported = NVMLError, NVMLError_NotSupported
    nvml.counter_mj, nvml.power_mw, nvml.calls = None, None, []
    nvml.nvmlInit = lambda: None

    def by_uuid(uuid):
        if uuid != "GPU-abc":
            raise NVMLError("Not Found")
        return "handle-abc"

    def energy(handle):
        nvml.calls.append(("energy", handle))
        if nvml.counter_mj is None:
            raise NVMLError_NotSupported("Not Supported")
        return nvml.counter_mj.pop(0)

    def power(handle):
        nvml.calls.append(("power", handle))
        if nvml.power_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        return nvml.power_mw

    nvml.nvmlDeviceGetHandleByUUID, nvml.nvmlDeviceGetHandleByIndex = by_uuid, lambda index: f"handle-{index}"
    nvml.nvmlDeviceGetTotalEnergyConsumption, nvml.nvmlDeviceGetPowerUsage = energy, power
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(uuid="abc" if index == 0 else "xyz"))
    return nvml


def test_energy_meter_reads_the_energy_counter(fake_nvml):
    fake_nvml.counter_mj = [0, 10_000, 15_000, 22_500]      # probe, start, read, stop
    with EnergyMeter("cuda:0") as meter:
        assert meter.read() == pytest.approx(5.0)            # (15 000 − 10 000) mJ
    assert meter.available and meter.reason == "" and meter.method == "counter"
    assert meter.joules == pytest.approx(12.5) and meter.read() == pytest.approx(12.5)
    assert meter.watts == pytest.approx(12.5 / meter.seconds)
    assert {handle for _, handle in fake_nvml.calls} == {"handle-abc"}      # found by UUID
    assert all(name == "energy" for name, _ in fake_nvml.calls)


def test_energy_meter_falls_back_to_the_device_index(fake_nvml, monkeypatch):
    fake_nvml.counter_mj = [0, 0, 1000]
    with EnergyMeter("cuda:1"):                             # its UUID "GPU-xyz" is unknown to NVML
        pass
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace())  # no uuid
    fake_nvml.counter_mj = [0, 0, 1000]
    with EnergyMeter("cuda:0"):
        pass
    assert [handle for _, handle in fake_nvml.calls] == ["handle-1"] * 3 + ["handle-0"] * 3


def test_energy_meter_samples_power_when_the_counter_is_not_supported(fake_nvml):
    fake_nvml.power_mw = 100_000                            # 100 W
    with EnergyMeter("cuda:0", interval=0.005) as meter:
        time.sleep(0.05)
        first = meter.read()
        time.sleep(0.05)
        assert meter.read() > first > 0
    assert meter.method == "sampling"
    assert meter.joules == pytest.approx(100 * meter.seconds, rel=0.05)     # constant power: P · T
    powers = sum(name == "power" for name, _ in fake_nvml.calls)
    assert powers >= 6                                       # probe, start, 2 reads, stop, and the thread's
    assert "labkit-energy" not in [thread.name for thread in threading.enumerate()]   # stopped with the meter
    assert powers == sum(name == "power" for name, _ in fake_nvml.calls)


def test_energy_meter_without_counter_or_power_is_unavailable(fake_nvml):
    meter = EnergyMeter("cuda:0")
    assert not meter.available and meter.reason == "NVML error: Not Supported"
    with meter:
        assert math.isnan(meter.read())


def test_energy_meter_with_nvml_failing_or_missing_does_not_raise(fake_nvml, monkeypatch):
    def no_driver():
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setattr(fake_nvml, "nvmlInit", no_driver)
    assert EnergyMeter("cuda:0").reason == "NVML error: Driver Not Loaded"
    monkeypatch.setitem(sys.modules, "pynvml", None)          # import pynvml raises ImportError
    meter = EnergyMeter("cuda:0")
    assert not meter.available and meter.reason.startswith("pynvml not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert EnergyMeter("cuda").reason == "CUDA not available"


# -- cost_by_run / energy_verdict (the Conclusions chapter's cost section) -------------------------------

def test_cost_by_run_by_hand():
    from labkit.cost import cost_by_run

    runs = {("fixed-b_init=128", 0): (10.0, 100.0), ("fixed-b_init=128", 1): (12.0, 100.0),
            ("fixed-b_init=1024", 0): (5.0, 200.0), ("fixed-b_init=1024", 1): (5.0, 200.0)}
    histories = pd.concat([history(s, watts=w).assign(run=run, seed=seed) for (run, seed), (s, w) in runs.items()])
    whole = cost_by_run(histories)
    assert list(whole.index) == ["fixed 1024", "fixed 128"]          # short labels, sorted
    assert list(whole.columns) == ["time s", "time ±", "energy J", "energy ±", "mean W", "cloud ¢"]
    # fixed 128: 4 epochs of 10 s and of 12 s → 40 and 48 s, mean 44, std √32; 100 W → 4400 ± 100·√32 J;
    # cloud: 44 s = 0.01222 h at $3.00 → 3.667 ¢
    assert whole.loc["fixed 128"].tolist() == pytest.approx([44.0, math.sqrt(32), 4400.0, 100 * math.sqrt(32),
                                                             100.0, 11 / 3])
    assert whole.loc["fixed 1024"].tolist() == pytest.approx([20.0, 0.0, 4000.0, 0.0, 200.0, 5 / 3])
    # to 0.9: the third epoch (accs 0.5, 0.8, 0.9, 0.92) → 30 and 36 s for fixed 128, both seeds reached
    to_target = cost_by_run(histories, target_acc=0.9)
    assert list(to_target.columns)[:2] == ["reached", "time s"]
    assert to_target.loc["fixed 128", ["reached", "time s", "energy J"]].tolist() == pytest.approx([2, 33.0, 3300.0])
    assert cost_by_run(histories, target_acc=0.95).reached.tolist() == [0, 0]


def test_energy_verdict_by_hand():
    from labkit.cost import energy_verdict

    table = pd.DataFrame({"energy J": [100.0, 300.0, 150.0], "energy ±": [10.0, 10.0, 60.0]},
                         index=["fixed 1024", "fixed 128", "loss 64"])
    whole = table.assign(**{"energy J": [500.0, 200.0, 450.0]})
    entry, lines = energy_verdict(table, whole, 0.9, span="4 epochs")
    # to 0.9: fixed 1024 leads; loss 64 is 50 J behind, under the larger std 60 → tied; fixed 128 200 J behind
    # the whole run: fixed 128 leads by 250 J > 10; loss 64 is 250 J behind it as well
    assert lines == ["least energy to 0.9: fixed 1024 (tied within noise: loss 64)",
                     "least energy over 4 epochs: fixed 128 (ahead by more than the seed std)",
                     ("adaptive runs over 4 epochs: 450 to 450 J,\n  against 200 J for fixed 128 and 500 J for "
                      "fixed 1024")]
    assert entry["cost / energy"] == ("to 0.9: fixed 1024 (tied within noise: loss 64); whole run: fixed 128 "
                                      "(3 strategies)")
    assert set(entry) == {"accuracy", "time", "cost / energy", "caveat"}
