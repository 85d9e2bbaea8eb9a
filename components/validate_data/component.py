"""Data validation: `beit3 data validate` on a dataset given by URI or fetched from a DVC repository."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(
    validated: Output[Dataset],
    data_docs: Output[HTML],
    metrics: Output[Metrics],
    dataset_uri: str = "",
    dvc_repo: str = "",
    dvc_rev: str = "",
    dvc_path: str = "data",
    max_reject_fraction: float = 0.05,
    workers: int = 2,
) -> NamedTuple("Outputs", validated_uri=str, dataset_version=str):
    """Validate a raw dataset or collection, quarantine bad rows, write WebDataset shards and Data Docs.

    Give either `dataset_uri` (s3:// or a path) or `dvc_repo` + `dvc_rev` + `dvc_path`. `validated_uri` (where
    the shards are) and `dataset_version` (the validation report's fingerprint) let the later steps stream the
    data without the launcher copying it into their pods.
    """
    from collections import namedtuple

    from beit3core import io
    from beit3core.data import cli
    from beit3ops import kfp_io

    source, lineage = kfp_io.resolve_dataset(dataset_uri, dvc_repo, dvc_rev, dvc_path, kfp_io.workdir())
    out = kfp_io.output_target(validated)
    kfp_io.run_stage(
        cli.main,
        ["validate", source, "--out", out, "--max-reject-fraction", max_reject_fraction, "--workers", workers],
    )
    summary_uri = io.join(out, "validation.json")
    summary = io.read_json(summary_uri)
    per_dataset = {
        name: {k: d[k] for k in ("rows", "clean", "quarantined", "rejected_fraction") if k in d}
        for name, d in (summary.get("datasets") or {}).items()
    }
    kfp_io.log_metrics(metrics, {"success": summary.get("success", False), "datasets": per_dataset})
    kfp_io.publish_html(io.join(out, "data_docs", "index.html"), data_docs)
    validated.metadata.update(lineage)
    validated.metadata["version"] = io.fingerprint(summary_uri)
    return namedtuple("Outputs", ["validated_uri", "dataset_version"])(out, validated.metadata["version"])
