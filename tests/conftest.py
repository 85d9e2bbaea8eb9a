"""Shared fixtures: a real local S3 store (SeaweedFS) for the whole session, small data made on the fly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on the 2
    shared cores of CI, one thread avoids spin contention and is several times faster for tiny models."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def task_synth(tmp_path_factory):
    """Tiny synthetic task datasets (ROOT/synth/tasks/<task>, 32-px images) and a text tokenizer fitted on their
    texts (ROOT/tok); returns ROOT."""
    from beit3core import data
    from beit3core.tokenizers import TextTokenizer

    root = tmp_path_factory.mktemp("tasks")
    data.synthesize(str(root / "synth"), seed=0, image_size=32, scale=0.03)
    texts = []
    for t in ("vqa", "nlvr2", "retrieval", "captioning"):
        rows = data.read_rows(str(root / "synth" / "tasks" / t), "train")
        texts += [r.get("question") or r.get("sentence") or r.get("caption") for r in rows]
    TextTokenizer.train(texts, vocab_size=40).save(str(root / "tok"))
    return root


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 with bucket `test-bucket`; AWS_* point at it for the session."""
    from beit3ops import store

    data_dir = tmp_path_factory.mktemp("s3store")
    info = store.up(str(data_dir), bucket="test-bucket")
    saved = {k: os.environ.get(k) for k in info.env()}
    os.environ.update(info.env())
    _clear_s3_caches()
    try:
        yield {"endpoint": info.endpoint, "bucket": "test-bucket", "env": info.env()}
    finally:
        store.down(str(data_dir))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_s3_caches()


def _clear_s3_caches():
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_prefix(s3_store, request):
    """A fresh s3:// prefix per test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"s3://{s3_store['bucket']}/{name}"
