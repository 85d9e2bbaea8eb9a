"""The metrics document, the HTML report (self-contained, escaped) and the pretrained-vs-random comparison table."""

import json

from beit3core.tasks.report import compare_inits, metrics_document, render_report, write_comparison


def test_metrics_document_puts_metrics_on_top_and_names_the_task_s_selection_metric(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"kind": "retrieval"}))
    doc = metrics_document("retrieval", "val", {"average_score": 40.123456, "num_texts": 12}, str(tmp_path))
    assert doc["average_score"] == 40.1235 and doc["num_texts"] == 12
    assert (doc["selection_key"], doc["selection_value"]) == ("average_score", 40.1235)
    assert (doc["task"], doc["split"], doc["data"]) == ("retrieval", "val", str(tmp_path))
    assert doc["dataset_version"]  # the fingerprint of dataset.json
    assert metrics_document("vqa", "val", {"vqa_score": 1.0}, str(tmp_path / "gone"))["dataset_version"] is None


def test_report_inlines_images_and_escapes_text(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "images" / "a.png")
    html = render_report(task="vqa", data_uri=str(tmp_path), metrics={"vqa_score": 51.234, "split": "val"},
                         samples=[{"images": ["images/a.png", "images/missing.jpg"],
                                   "lines": [("question", "is <b>this</b> red?"), ("predicted", "yes")], "ok": True}])
    assert "data:image/png;base64," in html
    assert "unreadable" in html  # a missing image does not break the report
    assert "&lt;b&gt;this&lt;/b&gt;" in html and "<b>this</b>" not in html
    assert "51.23" in html and "card ok" in html
    assert "http://" not in html and "https://" not in html  # no external resources


def test_compare_inits_table_and_json(tmp_path):
    pre = {"vqa": {"selection_key": "vqa_score", "vqa_score": 60.0},
           "retrieval": {"selection_key": "average_score", "average_score": 40.5}}
    rnd = {"vqa": {"selection_key": "vqa_score", "vqa_score": 35.25},
           "retrieval": {"selection_key": "average_score", "average_score": 45.0}}
    md, doc = compare_inits(pre, rnd)
    assert "| vqa | vqa_score | 60.00 | 35.25 | +24.75 |" in md
    assert "| retrieval | average_score | 40.50 | 45.00 | -4.50 |" in md
    assert doc["tasks"]["vqa"]["better"] is True and doc["tasks"]["retrieval"]["better"] is False
    assert doc["tasks"]["vqa"]["difference"] == 24.75

    for name, d in (("p", pre), ("r", rnd)):
        for task, m in d.items():
            (tmp_path / f"{name}-{task}.json").write_text(json.dumps(m))
    doc = write_comparison({t: str(tmp_path / f"p-{t}.json") for t in pre},
                           {t: str(tmp_path / f"r-{t}.json") for t in rnd}, str(tmp_path / "cmp"))
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text()) == doc
    assert (tmp_path / "cmp" / "comparison.md").read_text() == md
