"""What the KFP components share: mapping typed artifacts to URIs, running a stage's `main(argv)`, metrics.

A stage writes its output straight to the artifact's URI through `beit3core.io` (on a cluster an `s3://` URI
under the pipeline root; in a local run a local path). The KFP launcher then finds no file at the local
mount and only logs it, and the artifact keeps its URI (kfp backend `launcher_v2.go`). Outputs stay under
the pipeline root: the launcher refuses an output URI outside it (`bucketConfig.KeyFromURI`).

Credentials: a step gets `AWS_*` from the `beit3-s3` Secret where the namespace has one (overlays/cpu, gpu);
in a Kubeflow profile (or standalone KFP's namespace) it gets the keys KFP itself uses there, the
`mlpipeline-minio-artifact` Secret, and `use_kfp_credentials` turns them into the `AWS_*` settings that
`beit3core.io` reads, so `minio://` and `s3://` URIs under the pipeline root work without pasting keys anywhere.

Imported only inside component bodies, never at a component module's top level.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile

from beit3core import io
from beit3core.errors import UserError

log = logging.getLogger(__name__)

# The Secret the KFP profile controller creates in every profile namespace (kubeflow/manifests
# pipelines-profile-controller/sync.py; the same name holds KFP's own keys in standalone KFP) and the env
# names pipelines/full.py maps its `accesskey` / `secretkey` to.
KFP_S3_SECRET = "mlpipeline-minio-artifact"
KFP_S3_ENV = {"accesskey": "KFP_S3_ACCESS_KEY", "secretkey": "KFP_S3_SECRET_KEY"}
# The S3 endpoint of the SeaweedFS that stock Kubeflow manifests deploy (Service seaweedfs.kubeflow, port 8333).
KFP_S3_ENDPOINT = "http://seaweedfs.kubeflow.svc.cluster.local:8333"


def use_kfp_credentials(environ=None) -> bool:
    """Fill `AWS_*` from KFP's profile credentials when the step has no `beit3-s3` keys; True when it did.
    An explicit `AWS_ENDPOINT_URL` / `AWS_DEFAULT_REGION` is kept."""
    env = os.environ if environ is None else environ
    access, secret = env.get(KFP_S3_ENV["accesskey"]), env.get(KFP_S3_ENV["secretkey"])
    if env.get("AWS_ACCESS_KEY_ID") or not (access and secret):
        return False
    env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = access, secret
    env.setdefault("AWS_ENDPOINT_URL", KFP_S3_ENDPOINT)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return True


def job_s3_settings(secret: str, environ=None) -> dict:
    """How a training job started from this step gets its S3 settings (LaunchConfig fields): from `secret` (the
    namespace's beit3-s3) normally; from the profile's own mlpipeline-minio-artifact when the step itself runs on
    those keys (no beit3-s3 in the namespace), with the endpoint and region, which are not secret, as plain env."""
    env = os.environ if environ is None else environ
    profile_key = env.get(KFP_S3_ENV["accesskey"])
    if not secret or not profile_key or env.get("AWS_ACCESS_KEY_ID") != profile_key:
        return {"s3_secret": secret or None}
    plain = tuple((k, env[k]) for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION") if env.get(k))
    return {"s3_secret": KFP_S3_SECRET, "env": plain,
            "s3_secret_keys": (("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY"))}


def output_target(artifact, *, suffix: str = "") -> str:
    """The URI a stage writes `artifact` to (a folder, or a file when `suffix` names one)."""
    use_kfp_credentials()  # the first kfp_io call of every component: credentials before any storage access
    if suffix and not artifact.uri.endswith(suffix):
        artifact.uri = artifact.uri + suffix
    return artifact.uri


def run_stage(main, argv: list[str]) -> None:
    """Call a stage's `main(argv)`; a non-zero status fails the component with the stage and its arguments."""
    use_kfp_credentials()
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
    elif isinstance(obj, bool) or (isinstance(obj, (int, float)) and math.isfinite(obj)):
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


def publish_html(src_uri: str, html_artifact) -> str:
    """Copy an HTML report to the artifact's URI so the KFP UI shows it (Visualization tab)."""
    target = output_target(html_artifact, suffix=".html")
    io.write_bytes(target, io.read_bytes(src_uri))
    return target


def publish_text(text: str, artifact, *, suffix: str = "") -> str:
    """Write `text` at the artifact's URI (a Markdown artifact: the KFP UI renders the file it points to)."""
    target = output_target(artifact, suffix=suffix)
    io.write_text(target, text)
    return target


def evaluation_markdown(doc: dict, model_uri: str) -> str:
    """A Markdown summary of an evaluation (a `beit3 evaluate` metrics.json) for the run's UI."""
    task, selection = doc.get("task", "?"), doc.get("selection_key")
    rows = [f"| {k} | {v:g} |" + (" selection metric |" if k == selection else " |")
            for k, v in sorted(doc.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "selection_value"]
    return "\n".join([
        f"## BEiT-3 {task}: evaluation on `{doc.get('split', '?')}`", "",
        "| metric | value | |", "|---|---|---|", *rows, "",
        f"- model: `{model_uri}`", f"- data: `{doc.get('data', '')}` (dataset version `{doc.get('dataset_version') or '-'}`)",
        "",
    ])


def resolve_dataset(dataset_uri: str, dvc_repo: str, dvc_rev: str, dvc_path: str, workdir: str) -> tuple[str, dict]:
    """The dataset to read (a URI) and its lineage: either `dataset_uri` as it is, or `dvc_path` fetched at
    `dvc_rev` from the DVC repository `dvc_repo` (git URL or path) into `workdir`."""
    use_kfp_credentials()
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
