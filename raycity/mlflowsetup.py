"""Whether and where a run is tracked in MLflow: the store (the user's URI, or a SQLite store
beside the runs), the check that MLflow is installed, and what identifies the code. Imports no
MLflow until a tracker is made."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from raycity.errors import UserError

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
