"""Whether and where a run is tracked in MLflow: the store (the user's URI, or a SQLite store
beside the runs), the check that MLflow is installed, and what identifies the code. Imports no
MLflow until a tracker is made."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from raycity.errors import UserError
from raycity.run import RunState

INSTALL = "pip install 'raycity[mlflow]'"
# MLflow's own HTTP client retries a refused connection for minutes by default
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0.2",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class TrackingError(UserError, RuntimeError):
    """--mlflow asked for what cannot be had (MLflow not installed)."""


def check_installed() -> None:
    """Before anything launches: the one line a user needs."""
    try:
        import mlflow  # noqa: F401
    except ImportError as err:
        raise TrackingError(f"--mlflow needs MLflow, which is not installed: {INSTALL}") from err


def local_uri(output: str | Path) -> str:
    """The local store beside the runs, shared by all of them so that one `mlflow ui` compares
    them: SQLite, the backend MLflow recommends (and defaults to) since 3.7."""
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def tracking_uri(output: str | Path, uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or local_uri(output)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def moved_store(uri: str, run_dir: Path) -> str:
    """A run tracked in the local store beside it keeps using that store when the whole output
    folder was moved (the saved absolute path is gone, the one beside the run exists)."""
    here = local_uri(run_dir.parent)
    if uri != here and not _store(uri).exists() and _store(here).exists():
        return here
    return uri


def _store(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def run_tags(run_dir: Path, state: RunState) -> dict[str, str]:
    """What identifies a run in MLflow: its name, kind, data, raycity version and git commit."""
    from raycity import __version__

    tags = {"raycity.run": run_dir.name, "raycity.kind": state.kind,
            "raycity.data_root": state.data_root, "raycity.synthetic": str(state.synthetic),
            "raycity.version": __version__, "raycity.run_dir": str(run_dir.resolve())}
    if (commit := git_commit()) is not None:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_params(state: RunState) -> dict[str, str]:
    """The whole Config (and a sweep's search) as MLflow parameters."""
    params = {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
              for k, v in state.config.to_dict().items()}
    if state.kind == "sweep":
        params.update({f"search.{k}": str(v) for k, v in state.search.items()
                       if k in ("method", "num_samples", "max_concurrent", "seed")})
    return params
