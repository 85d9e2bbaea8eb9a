"""The Great Expectations side: one ephemeral GX context, one suite per dataset, Data Docs in a local folder.

Every `Check` is stated as a GX 1.x expectation on the columns the checks computed, so the GX result (and
its Data Docs) and the quarantine agree. A dataset is validated chunk by chunk: each chunk is one run of the
dataset's checkpoint (one validation result per chunk in the Data Docs, named by split and lines), and
`merge_results` adds the chunks' results up into the dataset's (validation.json, data_docs/index.html).
Great Expectations is imported only when a runner is made.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from beit3core.data.validation.check import Check


def gx_frame(columns: dict[str, object], parsed: np.ndarray) -> pd.DataFrame:
    """The frame GX validates: the checks' columns (flags as nullable booleans), rows that are JSON objects.

    GX hashes the whole frame, so it holds only the columns the suite reads.
    """
    frame = pd.DataFrame({k: (v if isinstance(v, np.ndarray | pd.arrays.BooleanArray) else pd.Series(v, dtype=object))
                          for k, v in columns.items()})
    return frame[parsed].reset_index(drop=True)


class GXRunner:
    """One ephemeral GX context, one suite per dataset, Data Docs built into a local folder."""

    SITE = "beit3_validation"  # an ephemeral context already has a site named local_site

    def __init__(self, docs_dir: str):
        # GX logs hundreds of INFO lines while it sets up; keep ours readable.
        logging.getLogger("great_expectations").setLevel(max(logging.WARNING, logging.getLogger().level))
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.ctx.add_data_docs_site(site_name=self.SITE, site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir}})
        self.source = self.ctx.data_sources.add_pandas("beit3")
        self.count = 0

    def start(self, name: str, kind: str, checks: list[Check]) -> None:
        """Begin a dataset: a suite stating `checks` (the same in every chunk) and a checkpoint to run per chunk."""
        import great_expectations.expectations as gxe

        gx = self.gx
        self.count += 1
        asset_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"
        asset = self.source.add_dataframe_asset(name=f"{self.count:02d}_{asset_name}")
        batch = asset.add_batch_definition_whole_dataframe("chunk")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=f"{kind}_{asset_name}"))
        suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
        for c in checks:
            suite.add_expectation(getattr(gxe, c.expectation)(**c.kwargs))
        vd = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=f"vd_{self.count}", data=batch, suite=suite))
        self._checkpoint = self.ctx.checkpoints.add(gx.Checkpoint(
            name=f"cp_{self.count}", validation_definitions=[vd], result_format={"result_format": "SUMMARY"},
            actions=[]))  # the Data Docs are built once, by build_docs()

    def run(self, frame: pd.DataFrame, label: str) -> dict:
        """Validate one chunk's `frame` with the current dataset's suite; the result as plain data."""
        from great_expectations.core.run_identifier import RunIdentifier

        # The run name becomes a key of GX's TupleFilesystemStoreBackend, which refuses '/' and '\\' (a nested
        # dataset's "tasks/vqa/train.jsonl lines 1-9" would lose its Data Docs page).
        run_name = label.replace("/", ":").replace("\\", ":")
        result = self._checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
        (vr,) = result.run_results.values()
        return {"success": bool(vr.success), "results": [_result(r) for r in vr.results]}

    def build_docs(self) -> None:
        self.ctx.build_data_docs(site_names=[self.SITE])


def _result(r) -> dict:
    """One expectation's GX result as plain data."""
    cfg = r.expectation_config
    return {"expectation": cfg.type, "kwargs": {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)},
            "success": bool(r.success),
            "unexpected_count": (r.result or {}).get("unexpected_count"),
            "observed_value": (r.result or {}).get("observed_value"),
            "exception": bool(r.exception_info.get("raised_exception"))
            if isinstance(r.exception_info, dict) else False}


def merge_results(total: dict | None, chunk: dict) -> dict:
    """The dataset's GX result so far (`total`, None before the first chunk) with one more chunk's added:
    unexpected counts and row counts summed; the row-count expectation judged on the whole dataset."""
    if total is None:
        return {"success": chunk["success"], "results": [dict(r) for r in chunk["results"]]}
    for mine, theirs in zip(total["results"], chunk["results"], strict=True):
        mine["success"] = mine["success"] and theirs["success"]
        mine["exception"] = mine["exception"] or theirs["exception"]
        for key in ("unexpected_count", "observed_value"):
            a, b = mine[key], theirs[key]
            numbers = isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
            mine[key] = a + b if numbers else a if a is not None else b
        if mine["expectation"] == "expect_table_row_count_to_be_between":
            mine["success"] = (mine["observed_value"] or 0) >= mine["kwargs"].get("min_value", 0)
    total["success"] = all(r["success"] for r in total["results"])
    return total
