"""The demo's pretrained-vs-random comparison over seeds (issue 17: a one-seed difference halved on a rerun, so
a difference is stated only when it holds for every seed) and the digest `make demo` prints."""

import json
import statistics

import pytest

from beit3core.errors import UserError
from beit3ops import demo_summary

SETTINGS = {"steps": 300, "lr": 0.001}


def _metrics(path, value, seed, key="vqa_score", settings=SETTINGS, **extra):
    path.mkdir(parents=True)
    doc = {"selection_key": key, key: value, "train": {"seed": seed}, "settings": settings, **extra}
    (path / "metrics.json").write_text(json.dumps(doc))


def _artifacts(tmp_path, pretrained, random, task="vqa"):
    """pretrained[0] is the `finetune` stage's run (seed 0), the rest finetune_pretrained/TASK-seedN."""
    _metrics(tmp_path / "finetune" / task, pretrained[0], 0)
    for seed, value in enumerate(pretrained[1:], start=1):
        _metrics(tmp_path / "finetune_pretrained" / f"{task}-seed{seed}", value, seed)
    for seed, value in enumerate(random):
        _metrics(tmp_path / "finetune_random" / f"{task}-seed{seed}", value, seed)
    return tmp_path


def test_spread_is_mean_sample_std_and_range():
    s = demo_summary.spread([40.0, 44.0, 45.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(43.0)
    assert s["std"] == pytest.approx(statistics.stdev([40.0, 44.0, 45.0]))  # n - 1, not the population std
    assert (s["min"], s["max"]) == (40.0, 45.0)
    assert demo_summary.spread([5.0])["std"] is None


@pytest.mark.parametrize("pretrained,random,expected", [
    ([44, 45, 46], [34, 35, 36], "pretrained better on every seed"),
    ([30, 31, 32], [34, 35, 36], "random better on every seed"),
    ([44, 45, 33], [34, 35, 36], "no claim: the seeds overlap"),    # a higher mean, but one seed lost
    ([44, 45], [34, 35], "no claim: fewer than 3 seeds per arm"),  # too few seeds to say anything
    ([35, 35, 35], [35, 35, 35], "no claim: the seeds overlap"),    # ties are not wins
])
def test_verdict_holds_only_across_every_seed(pretrained, random, expected):
    assert demo_summary.verdict(pretrained, random) == expected


def test_compare_writes_mean_spread_and_verdict(tmp_path):
    art = _artifacts(tmp_path, [45.0, 44.0, 47.0], [35.0, 31.0, 34.0])
    doc = demo_summary.compare(str(art), str(tmp_path / "comparison"))
    vqa = doc["vqa"]
    assert vqa["pretrained"]["seeds"] == {0: 45.0, 1: 44.0, 2: 47.0}
    assert vqa["difference"] == pytest.approx(statistics.fmean([45, 44, 47]) - statistics.fmean([35, 31, 34]))
    assert vqa["verdict"] == "pretrained better on every seed"
    md = (tmp_path / "comparison" / "comparison.md").read_text()
    assert "| vqa | vqa_score | 45.33 ± 1.53 (44.00..47.00, n=3) | 33.33 ± 2.08 (31.00..35.00, n=3) | +12.00 |" in md
    assert demo_summary.RULE in md  # the table says which rule its verdicts follow
    saved = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    assert saved["min_seeds"] == 3 and saved["tasks"]["vqa"]["random"]["n"] == 3


def test_compare_refuses_an_unfair_or_incomplete_comparison(tmp_path):
    art = _artifacts(tmp_path / "a", [45.0, 44.0, 47.0], [35.0, 31.0])
    with pytest.raises(UserError, match="seeds"):  # seed 2 ran only in the pretrained arm
        demo_summary.compare(str(art), str(tmp_path / "out"))
    art = _artifacts(tmp_path / "b", [45.0, 44.0, 47.0], [35.0, 31.0, 34.0])
    (art / "finetune_random" / "vqa-seed2" / "metrics.json").write_text(json.dumps(
        {"selection_key": "vqa_score", "vqa_score": 34.0, "train": {"seed": 2}, "settings": {**SETTINGS, "steps": 600}}))
    with pytest.raises(UserError, match="settings differ"):
        demo_summary.compare(str(art), str(tmp_path / "out"))
    art = _artifacts(tmp_path / "c", [45.0, 44.0, 47.0], [35.0, 31.0, 34.0])
    (art / "finetune" / "vqa" / "metrics.json").unlink()
    with pytest.raises(UserError, match="missing"):
        demo_summary.compare(str(art), str(tmp_path / "out"))
    (tmp_path / "d" / "finetune").mkdir(parents=True)
    with pytest.raises(UserError, match="no random-init runs"):
        demo_summary.compare(str(tmp_path / "d"), str(tmp_path / "out"))


def test_show_puts_the_caption_object_metric_beside_cider(tmp_path):
    _metrics(tmp_path / "eval" / "captioning", 84.1, 0, key="cider", objects_named=62.5)
    _metrics(tmp_path / "eval" / "vqa", 45.3, 0)
    text = demo_summary.show(str(tmp_path))
    assert "captioning      cider = 84.1, objects_named = 62.5" in text
    assert "  vqa             vqa_score = 45.3" in text.splitlines()  # other tasks: the selection metric only
