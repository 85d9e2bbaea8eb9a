"""The loader's fast paths give what the plain paths give: views written into the batch in place (shared memory
in a loader worker), decoding that skips the EXIF parse when an image has nowhere to hold an orientation, one
conversion of a view both sides share, and parts of several workers pinned once, as they are joined."""

from __future__ import annotations

import io as pyio

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, PngImagePlugin
from test_pretrain_data import build_collection

from beit3core import data
from beit3core.data import reading
from beit3core.data.lanes import RowKey
from beit3core.pretrain import augment
from beit3core.pretrain import data as pretrain_data
from beit3core.pretrain.augment import PretrainAugment, precomputed_view
from beit3core.pretrain.data import (
    STREAM_IDS,
    Layout,
    LoadedShard,
    MaskingConfig,
    SampleMaker,
    join_parts,
    lane_loader,
    load_shard,
    stream_source,
)
from beit3core.tokenizers import TextTokenizer
from beit3core.tokenizers.visual import write_chw


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(str(tmp_path_factory.mktemp("fast")), n_images=8, n_texts=8, n_pairs=8)


def _items(c, stream: str) -> list[tuple[RowKey, LoadedShard]]:
    source = stream_source(stream, c["data"], "train", [stream], c["V"])
    shard = load_shard(source, 0, with_tokens=True)
    return [(RowKey(epoch=1, shard=0, row=r), shard) for r in range(len(shard.rows))]


def _maker(c, targets: str) -> SampleMaker:
    masking = MaskingConfig(mask_id=c["mask_id"], grid=8, img_size=48, tokenizer_img_size=32)
    return SampleMaker(masking, seed=5, text_tokenizer=TextTokenizer.load(c["T"]).model_proto,
                       visual_targets=targets)


def _decoded(items):
    return [data.decode_image(pretrain_data._image_file(shard, k.row)) for k, shard in items]


@pytest.mark.parametrize("stream", ["images", "pairs"])
def test_views_written_into_the_batch_equal_the_views_of_each_image(collection, stream):
    """The batch's images (written row by row into one tensor) equal the per-image views, stacked: the
    precomputed view, and the on-the-fly views drawn from each row's augmentation generator."""
    items = _items(collection, stream)
    images = _decoded(items)
    batch = _maker(collection, "precomputed").batch(stream, items)
    assert torch.equal(batch["image"], torch.stack([precomputed_view(img, 48) for img in images]))

    batch = _maker(collection, "on-the-fly").batch(stream, items)
    aug = PretrainAugment(48, 32)
    views = [aug(img, np.random.default_rng([*k.seed(5, STREAM_IDS[stream]), 1])) for (k, _), img in
             zip(items, images)]
    assert torch.equal(batch["image"], torch.stack([v[0] for v in views]))
    assert torch.equal(batch["tokenizer_image"], torch.stack([v[1] for v in views]))
    assert batch["image"].is_contiguous() and batch["tokenizer_image"].dtype == torch.uint8


@pytest.mark.parametrize("targets", ["precomputed", "on-the-fly"])
def test_a_worker_builds_its_part_in_two_shared_segments(collection, monkeypatch, targets):
    """In a DataLoader worker a batch part is built in shared memory, as torch's default_collate does
    (torch/utils/data/_utils/collate.py, `_new_shared`): the views in one segment, the masks, labels and texts
    in another. Sending it to the main process then copies nothing and passes two file descriptors
    (torch/multiprocessing/reductions.py `reduce_storage`: one per storage), not one per tensor."""
    items = _items(collection, "pairs")
    alone = _maker(collection, targets).batch("pairs", items)
    monkeypatch.setattr(pretrain_data, "get_worker_info", lambda: object())  # as in a loader worker
    in_worker = _maker(collection, targets).batch("pairs", items)
    assert list(in_worker) == list(alone) and all(torch.equal(alone[k], in_worker[k]) for k in alone)
    assert all(t.is_shared() for t in in_worker.values())
    segments = {t.untyped_storage().data_ptr() for t in in_worker.values()}
    assert len(segments) == 2 and len(in_worker) >= 6


def _jpeg(**save) -> bytes:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = (250, 0, 0)  # a red band on the left marks how the picture was turned
    buf = pyio.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def test_decoding_an_image_without_exif_or_xmp_skips_the_orientation_parse(monkeypatch):
    def refuse(img):
        raise AssertionError("parsed EXIF of an image that holds none")

    monkeypatch.setattr(reading, "upright", refuse)
    assert data.decode_image(_jpeg()).size == (40, 20)


def _xmp(orientation: int) -> bytes:
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF>'
            b"</x:xmpmeta>" % orientation)


def _png_with_xmp(orientation: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(orientation).decode())
    buf = pyio.BytesIO()
    Image.open(pyio.BytesIO(_jpeg())).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("encoded", [_jpeg(exif=_exif(6)), _jpeg(exif=_exif(1)), _jpeg(xmp=_xmp(8)),
                                     _png_with_xmp(3)], ids=["exif-6", "exif-1", "jpeg-xmp-8", "png-xmp-3"])
def test_orientation_from_exif_or_xmp_is_still_applied(encoded):
    """Pillow's exif_transpose (PIL/ImageOps.py, orientation from EXIF or from XMP `tiff:Orientation`) decides
    every image that carries either: decode_image gives exactly its result."""
    expected = ImageOps.exif_transpose(Image.open(pyio.BytesIO(encoded))).convert("RGB")
    got = data.decode_image(encoded)
    assert got.size == expected.size and np.array_equal(np.asarray(got), np.asarray(expected))


def test_parts_of_several_workers_are_pinned_once_as_they_are_joined(collection, monkeypatch):
    """torch's DataLoader(pin_memory=True) pins each worker's item in its pin thread
    (torch/utils/data/_utils/pin_memory.py); joining two pinned parts with torch.cat would copy them a second
    time, into pageable memory. With several workers the DataLoader pins nothing and the parts are joined
    straight into page-locked memory; a single part is pinned by the DataLoader as before."""
    made = []

    class RecordingLoader:
        def __init__(self, dataset, **kwargs):
            made.append(kwargs)

        def __iter__(self):
            return iter(())

    monkeypatch.setattr(pretrain_data, "DataLoader", RecordingLoader)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    sources = {"pairs": stream_source("pairs", collection["data"], "train", ["pairs"], collection["V"])}
    masking = MaskingConfig(mask_id=collection["mask_id"], grid=8, img_size=64)
    loaders = [lane_loader(sources, {"pairs": 4}, masking, seed=0, layout=Layout(lanes=2, workers=workers),
                           start_step=0, total_steps=1, pin_memory=True) for workers in (2, 1)]
    assert [m["pin_memory"] for m in made] == [False, True]
    assert [loader.pin for loader in loaders] == [True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs an accelerator")
def test_joined_parts_land_in_page_locked_memory():
    parts = [{"pairs": {"image": torch.full((2, 3, 4, 4), k, dtype=torch.uint8)}} for k in (1, 2)]
    joined = join_parts(parts, pin=True)["pairs"]["image"]
    assert joined.is_pinned() and torch.equal(joined, torch.cat([p["pairs"]["image"] for p in parts]))



def test_equal_view_sizes_convert_the_view_out_of_pil_once(monkeypatch):
    """Model and tokenizer views of one size are one resized view: the tokenizer's is a copy of the model's
    tensor, not a second conversion of the image, and both equal the view's pixels."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8))
    expected = PretrainAugment(24, 24)(img, np.random.default_rng([3, 1]))
    conversions = []

    def counting(view, out=None):
        conversions.append(view.size)
        return write_chw(view, out)

    monkeypatch.setattr(augment, "write_chw", counting)
    rows = torch.zeros(2, 3, 24, 24, dtype=torch.uint8)
    model_view, tokenizer_view = PretrainAugment(24, 24)(img, np.random.default_rng([3, 1]), (rows[0], rows[1]))
    assert conversions == [(24, 24)]
    assert torch.equal(rows[0], expected[0]) and torch.equal(rows[1], expected[1])
    assert torch.equal(expected[0], expected[1]) and model_view.data_ptr() != tokenizer_view.data_ptr()
