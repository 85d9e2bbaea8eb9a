"""What the KFP components share: mapping typed artifacts to URIs, running a stage's `main(argv)`, metrics.

A stage writes its output straight to the artifact's URI through `beit3core.io` (on a cluster an `s3://` URI
under the pipeline root; in a local run a local path). The KFP launcher then finds no file at the local
mount and only logs it, and the artifact keeps its URI (kfp backend `launcher_v2.go`). With `output_root`
set, outputs go under that prefix instead (how a local run keeps its artifacts on S3) and the artifact's URI
is rewritten to point there, which downstream tasks receive.

Imported only inside component bodies, never at a component module's top level.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile

from beit3core import io
from beit3core.errors import UserError

log = logging.getLogger(__name__)


def output_target(artifact, output_root: str = "", *, suffix: str = "") -> str:
    """The URI a stage writes `artifact` to (a folder, or a file when `suffix` names one)."""
    if output_root:
        artifact.uri = io.join(output_root, *_run_relative(artifact.uri)) + suffix
    elif suffix and not artifact.uri.endswith(suffix):
        artifact.uri = artifact.uri + suffix
    return artifact.uri


_RUN_DIR = re.compile(r"-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d+$")  # <pipeline>-<YYYY-MM-DD-HH-MM-SS-ffffff>


def _run_relative(uri: str) -> list[str]:
    """The part of an artifact URI below the pipeline root: <run>/[<loop iteration>/]<task>/<output>, so
    outputs of different runs, tasks and loop iterations never collide under `output_root`."""
    parts = [p for p in uri.replace("\\", "/").rstrip("/").split("/") if p]
    for i, part in enumerate(parts):
        if _RUN_DIR.search(part):
            return parts[i:]
    return parts[-3:]


def run_stage(main, argv: list[str]) -> None:
    """Call a stage's `main(argv)`; a non-zero status fails the component with the stage and its arguments."""
    argv = [str(a) for a in argv]
    print("running:", main.__module__, " ".join(argv), flush=True)
    rc = main(argv)
    if rc:
        raise RuntimeError(f"{main.__module__} exited with status {rc}")


def numeric_leaves(obj, prefix: str = "") -> dict[str, float]:
    """{dotted.name: value} for the finite numbers in a (nested) JSON object."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numeric_leaves(v, f"{prefix}{k}."))
    elif isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    elif isinstance(obj, (int, float)) and math.isfinite(obj):
        out[prefix[:-1]] = float(obj)
    return out


def log_metrics(metrics_artifact, values: dict, *, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """Log every finite number of `values` (except under the top-level keys `exclude`) on a KFP Metrics
    artifact, where the run's UI shows them."""
    flat = numeric_leaves({k: v for k, v in values.items() if k not in exclude})
    for name, value in sorted(flat.items()):
        metrics_artifact.log_metric(f"{prefix}{name}", value)
    return flat


def log_metrics_file(metrics_artifact, uri: str, *, exclude: tuple[str, ...] = (),
                     required: bool = True) -> dict[str, float]:
    """`log_metrics` of the JSON file a stage wrote (summary.json, metrics.json); a missing optional file
    logs nothing."""
    if not required and not io.exists(uri):
        return {}
    return log_metrics(metrics_artifact, io.read_json(uri), exclude=exclude)


def publish_html(src_uri: str, html_artifact, output_root: str = "") -> str:
    """Copy an HTML report to the artifact's URI so the KFP UI shows it (Visualization tab)."""
    target = output_target(html_artifact, output_root, suffix=".html")
    io.write_bytes(target, io.read_bytes(src_uri))
    return target


def resolve_dataset(dataset_uri: str, dvc_repo: str, dvc_rev: str, dvc_path: str, workdir: str) -> tuple[str, dict]:
    """The dataset to read (a URI) and its lineage: either `dataset_uri` as it is, or `dvc_path` fetched at
    `dvc_rev` from the DVC repository `dvc_repo` (git URL or path) into `workdir`."""
    if bool(dataset_uri) == bool(dvc_repo):
        raise UserError("give exactly one of dataset_uri (s3:// or a path) and dvc_repo (+ dvc_rev, dvc_path)")
    if dataset_uri:
        return dataset_uri, {"source": dataset_uri}
    import dvc.api

    fs = dvc.api.DVCFileSystem(dvc_repo, rev=dvc_rev or None)
    local = os.path.join(workdir, os.path.basename(dvc_path.rstrip("/")) or "data")
    fs.get(dvc_path, local, recursive=True)
    lineage = {"source": f"{dvc_repo}@{dvc_rev or 'HEAD'}:{dvc_path}", "dvc_repo": dvc_repo, "dvc_rev": dvc_rev,
               "dvc_path": dvc_path}
    return local, lineage


def workdir() -> str:
    return tempfile.mkdtemp(prefix="beit3-")
