"""A run directory: every file a run keeps is named here (`RunDir`), what `run.json` records
(`RunState`), and the checks that let `--resume` find it, copy-safe and move-safe.

A run on local storage is self-contained: Tune's experiment lives in `<run>/tune`, and nothing
in `run.json` names the run's own absolute path, so a copied or moved run resumes where it lies
and never touches another run's files. A run on shared `--storage-path` records that storage and
leaves a marker there naming the run directory that owns it; a copy of such a run is refused on
`--resume` instead of writing into the original's storage. Ray-free: `report`, `evaluate` and
`predict` read runs through this module alone.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raycity.config import Config, RunOptions
from raycity.config import config_json as config_text
from raycity.data.layout import Sample
from raycity.data.synthetic import dataset_root
from raycity.errors import UserError, brief
from raycity.folds import FoldSplit, load_folds, make_repeated_folds, save_folds
from raycity.results import atomic_write_text

EXPERIMENT_NAME = "tune"  # Tune's experiment folder inside the run dir (local storage)
OWNER_FILE = "raycity-owner.json"  # in a shared storage's experiment folder: who resumes it


class RunError(UserError, RuntimeError):
    """A run that cannot start or resume as asked; the message says what to do."""


class RunDir:
    """The files of one run, by what they hold. Everything else asks this class for a path."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:  # for files that are not the run's own
        return self.path / name

    run_json = property(lambda self: self.path / "run.json")  # RunState: kind, data, search
    config_json = property(lambda self: self.path / "config.json")  # the frozen Config
    folds_json = property(lambda self: self.path / "folds.json")  # the split, image keys
    epochs = property(lambda self: self.path / "epochs.parquet")  # one row per fold and epoch
    status = property(lambda self: self.path / "status.json")  # folds that failed
    summary = property(lambda self: self.path / "summary.parquet")  # a row per fold, best epoch
    summary_md = property(lambda self: self.path / "summary.md")  # Table 1
    per_class = property(lambda self: self.path / "per_class.parquet")  # IoU by class and fold
    # pixels by (true, predicted) class at each fold's best epoch
    confusion = property(lambda self: self.path / "confusion.parquet")
    leaderboard = property(lambda self: self.path / "leaderboard.parquet")  # a sweep's ranking
    leaderboard_md = property(lambda self: self.path / "leaderboard.md")
    searcher = property(lambda self: self.path / "searcher.json")  # what the searcher was told
    study = property(lambda self: self.path / "optuna.journal")  # the same, for optuna-dashboard
    comparison = property(lambda self: self.path / "comparison.parquet")  # paired tests

    def comparison_with(self, label: str) -> Path:
        """raycity.compare's table of this run against another."""
        return self.path / f"comparison-vs-{label.replace('/', '_').replace(':', '_')}.parquet"
    report = property(lambda self: self.path / "report.md")
    val = property(lambda self: self.path / "val.parquet")  # raycity.evaluate's scores
    tracking = property(lambda self: self.path / "mlflow.json")  # MLflow run ids, if tracked
    figures = property(lambda self: self.path / "figures")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoints = property(lambda self: self.path / "checkpoints")

    def fold_figure(self, fold: int, kind: str) -> Path:
        """figures/fold<k>_<kind>.png, kind "history" or "prediction"."""
        return self.figures / f"fold{fold}_{kind}.png"

    cv_figure = property(lambda self: self.figures / "cv_history.png")  # every fold's curves
    sweep_figure = property(lambda self: self.figures / "sweep.png")  # fold means vs values
    parallel_figure = property(lambda self: self.figures / "parallel_coordinates.png")
    importance_figure = property(lambda self: self.figures / "importance.png")
    confusion_figure = property(lambda self: self.figures / "confusion.png")
    importance = property(lambda self: self.path / "importance.parquet")  # what mattered

    def relative(self, path: Path) -> str:
        """As report.md links it."""
        return path.relative_to(self.path).as_posix()

    def checkpoint(self, fold: int, config_id: str | None = None) -> Path:
        """A fold's exported best weights: checkpoints/[<config>_]fold<k>.pt (no prefix in a CV)."""
        return self.checkpoints / f"{f'{config_id}_' if config_id else ''}fold{fold}.pt"

    def fold_checkpoints(self, config_id: str | None = None) -> dict[int, Path]:
        prefix = f"{config_id}_" if config_id else ""
        found = {}
        for path in self.checkpoints.glob(f"{prefix}fold*.pt"):
            number = path.stem.removeprefix(prefix).removeprefix("fold")
            if number.isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))

    def models(self) -> dict[str, Path]:
        """Model name (fold1…foldK) → exported checkpoint, for a CV run or the best (ranked)
        configuration of a sweep: what `evaluate`, `predict` and the report use."""
        import pandas as pd

        from raycity.results import best_config

        best = best_config(pd.read_parquet(self.leaderboard), self.path) \
            if self.leaderboard.is_file() else None
        found = {f"fold{k}": path for k, path in self.fold_checkpoints(best).items()}
        if not found:
            raise FileNotFoundError(f"{self.checkpoints}: no fold checkpoints (is this a "
                                    f"finished raycity run?)")
        return found

    def write_new(self, state: RunState, folds: list[FoldSplit]) -> None:
        """A new run's three files: the split, the frozen Config, and run.json (written last:
        a folder without it is not a run)."""
        cfg = state.config
        save_folds(self.folds_json, folds, {"k": cfg.folds, "repeats": cfg.repeats,
                                            "seed": cfg.seed,
                                            "group_by": cfg.group_by,
                                            "data_root": state.data_root})
        atomic_write_text(self.config_json, config_text(cfg))
        self.save(state)

    def save(self, state: RunState) -> None:
        atomic_write_text(self.run_json, state.to_json())

    def is_run(self) -> bool:
        return self.run_json.is_file()

    def state(self) -> RunState:
        return RunState.load(self.path)

    def config(self) -> Config:
        return self.state().config

    def folds(self) -> list[FoldSplit]:
        return load_folds(self.folds_json)[0]

    def data_root(self, override: str | None = None) -> str:
        """The data the run trained on: `override` (--data-root), else the run's own (its
        synthetic scenes are generated again if this machine lacks them)."""
        if override:
            return override
        state = self.state()
        return dataset_root(state.config)[0] if state.synthetic else state.data_root


@dataclass(frozen=True)
class Variant:
    """One configuration of hyperparameters; it is trained on every fold."""

    config_id: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunState:
    """What `run.json` records so that `--resume` can find and check everything again."""

    kind: str
    config: Config
    variants: list[Variant]
    data_root: str
    synthetic: bool
    storage: str | None  # None: local, `<run>/tune`; else shared storage (NFS path, s3://, gs://)
    experiment_name: str
    hparams: list[str]
    metric: str = "miou_full"
    search: dict[str, Any] = field(default_factory=dict)  # method, num_samples, max_concurrent…
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    finished: bool = False
    sync_epochs: list[int] = field(default_factory=list)  # written before reported (rungs)

    def to_json(self) -> str:
        return json.dumps({
            "kind": self.kind, "variants": [v.__dict__ for v in self.variants],
            "data_root": self.data_root, "synthetic": self.synthetic, "storage": self.storage,
            "experiment_name": self.experiment_name, "hparams": self.hparams,
            "metric": self.metric, "search": self.search, "run_id": self.run_id,
            "finished": self.finished, "sync_epochs": self.sync_epochs}, indent=1)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        files = RunDir(run_dir)
        if not files.is_run():
            raise RunError(f"{run_dir}: not a raycity run (no run.json); pass the folder of a "
                           f"run, e.g. results/<name>")
        raw, config = None, None
        for path in (files.run_json, files.config_json):
            try:
                loaded = json.loads(path.read_text())
                if path == files.run_json:
                    if not isinstance(loaded, dict) or "kind" not in loaded:
                        raise ValueError("not the run.json of a raycity run")
                    raw = loaded
                else:
                    config = Config.from_dict(loaded)
            except (OSError, ValueError, UserError, KeyError, TypeError) as err:
                raise RunError(f"{path}: damaged ({brief(err)}); it cannot be "
                               f"rebuilt — restore it from a copy of the run") from err
        storage = raw.get("storage")
        if "storage_path" in raw and raw["experiment_name"] != EXPERIMENT_NAME:
            storage = raw["storage_path"]  # written by raycity 0.1 for shared storage
        return cls(raw["kind"], config, [Variant(**v) for v in raw["variants"]],
                   raw["data_root"], raw["synthetic"], storage, raw["experiment_name"],
                   raw["hparams"], raw.get("metric", "miou_full"), raw.get("search", {}),
                   raw.get("run_id", ""), raw.get("finished", False), raw.get("sync_epochs", []))

    def experiment_path(self, run_dir: Path) -> str:
        if self.storage is None:
            return str(run_dir.resolve() / EXPERIMENT_NAME)
        return f"{self.storage.rstrip('/')}/{self.experiment_name}"

    def storage_path(self, run_dir: Path) -> str:
        return str(run_dir.resolve()) if self.storage is None else self.storage


def new_folds(cfg: Config, samples: list[Sample]) -> list[FoldSplit]:
    """A new run's split of its training samples: `--repeats` × `--folds`, each city whole in
    one fold with `--group-by city`."""
    return make_repeated_folds(
        [s.key for s in samples], cfg.folds, cfg.seed,
        groups=[s.city for s in samples] if cfg.group_by == "city" else None,
        repeats=cfg.repeats)


def check_run_dir(opts: RunOptions) -> Path:
    """A new run must not silently merge into an old one; `--resume` needs one that exists."""
    run_dir = Path(opts.run_dir)
    if opts.resume:
        if not RunDir(run_dir).is_run():
            raise RunError(f"--resume {run_dir}: no such run (no run.json there)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not opts.overwrite:
        raise RunError(f"{run_dir} already exists; pass --resume {run_dir} to continue it, "
                       f"--overwrite to replace it, or --name to start another")
    return run_dir


def create_run_dir(run_dir: Path) -> None:
    """Called once Ray is up, so that a run that cannot start leaves nothing behind."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # --overwrite, checked by check_run_dir
    run_dir.mkdir(parents=True)


def check_resume_flags(saved: Config, explicit: dict[str, Any]) -> None:
    """On --resume, a flag that contradicts the saved config is an error, never a silent change."""
    clashes = {k: (v, getattr(saved, k)) for k, v in explicit.items() if getattr(saved, k) != v}
    if clashes:
        detail = ", ".join(f"{k}={new!r} (saved {old!r})" for k, (new, old) in clashes.items())
        raise RunError(f"--resume continues the saved config; these flags contradict it: {detail}")


def _owner_file(state: RunState) -> tuple[Any, str]:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(state.storage)
    return fs, f"{path.rstrip('/')}/{state.experiment_name}/{OWNER_FILE}"


def claim_storage(state: RunState, run_dir: Path) -> None:
    """Shared storage: record (or check, on resume) which run directory owns the experiment.

    A copied run still points at the original's storage; resuming it would train into — and
    clean up — the original's trials. The owner file says which directory that is; if it still
    holds the same run, this one is a copy and is refused. If it is gone, the run was moved.
    """
    if state.storage is None:
        return
    fs, path = _owner_file(state)
    here = str(run_dir.resolve())
    try:
        with fs.open_input_file(path) as f:
            owner = json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        owner = None
    if owner and owner.get("run_dir") != here and owner.get("run_id") == state.run_id:
        original = Path(owner["run_dir"])
        if RunDir(original).is_run() and \
                json.loads(RunDir(original).run_json.read_text()).get("run_id") == state.run_id:
            raise RunError(f"--resume {run_dir}: this is a copy of {original}, whose experiment "
                           f"is in the shared storage {state.experiment_path(run_dir)}; resuming "
                           f"the copy would train into the original's trials. Resume "
                           f"{original} instead")
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps({"run_id": state.run_id, "run_dir": here}).encode())
