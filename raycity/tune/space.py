"""Search spaces: a small YAML vocabulary → Ray Tune samplers → concrete configurations.

Configurations are drawn here, in the driver, before Tune sees them; Tune then grids over
(configuration × fold). Sampling inside Tune would draw a fresh value for every fold, because
every grid point draws its own sample — and a configuration judged on folds trained with
different values is not judged at all.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from raycity.config import Config, ConfigError
from raycity.errors import UserError
from raycity.yamlfile import YamlFileError, clip, load_yaml

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
SAMPLERS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")
# Config fields a space may tune, with the type each value must have.
TUNABLE: dict[str, type] = {
    "lr": float, "dropout": float, "weight_decay": float, "batch_size": int, "epochs": int,
    "plateau_factor": float, "plateau_patience": int, "scale_jitter": float,
    "color_jitter": float,
}
METRICS = ("miou_full", "miou_low")
SEARCHES = ("random", "grid", "optuna")
TOP_KEYS = ("params", "num_samples", "metric", "scheduler", "seed", "search")


class SpaceError(UserError, ValueError):
    """A search space that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Space:
    path: str
    params: dict[str, Any]  # name → tune Domain or {"grid_search": [...]}
    num_samples: int = 1
    metric: str = "miou_full"
    scheduler: dict[str, Any] | None = None
    seed: int = 0
    grid: dict[str, list] = field(default_factory=dict)
    specs: dict[str, tuple[str, list]] = field(default_factory=dict)  # name → (sampler, args)
    search: str | None = None  # random | grid | optuna; None: what the samplers imply
    raw: dict[str, Any] = field(default_factory=dict)  # the YAML as read, kept with the run

    @property
    def method(self) -> str:
        """The search the space asks for: random when any value is drawn, else grid."""
        if self.search:
            return self.search
        return "grid" if all(s in ("grid", "choice") for s, _ in self.specs.values()) \
            and len(self.grid) == len(self.specs) else "random"

    def extremes(self) -> list[dict[str, Any]]:
        """Every value a field can take at its limits (each listed value, each bound), one field
        at a time: what must make a valid Config before a searcher may propose anything."""
        out = []
        for name, (sampler, args) in self.specs.items():
            values = args if sampler in ("grid", "choice") else args[:2]
            if sampler == "randint":
                values = [args[0], args[1] - 1]  # [low, high)
            out += [{name: TUNABLE[name](v)} for v in values]
        return out

    @property
    def log_scaled(self) -> list[str]:
        return [name for name, (sampler, _) in self.specs.items() if sampler == "loguniform"]


def find_space(name: str) -> Path:
    """A path, or a file name inside search_spaces/."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = SPACES_DIR / name
    if candidate.is_file():
        return candidate
    available = sorted(p.name for p in SPACES_DIR.glob("*.yaml")) if SPACES_DIR.is_dir() else []
    raise SpaceError(f"--space {name}: no such file here or in {SPACES_DIR}; "
                     f"available: {', '.join(available) or 'none'}")


def load_space(name: str) -> Space:
    path = find_space(name)
    try:
        raw = load_yaml(path, what="search space")
    except YamlFileError as err:
        raise SpaceError(str(err)) from err
    return parse_space(raw, str(path))


MAX_CONFIGURATIONS = 10_000  # --max-configurations: a plan above it is a typo, not a sweep


def planned_configurations(space: Space, method: str, num_samples: int | None = None) -> int:
    """How many configurations a search would train, counted before any is made."""
    n = num_samples or space.num_samples
    if method == "optuna":
        return n
    if method == "grid":
        drawn = [s for s, _ in space.specs.values() if s not in ("grid", "choice")]
        listed = [len(a) for s, a in space.specs.values() if s in ("grid", "choice")]
        return int(np.prod(listed, dtype=object)) * (n if drawn else 1)
    return n * int(np.prod([len(v) for v in space.grid.values()], dtype=object))


def check_plan_size(space: Space, method: str, num_samples: int | None, folds: int,
                    limit: int = MAX_CONFIGURATIONS) -> None:
    count = planned_configurations(space, method, num_samples)
    if count > limit:
        raise SpaceError(f"{space.path}: the {method} search plans {count} configurations "
                         f"(× {folds} folds = {count * folds} trials), above the limit of "
                         f"{limit}; shrink the space or --num-samples, or raise "
                         f"--max-configurations")


def parse_space(raw: Any, path: str = "<space>") -> Space:
    def err(key: str, what: str) -> SpaceError:
        return SpaceError(f"{path}: {key}: {what}")

    if not isinstance(raw, dict):
        raise err("(top level)", f"expected a mapping with keys {list(TOP_KEYS)}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise err(unknown[0], f"unknown key; allowed: {list(TOP_KEYS)}")
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise err("params", "expected a mapping of config fields to samplers, e.g. "
                            "{lr: {loguniform: [1.0e-5, 1.0e-3]}}")
    params, grid, specs = {}, {}, {}
    for name, spec in params_raw.items():
        key = f"params.{name}"
        if name not in TUNABLE:
            raise err(key, f"unknown field; tunable fields: {sorted(TUNABLE)}")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise err(key, f"expected exactly one sampler, one of {list(SAMPLERS)}")
        ((sampler, args),) = spec.items()
        key = f"{key}.{sampler}"
        kind = TUNABLE[name]
        if sampler not in SAMPLERS:
            raise err(key, f"unknown sampler; use one of {list(SAMPLERS)}")
        if sampler in ("grid", "choice"):
            if not isinstance(args, list) or not args:
                raise err(key, "expected a non-empty list of values")
            values = [_number(v, kind, key, err) for v in args]
            specs[name] = (sampler, values)
            if sampler == "grid":
                grid[name] = values
                params[name] = tune.grid_search(values)
            else:
                params[name] = tune.choice(values)
            continue
        want = 3 if sampler == "quniform" else 2
        if not isinstance(args, list) or len(args) != want:
            shape = "[low, high, q]" if want == 3 else "[low, high]"
            raise err(key, f"expected {shape}")
        nums = [_number(v, float if sampler != "randint" else int, key, err) for v in args]
        low, high = nums[0], nums[1]
        if low >= high:
            raise err(key, f"low ({low}) must be below high ({high})")
        if sampler == "loguniform" and low <= 0:
            raise err(key, f"bounds must be > 0 for a log scale (got {low})")
        if sampler == "randint" and kind is not int:
            raise err(key, f"randint draws integers, but {name} is a float; use uniform")
        if kind is int and sampler in ("uniform", "loguniform"):
            raise err(key, f"{name} is an integer; use randint, choice or grid")
        if sampler == "quniform" and nums[2] <= 0:
            raise err(key, "q must be > 0")
        specs[name] = (sampler, nums)
        if sampler == "uniform":
            params[name] = tune.uniform(low, high)
        elif sampler == "loguniform":
            params[name] = tune.loguniform(low, high)
        elif sampler == "randint":
            params[name] = tune.randint(low, high)
        else:
            params[name] = tune.quniform(low, high, nums[2])
    num_samples = raw.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise err("num_samples", f"expected an integer ≥ 1, got {clip(num_samples)}")
    metric = raw.get("metric", "miou_full")
    if metric not in METRICS:
        raise err("metric", f"expected one of {list(METRICS)}, got {clip(metric)}")
    scheduler = raw.get("scheduler")
    if scheduler is not None:
        scheduler = _scheduler(scheduler, err)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise err("seed", f"expected an integer, got {clip(seed)}")
    search = raw.get("search")
    if search is not None and search not in SEARCHES:
        raise err("search", f"expected one of {list(SEARCHES)}, got {clip(search)}")
    return Space(path, params, num_samples, metric, scheduler, seed, grid, specs, search, raw)


def _number(value: Any, kind: type, key: str, err) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(key, f"expected a number, got {clip(value)}")
    if kind is int:
        if float(value) != int(value):
            raise err(key, f"expected an integer, got {clip(value)}")
        return int(value)
    return float(value)


def _scheduler(spec: Any, err) -> dict[str, Any]:
    if not isinstance(spec, dict) or list(spec) != ["asha"]:
        raise err("scheduler", "expected {asha: {grace_period: N, reduction_factor: M}}")
    opts = spec["asha"] or {}
    if not isinstance(opts, dict) or set(opts) - {"grace_period", "reduction_factor"}:
        raise err("scheduler.asha", "allowed keys: grace_period, reduction_factor")
    grace, factor = opts.get("grace_period", 1), opts.get("reduction_factor", 3)
    if not isinstance(grace, int) or grace < 1:
        raise err("scheduler.asha.grace_period", f"expected an integer ≥ 1, got {clip(grace)}")
    if not isinstance(factor, (int, float)) or factor < 2:
        raise err("scheduler.asha.reduction_factor", f"expected a number ≥ 2, got {clip(factor)}")
    return {"grace_period": grace, "reduction_factor": float(factor)}


def sample_configurations(space: Space, num_samples: int | None = None) -> list[dict[str, Any]]:
    """Every grid point × num_samples, each random field drawn once per configuration."""
    n = num_samples or space.num_samples
    rng = np.random.RandomState(space.seed)
    grid_names = list(space.grid)
    out = []
    for _ in range(n):
        for point in itertools.product(*(space.grid[g] for g in grid_names)):
            values = dict(zip(grid_names, point))
            for name, domain in space.params.items():
                if name not in values:
                    drawn = domain.sample(random_state=rng)
                    values[name] = TUNABLE[name](drawn.item() if hasattr(drawn, "item") else drawn)
            out.append({k: values[k] for k in space.params})
    return out


def grid_points(sampler: str, args: list, points: int) -> list:
    """`points` values spread over a domain: the centres of equal cells (in log space for
    loguniform), so that a grid never sits on the bounds; integers rounded and deduplicated."""
    if sampler in ("grid", "choice"):
        return list(args)
    low, high = args[0], args[1]
    if sampler == "loguniform":
        values = np.exp(np.log(low) + (np.arange(points) + 0.5) * np.log(high / low) / points)
    elif sampler == "randint":  # [low, high)
        values = low + (np.arange(points) + 0.5) * (high - low) / points - 0.5
        return sorted({int(round(v)) for v in values})
    else:
        values = low + (np.arange(points) + 0.5) * (high - low) / points
    if sampler == "quniform":
        values = np.unique(np.round(values / args[2]) * args[2])
    return [float(v) for v in values]


def grid_configurations(space: Space, num_samples: int | None = None) -> list[dict[str, Any]]:
    """A grid over the whole space: listed values as they are, and each drawn domain cut into
    points so that the drawn part of the grid has at most `num_samples` cells (e.g. 24 → 6 × 4
    for two continuous fields), as balanced as the budget allows."""
    budget = num_samples or space.num_samples
    drawn = [n for n, (sampler, _) in space.specs.items() if sampler not in ("grid", "choice")]
    points = dict.fromkeys(drawn, 1)
    grown = True
    while grown and drawn:
        grown = False
        for name in sorted(drawn, key=lambda n: points[n]):  # grow the thinnest axis first
            if np.prod([points[n] + (n == name) for n in drawn]) <= budget:
                points[name] += 1
                grown = True
                break
    axes = {name: grid_points(sampler, args, points.get(name, 0))
            for name, (sampler, args) in space.specs.items()}
    return [{name: TUNABLE[name](v) for name, v in zip(axes, combo)}
            for combo in itertools.product(*axes.values())]


def optuna_space(space: Space) -> dict[str, Any]:
    """The same vocabulary as Tune domains for Optuna: listed grids become categorical."""
    return {name: tune.choice(space.grid[name]) if name in space.grid else domain
            for name, domain in space.params.items()}


def check_against(cfg: Config, configurations: list[dict[str, Any]], path: str) -> None:
    """Each configuration must make a valid Config (e.g. dropout < 1) before anything launches."""
    for values in configurations:
        try:
            dataclasses.replace(cfg, **values)
        except ConfigError as err:
            raise SpaceError(f"{path}: a sampled configuration is invalid: {err}") from err
