"""`beit3 data synth`: byte-determinism, layout, and that the data says what it shows."""

from __future__ import annotations

import hashlib
import io as pyio
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beit3core import data
from beit3core.data import synth
from beit3core.data.cli import main as data_main
from beit3core.errors import UserError

LAYOUT = ["images", "pairs", "tasks/captioning", "tasks/classification", "tasks/nlvr2", "tasks/retrieval",
          "tasks/vqa", "text"]


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert data_main(["synth", str(out), "--seed", "0", "--image-size", "32", "--scale", "0.05"]) == 0
    return out


def test_two_runs_give_identical_trees_and_another_seed_does_not(collection, tmp_path):
    data.synthesize(str(tmp_path / "again"), seed=0, image_size=32, scale=0.05)
    first, second = tree(collection), tree(tmp_path / "again")
    assert first == second and len(first) > 300
    data.synthesize(str(tmp_path / "other"), seed=1, image_size=32, scale=0.05)
    assert tree(tmp_path / "other") != first


def test_layout_kinds_and_splits(collection):
    assert data.find_datasets(str(collection)) == LAYOUT
    kinds = {rel: data.read_header(str(collection / rel))["kind"] for rel in LAYOUT}
    assert kinds == {"images": "images", "pairs": "pairs", "text": "text", "tasks/captioning": "captioning",
                     "tasks/classification": "classification", "tasks/nlvr2": "nlvr2", "tasks/retrieval": "retrieval",
                     "tasks/vqa": "vqa"}
    for rel in LAYOUT:
        if rel.startswith("tasks/"):
            assert data.splits(str(collection / rel)) == ["train", "val", "test"]
        spec = data.KINDS[kinds[rel]]
        for split in data.splits(str(collection / rel)):
            for row in data.read_rows(str(collection / rel), split):
                assert set(spec.required) <= set(row)
                for f in spec.image_fields:
                    assert (collection / rel / row[f]).is_file()
    header = json.loads((collection / "tasks/vqa/dataset.json").read_text())
    assert list(header) == sorted(header)  # sorted keys


def _dominant_colour(img: Image.Image) -> str:
    """The palette colour closest to the most saturated pixels (the background is pale grey)."""
    px = np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    sat = px.max(1) - px.min(1)
    fg = px[sat >= np.quantile(sat[sat > 60], 0.5)]  # the core of the shape, not its blended edge
    palette = {name: np.array(rgb, np.float32) for name, rgb in synth.COLOURS.items()}
    votes = Counter(min(palette, key=lambda n: float(((p - palette[n]) ** 2).sum())) for p in fg[::3])
    return votes.most_common(1)[0][0]


def test_captions_determine_the_image(collection):
    """A single-object caption names the colour that is drawn, and its position."""
    rows = [r for r in data.read_rows(str(collection / "pairs"), "train") if " above " not in r["caption"]
            and " below " not in r["caption"] and " of " not in r["caption"]]
    assert len(rows) >= 20
    for row in rows:
        img = Image.open(collection / "pairs" / row["image"])
        words = row["caption"].split()
        assert _dominant_colour(img) == words[2], row
        px = np.asarray(img.convert("RGB"), dtype=np.float32)
        ys, xs = np.nonzero(px.max(2) - px.min(2) > 60)
        cx, cy = xs.mean() / img.width, ys.mean() / img.height
        if words[-1] == "left":
            assert cx < 0.45
        if words[-1] == "right":
            assert cx > 0.55
        if words[-1] == "top":
            assert cy < 0.45
        if words[-1] == "bottom":
            assert cy > 0.55


def test_tasks_are_learnable_and_consistent(collection):
    vqa = str(collection / "tasks/vqa")
    vocab = set(data.read_header(vqa)["answers"])
    for row in data.read_rows(vqa, "train"):
        assert len(row["answers"]) == 10 and set(row["answers"]) <= vocab
        top, count = Counter(row["answers"]).most_common(1)[0]
        assert count >= 5
    nl = [r["label"] for r in data.read_rows(str(collection / "tasks/nlvr2"), "train")]
    assert abs(sum(nl) - len(nl) / 2) <= 1  # balanced
    cls = str(collection / "tasks/classification")
    assert data.read_header(cls)["labels"] == sorted(synth.SHAPES)
    for task in ("retrieval", "captioning"):
        uri = str(collection / "tasks" / task)
        ids = {s: {r["image_id"] for r in data.read_rows(uri, s)} for s in data.splits(uri)}
        assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
        per_image = Counter(r["image_id"] for r in data.read_rows(uri, "train"))
        assert set(per_image.values()) == {3}
    text = [r["text"] for r in data.read_rows(str(collection / "text"), "train")]
    assert len(set(text)) > len(text) // 4


def test_vqa_question_answers_match_the_scene():
    rng = random.Random(0)
    for _ in range(200):
        scene = synth.random_scene(rng, distinct_colours=True)
        for q, a, kind in synth.vqa_questions(scene, rng):
            if kind == "colour":
                shape = q.split()[-1].rstrip("?")
                assert a == next(o.colour for o in scene.objects if o.shape == shape)
            if kind == "count":
                assert a == str(len(scene.objects))
            assert a in synth.ANSWER_TYPES[kind]


def test_scale_and_image_size(tmp_path):
    counts = data.synthesize(str(tmp_path / "s"), image_size=16, scale=0.01)
    assert counts["pairs"] == 28 + 4 and counts["tasks/classification"] == 10 + 4 + 4  # at least 4 rows a split
    row = data.read_rows(str(tmp_path / "s" / "images"), "train")[0]
    assert Image.open(pyio.BytesIO((tmp_path / "s" / "images" / row["image"]).read_bytes())).size == (16, 16)
    with pytest.raises(UserError, match="image-size"):
        data.synthesize(str(tmp_path / "bad"), image_size=4)
    assert not (tmp_path / "bad").exists()
