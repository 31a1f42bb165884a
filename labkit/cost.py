"""The resource cost of a run: time, energy and money, each the cost of one step times the number of steps.

    >>> from labkit.cost import EnergyMeter, Prices, cost_table, run_cost
    >>> with EnergyMeter("cuda") as meter:          # NVML on a GPU; on a CPU unavailable, reads nan
    ...     history = fit(config)
    >>> meter.joules, meter.watts                   # energy of the whole call (J) and mean power (W)
    >>> run_cost(history.assign(energy_j=...), Prices(gpu_hour=2.50, kwh=0.30), target_acc=0.98)
    >>> cost_table(load_histories("results/mnist-mlp"), target_acc=0.98)

A run of S optimizer steps at t_step seconds per step costs

    time           T = t_step · S                   (s; ``wall_time_s``: training steps, eval excluded)
    cloud money      = T / 3600 · price per GPU-hour
    energy         E = ∫ P dt                       (J, with the GPU's power P in W)
    kWh              = E / 3.6e6                    (1 kWh = 1000 W · 3600 s)
    energy money     = kWh · price per kWh

so a larger batch saves money only if it cuts the number of steps by more than it raises the cost of a
step. Those are usage costs. Hardware bought (or reserved for a term) is an upfront cost, paid whether it
is used or not; spread over the hours it does useful work (``Upfront``),

    owned money      = T / 3600 · gpus · hardware / (lifetime · 8760 h · utilisation)  +  energy money

and owning is cheaper than renting when utilisation > hardware / (lifetime · 8760 h · price per GPU-hour).
Book: Introduction, "Cost".

Energy comes from NVML (``pip install 'labkit[gpu]'``, import name ``pynvml``): from Volta on, the GPU's
total-energy counter (mJ), read at start and at each reading; where the counter is not supported, the
power (mW) sampled every ``interval`` seconds on a background thread and integrated by the trapezoid rule

    E ≈ Σ_i (t_{i+1} − t_i) · (P_i + P_{i+1}) / 2.

Both count the whole GPU (every process on it, idle power included) and only the work the GPU has done by
then: synchronize before reading (``fit`` does at each epoch end). On a CPU, or without NVML, the meter
says why in ``reason`` and reads nan; a missing NVML never raises.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from labkit.checks import check_float, check_int
from labkit.runtime import pick_device

J_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0
QUANTITIES = ("time_s", "steps", "samples", "per_step_s", "energy_j", "kwh", "cloud_usd", "energy_usd",
              "owned_usd")
HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True)
class Upfront:
    """Hardware paid before any run: ``hardware_usd`` per GPU (its price, or a reservation's whole term),
    used for ``lifetime_years`` at a share ``utilisation`` of the hours doing useful work. Each GPU-hour of
    a run then carries

        hourly = hardware_usd / (lifetime_years · 8760 · utilisation)

    of it. The defaults are assumptions: an H100-class card near 25 000 USD, written off over 3 years,
    busy half the time (``hourly`` ≈ 1.90 USD)."""
    hardware_usd: float = 25_000.0
    lifetime_years: float = 3.0
    utilisation: float = 0.5

    def __post_init__(self):
        check_float("hardware_usd", self.hardware_usd, low=0.0)
        check_float("lifetime_years", self.lifetime_years, low=0.0, low_open=True)
        check_float("utilisation", self.utilisation, low=0.0, high=1.0, low_open=True)

    @property
    def hourly(self) -> float:
        """USD per GPU-hour of useful work."""
        return self.hardware_usd / (self.lifetime_years * HOURS_PER_YEAR * self.utilisation)

    def break_even(self, gpu_hour: float) -> float:
        """The utilisation above which owning costs less per GPU-hour than renting at ``gpu_hour`` (energy
        aside): hardware_usd / (lifetime_years · 8760 · gpu_hour); above 1, renting always wins."""
        gpu_hour = check_float("gpu_hour", gpu_hour, low=0.0, low_open=True)
        return self.hardware_usd / (self.lifetime_years * HOURS_PER_YEAR * gpu_hour)


@dataclass(frozen=True)
class Prices:
    """What an hour of GPU and a kWh cost, in USD. The defaults are assumptions, not facts: an on-demand
    H100 hour at a cloud provider (about 3.00) and an industrial electricity price (about 0.15 per kWh).
    Replace them with your own: ``Prices(gpu_hour=2.50, kwh=0.30)``. ``gpus`` is how many GPUs a run holds
    (the cloud and owned prices are per GPU); ``upfront`` the owned hardware (``Upfront``), if any."""
    gpu_hour: float = 3.00     # USD per GPU-hour
    kwh: float = 0.15          # USD per kWh
    gpus: int = 1
    upfront: Upfront | None = None

    def __post_init__(self):
        check_float("gpu_hour", self.gpu_hour, low=0.0)
        check_float("kwh", self.kwh, low=0.0)
        check_int("gpus", self.gpus, low=1)
        if self.upfront is not None and not isinstance(self.upfront, Upfront):
            raise TypeError(f"upfront={self.upfront!r} must be an Upfront, e.g. Upfront(hardware_usd=25_000)")


@dataclass(frozen=True)
class PriceWindows:
    """Electricity price by hour of day: ``windows`` = ((start_hour, end_hour, USD per kWh), ...) tiling
    [0, 24) without gaps or overlaps (a night tariff across midnight is two windows). The energy of a span
    is taken as spread evenly over it, so it costs

        kWh / hours · ∫ price(h mod 24) dh   over [start_hour, start_hour + hours].

    >>> night_day = PriceWindows(((0, 7, 0.10), (7, 23, 0.25), (23, 24, 0.10)))
    >>> night_day.price_at(6.5), night_day.cost(kwh=2.0, start_hour=6, hours=2)     # 0.10, 0.35
    """
    windows: tuple[tuple[float, float, float], ...]

    def __post_init__(self):
        windows = tuple(sorted(tuple(window) for window in self.windows))
        edge = 0.0
        for start, end, price in windows:
            if start != edge or end <= start:
                raise ValueError(f"windows={self.windows!r} must tile the day [0, 24): window "
                                 f"{(start, end, price)} should start at {edge:g} and end after it")
            check_float(f"price of window {(start, end, price)}", price, low=0.0)
            edge = end
        if edge != 24:
            raise ValueError(f"windows={self.windows!r} must tile the day [0, 24): the last one ends at {edge:g}")
        object.__setattr__(self, "windows", windows)

    def price_at(self, hour: float) -> float:
        """USD per kWh at ``hour`` (taken mod 24; a window holds its start, not its end)."""
        hour = check_float("hour", hour) % 24
        return next(price for start, end, price in self.windows if start <= hour < end)

    def cost(self, kwh: float, start_hour: float, hours: float) -> float:
        """USD for ``kwh`` used evenly over ``hours`` from ``start_hour``."""
        kwh = check_float("kwh", kwh, low=0.0)
        start_hour = check_float("start_hour", start_hour)
        hours = check_float("hours", hours, low=0.0, low_open=True)
        return kwh / hours * (self._integral(start_hour + hours) - self._integral(start_hour))

    def _integral(self, hour: float) -> float:
        """∫ price(h mod 24) dh over [0, hour]: whole days, then the part of the last one."""
        days, rest = divmod(hour, 24.0)
        return sum(price * (days * (end - start) + min(max(rest - start, 0.0), end - start))
                   for start, end, price in self.windows)


def trapezoid_joules(times_s: Sequence[float], watts: Sequence[float]) -> float:
    """Energy (J) of power samples by the trapezoid rule: Σ_i (t_{i+1} − t_i) · (P_i + P_{i+1}) / 2.
    Exact for power linear between samples; 0 for fewer than two samples."""
    if len(times_s) != len(watts):
        raise ValueError(f"{len(times_s)} times and {len(watts)} power samples: give one power per time")
    steps = list(zip(times_s, times_s[1:], watts, watts[1:]))
    backwards = [(t0, t1) for t0, t1, _, _ in steps if t1 < t0]
    if backwards:
        raise ValueError(f"times_s must not decrease, but {backwards[0][1]} follows {backwards[0][0]}")
    return float(sum((t1 - t0) * (p0 + p1) / 2 for t0, t1, p0, p1 in steps))


class EnergyMeter:
    """The GPU's energy (J) between ``start()`` and ``stop()``, read from NVML (see the module docstring).

        with EnergyMeter(device) as meter:
            ...                          # meter.read(): joules so far (e.g. at each epoch end)
        meter.joules, meter.seconds, meter.watts

    ``available`` says whether it measures; ``reason`` says why not ("CPU device", "pynvml not installed",
    "NVML error: ..."), and then every reading is nan. ``method`` is "counter" (the total-energy counter)
    or "sampling" (power every ``interval`` seconds, trapezoid rule). The torch device is matched to
    NVML's by UUID (``CUDA_VISIBLE_DEVICES`` renumbers devices), else by index. NVML stays initialised
    for the process (its init is reference-counted and cheap to hold).
    """

    def __init__(self, device=None, interval: float = 0.05):
        self.interval = check_float("interval", interval, low=0.0, low_open=True)
        self.device = _device(device)
        self.method = ""
        self.joules = self.seconds = math.nan
        self._nvml = self._handle = None
        self._t0: float | None = None
        self._e0 = 0.0
        self._running = False
        self._last: tuple[float, float] | None = None      # sampling: the latest (perf_counter s, W)
        self._sampled_j = 0.0                               # sampling: trapezoids up to _last
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reason = self._connect()

    @property
    def available(self) -> bool:
        return not self.reason

    @property
    def watts(self) -> float:
        """Mean power over the measured span: joules / seconds."""
        return self.joules / self.seconds

    def start(self) -> "EnergyMeter":
        if self._running:
            raise RuntimeError("EnergyMeter.start(): already running; call stop() first")
        self.joules = self.seconds = math.nan
        self._t0, self._running = time.perf_counter(), True
        if self.method == "counter":
            self._e0 = self._counter_j()
        elif self.method == "sampling":
            self._last, self._sampled_j = None, 0.0
            self._sample()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample_every_interval, name="labkit-energy", daemon=True)
            self._thread.start()
        return self

    def read(self) -> float:
        """Joules since ``start()``: live while running, the final value after ``stop()``; nan if unavailable."""
        if self._t0 is None:
            raise RuntimeError("EnergyMeter.read() before start(): use `with EnergyMeter(device) as meter:` "
                               "or call meter.start() first")
        if not self._running:
            return self.joules
        if self.method == "counter":
            return self._counter_j() - self._e0
        if self.method == "sampling":
            self._sample()
            return self._sampled_j
        return math.nan

    def stop(self) -> float:
        """Stop measuring; set and return ``joules`` (and ``seconds``)."""
        if not self._running:
            raise RuntimeError("EnergyMeter.stop() without a running start(): call meter.start() first")
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.joules = self.read()
        self.seconds = time.perf_counter() - self._t0
        self._running = False
        return self.joules

    def __enter__(self) -> "EnergyMeter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        if not self.available:
            return f"EnergyMeter({self.device}, unavailable: {self.reason})"
        return f"EnergyMeter({self.device}, {self.method}, {self.joules:.1f} J over {self.seconds:.1f} s)"

    def _connect(self) -> str:
        """Set up NVML for the device; return why energy cannot be measured ('' when it can)."""
        import torch

        if self.device.type != "cuda":
            return f"{self.device.type.upper()} device: NVML measures NVIDIA GPUs only"
        if not torch.cuda.is_available():
            return "CUDA not available"
        try:
            import pynvml
        except ImportError:
            return "pynvml not installed: pip install 'labkit[gpu]' (package nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            self._handle = _nvml_handle(pynvml, self.device)
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self.method = "counter"
            except pynvml.NVMLError_NotSupported:            # before Volta, or a MIG slice
                pynvml.nvmlDeviceGetPowerUsage(self._handle)
                self.method = "sampling"
        except pynvml.NVMLError as error:
            return f"NVML error: {error}"
        self._nvml = pynvml
        return ""

    def _counter_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000       # mJ → J

    def _sample(self) -> None:
        """Add the trapezoid from the previous sample to now (under the lock: the thread and read() both sample)."""
        with self._lock:
            now, watts = time.perf_counter(), self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000   # mW → W
            if self._last is not None:
                self._sampled_j += trapezoid_joules((self._last[0], now), (self._last[1], watts))
            self._last = (now, watts)

    def _sample_every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def _device(device):
    """The ``torch.device`` to measure, with its CUDA index filled in."""
    import torch

    device = pick_device(None) if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _nvml_handle(nvml, device):
    """NVML's handle of a torch CUDA device: by UUID ("GPU-<uuid>"), else by index."""
    import torch

    try:
        return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(device.index).uuid}")
    except (AttributeError, RuntimeError, nvml.NVMLError):       # no UUID in torch, or unknown to NVML
        return nvml.nvmlDeviceGetHandleByIndex(device.index)


def run_cost(history: pd.DataFrame, prices: Prices = Prices(), target_acc: float | None = None) -> dict:
    """Time, steps, energy and money of one run, from its per-epoch history (rows in epoch order).

    The run ends at its last epoch, or with ``target_acc`` at the first epoch whose test accuracy reaches
    it (``reached``; a run that never does is costed whole). At that epoch:
    per_step_s = time_s / steps, cloud_usd = time_s / 3600 · gpus · gpu_hour, kwh = energy_j / 3.6e6,
    energy_usd = kwh · kwh price, owned_usd = time_s / 3600 · gpus · upfront.hourly + energy_usd (nan
    without ``prices.upfront``). ``energy_j`` is the history's cumulative joules column (as measured); without
    one the energy quantities are nan.
    """
    if not isinstance(prices, Prices):
        raise TypeError(f"prices={prices!r} must be a Prices, e.g. Prices(gpu_hour=2.50, kwh=0.30)")
    needed = ["wall_time_s", "steps", "samples"]
    if target_acc is not None:
        target_acc = check_float("target_acc", target_acc, low=0.0, high=1.0, low_open=True)
        needed.append("test_acc")
    _require_columns(history, needed, "history (a per-epoch history from labkit.train.fit)")
    if history.empty:
        raise ValueError("history has no rows: there is no epoch to cost")
    end, reached = history.sort_values("epoch").iloc[-1] if "epoch" in history else history.iloc[-1], None
    if target_acc is not None:
        from labkit.comparison import first_hit           # here: comparison → experiments → train → cost

        hit = first_hit(history, target_acc)
        reached = hit is not None
        end = hit if reached else end
    time_s, steps = float(end["wall_time_s"]), int(end["steps"])
    energy_j = float(end["energy_j"]) if "energy_j" in history.columns else math.nan
    gpu_hours = time_s / SECONDS_PER_HOUR * prices.gpus
    energy_usd = energy_j / J_PER_KWH * prices.kwh
    owned = math.nan if prices.upfront is None else gpu_hours * prices.upfront.hourly + energy_usd
    cost = dict(time_s=time_s, steps=steps, samples=int(end["samples"]), per_step_s=time_s / steps,
                energy_j=energy_j, kwh=energy_j / J_PER_KWH, cloud_usd=gpu_hours * prices.gpu_hour,
                energy_usd=energy_usd, owned_usd=owned)
    if reached is not None:
        cost["reached"] = reached
    return cost


def cost_table(histories: pd.DataFrame, prices: Prices = Prices(), target_acc: float | None = None, *,
               spread: bool = False) -> pd.DataFrame:
    """One row per run (``load_histories``' table): ``seeds``, with a target how many ``reached`` it, and
    the mean over seeds of each ``run_cost`` quantity; cheapest cloud cost first. ``spread=True`` adds each
    quantity's standard deviation over seeds (ddof 1) as ``<quantity>_std``."""
    _require_columns(histories, ["run", "seed"], "histories (a table from labkit.experiments.load_histories)")
    per_seed = pd.DataFrame([{"run": run, **run_cost(h, prices, target_acc)}
                             for (run, _), h in histories.groupby(["run", "seed"])])
    by_run = per_seed.groupby("run")
    table = by_run[list(QUANTITIES)].mean()
    if spread:
        table = table.join(by_run[list(QUANTITIES)].std().add_suffix("_std"))
    table.insert(0, "seeds", by_run.size())
    if target_acc is not None:
        table.insert(1, "reached", by_run.reached.sum())
    table.attrs.update(prices=prices, target_acc=target_acc)
    return table.sort_values("cloud_usd")


def cost_by_run(histories: pd.DataFrame, prices: Prices = Prices(), target_acc: float | None = None
                ) -> pd.DataFrame:
    """``cost_table`` as the Conclusions chapter prints it: one row per run under its short label
    (``comparison.short_label``), sorted by label, with ``time s``, ``time ±``, ``energy J``, ``energy ±``
    (mean and std over seeds), ``mean W`` = energy J / time s and ``cloud ¢`` = 100 · cloud_usd; with
    ``target_acc`` the runs stop at their first epoch reaching it and ``reached`` (seeds that did) comes
    first. Chapter: Conclusions."""
    from labkit.comparison import short_label      # here: comparison → experiments → train → cost

    t = cost_table(histories, prices, target_acc=target_acc, spread=True)
    t = t.rename(index=short_label).sort_index()
    table = pd.DataFrame({"time s": t.time_s, "time ±": t.time_s_std, "energy J": t.energy_j,
                          "energy ±": t.energy_j_std, "mean W": t.energy_j / t.time_s,
                          "cloud ¢": 100 * t.cloud_usd})
    if target_acc is not None:
        table.insert(0, "reached", t.reached)
    return table


def energy_verdict(to_target: pd.DataFrame, whole: pd.DataFrame, target_acc: float,
                   span: str = "the whole run") -> tuple[dict, list[str]]:
    """Which runs use the least energy, from two ``cost_by_run`` tables (to ``target_acc`` and the whole
    run): the leader of ``energy J`` (lower is better) with the runs tied within the larger seed std
    (``comparison.leaders``), and the adaptive runs' range (labels not starting with "fixed") against
    the fixed runs (shortest label first); ``span`` names the whole run in the lines. Returns (the
    verdict entry: accuracy, time, cost / energy, caveat; printable lines).
    Chapter: Conclusions."""
    from labkit.comparison import leaders, with_ties

    best, tied = leaders(to_target, "energy J", "energy ±", higher=False)
    best_whole, tied_whole = leaders(whole, "energy J", "energy ±", higher=False)
    fixed = sorted((r for r in whole.index if r.startswith("fixed")), key=lambda r: (len(r), r))
    adaptive = whole.drop(index=fixed)["energy J"]
    against = " and ".join(f"{whole.at[r, 'energy J']:.0f} J for {r}" for r in fixed)
    lines = [f"least energy to {target_acc}: {with_ties(best, tied)}",
             f"least energy over {span}: {with_ties(best_whole, tied_whole)}",
             f"adaptive runs over {span}: {adaptive.min():.0f} to {adaptive.max():.0f} J,\n  against {against}"]
    entry = {"accuracy": "not compared (untuned constant-LR runs)", "time": "follows energy",
             "cost / energy": f"to {target_acc}: {with_ties(best, tied)}; whole run: {best_whole} "
                              f"({len(whole)} strategies)",
             "caveat": "energy counter coarse for runs of a few seconds"}
    return entry, lines


def _require_columns(frame: pd.DataFrame, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {', '.join(map(repr, missing))}; "
                         f"it has {', '.join(map(repr, frame.columns))}")


__all__ = ["EnergyMeter", "Prices", "PriceWindows", "Upfront", "run_cost", "cost_table", "cost_by_run",
           "energy_verdict", "trapezoid_joules"]
