"""The search as an Optuna study on disk, for `optuna-dashboard <run>/optuna.journal`.

Written from what the searcher was told (searcher.json), configuration by configuration: each
is one finished trial whose value is its fold mean, with the fold values, std and configuration
id as attributes. The file is rewritten whole, to a temporary name then moved into place, so it
never holds a trial twice — also after `--resume`, when Tune restores the searcher to its last
snapshot and configurations proposed after it are proposed again.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STUDY_NAME = "raycity"


def journal(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def write_study(path: Path, told: list[dict[str, Any]], distributions: Mapping[str, Any],
                metric: str) -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    study = optuna.create_study(storage=journal(temporary), study_name=STUDY_NAME, direction="maximize")
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the axis shows
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"{metric} (fold mean)"])
    for record in told:
        ok = not record.get("error") and record.get("mean") is not None
        attrs = {"config_id": record["config_id"], "folds": record.get("folds")}
        if ok:
            attrs.update(fold_mean=record["mean"], fold_std=record["std"])
        attrs.update({f"fold_{k}": v for k, v in record.get("scores", {}).items()})
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL,
            value=record["mean"] if ok else None,
            params={k: v for k, v in record["values"].items() if k in distributions},
            distributions={k: d for k, d in distributions.items() if k in record["values"]},
            user_attrs=attrs))
    os.replace(temporary, path)


def load_study(path: Path):
    """The study as Optuna reads it (what the dashboard shows)."""
    import optuna

    return optuna.load_study(study_name=STUDY_NAME, storage=journal(path))
