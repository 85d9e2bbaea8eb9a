"""`beit3 pretrain --visual-targets`: on-the-fly labels from the visual tokenizer on the training device (BEiT v2
`beit2/engine_for_pretraining.py`: `vqkd.get_codebook_indices` of the second view, under no_grad), and which
mode ran named in the summary."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_pretrain_data import build_collection

from beit3core.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from beit3core.tokenizers import VQKD, VisualTokenizer
    from beit3core.tokenizers.vqkd import vqkd_tiny_config

    made = build_collection(str(tmp_path_factory.mktemp("augment_run")), n_images=8, n_texts=8, n_pairs=8)
    torch.manual_seed(0)  # a real (untrained) tokenizer of the collection's sizes: 64 px, 8x8 grid, 16 codes
    shutil.rmtree(os.path.join(made["V"], "tokenizer"))
    VisualTokenizer(VQKD(vqkd_tiny_config(codebook_size=16, code_dim=8))).save(os.path.join(made["V"], "tokenizer"))
    return made


def _summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def argv_for(inputs, out, *extra):
    return ["--data", inputs["data"], "--text-tokenizer", inputs["T"], "--visual-tokens", inputs["V"],
            "--out", out, "--arch", "beit3_tiny_patch8_64", "--steps", "2", "--batch-images", "4",
            "--batch-texts", "4", "--batch-pairs", "4", "--lanes", "4", "--warmup", "1", "--log-every", "1",
            "--ckpt-every", "2", "--num-workers", "0", "--device", "cpu", "--grounding-pairs", "0",
            "--model-overrides", "depth=1", "embed_dim=32", "num_heads=2", "mlp_dim=64", *extra]


def test_on_the_fly_targets_label_the_tokenizer_view_on_the_device(inputs, tmp_path, monkeypatch):
    """Forced on CPU, the run needs no token files (they are removed here), every image batch reaching the model
    holds image_labels = the tokenizer's codes of its tokenizer_image, and the summary says on-the-fly."""
    from beit3core.pretrain import augment
    from beit3core.pretrain.model import Beit3ForPretraining
    from beit3train.pretrain import main

    no_tokens = tmp_path / "V"
    shutil.copytree(os.path.join(inputs["V"], "tokenizer"), no_tokens / "tokenizer")
    labelled, seen = [], []
    real_label, real_forward = augment.label_on_device, Beit3ForPretraining.forward

    def label(batch, tokenizer):
        views = {k: v["tokenizer_image"].clone() for k, v in batch.items() if "tokenizer_image" in v}
        out = real_label(batch, tokenizer)
        labelled.append({k: (views[k], out[k]["image_labels"], tokenizer) for k in views})
        return out

    def forward(self, batch):
        seen.append({k: v.get("image_labels") for k, v in batch.items()})
        return real_forward(self, batch)

    monkeypatch.setattr("beit3train.pretrain.label_on_device", label)
    monkeypatch.setattr(Beit3ForPretraining, "forward", forward)
    out = str(tmp_path / "run")
    assert main(argv_for({**inputs, "V": str(no_tokens)}, out, "--visual-targets", "on-the-fly")) == 0
    assert _summary(out)["visual_targets"] == "on-the-fly"
    assert len(labelled) == 2 and set(labelled[0]) == {"images", "pairs"}
    for step, parts in enumerate(labelled):
        for name, (views, labels, tokenizer) in parts.items():
            assert views.dtype == torch.uint8 and views.shape == (4, 3, 64, 64)
            assert torch.equal(labels, tokenizer.encode(views)) and labels.shape == (4, 64)
            assert seen[step][name] is labels  # the model got exactly these labels


def test_auto_targets_are_precomputed_on_cpu(inputs, tmp_path):
    from beit3train.pretrain import main, parse_args

    out = str(tmp_path / "run")
    assert main(argv_for(inputs, out)) == 0
    assert _summary(out)["visual_targets"] == "precomputed"
    assert parse_args(argv_for(inputs, out)).visual_targets == "auto"
    with pytest.raises(UserError, match="--visual-targets: invalid choice"):
        parse_args(argv_for(inputs, out, "--visual-targets", "sometimes"))


def test_resume_keeps_the_visual_targets(inputs, tmp_path):
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    assert main(argv_for(inputs, out, "--visual-targets", "precomputed")) == 0
    with pytest.raises(UserError, match="visual.targets"):
        main(argv_for(inputs, out, "--visual-targets", "on-the-fly", "--steps", "4"))
