"""Datasets: on-disk formats, importers, the synthetic shapes collection, validation and shard I/O.

Reading API (used by tokenizers, pretraining and fine-tuning):

    from beit3core import data
    data.read_header(uri) -> dict                 # dataset.json
    data.splits(uri) -> list[str]
    data.read_rows(uri, split) -> list[dict]
    data.iter_samples(uri, split, *, rank=0, world_size=1, worker=0, num_workers=1, seed=None)
    data.load_image(uri, ref) -> PIL.Image.Image  # ref = a row's image field
    data.image_bytes(uri, ref) -> bytes
    data.load_split(uri, split, decode=False)     # small eval sets in memory
    data.find_datasets(uri) -> list[str]          # datasets of a collection

Stage functions (`synthesize`, `validate`, `import_dataset`) load on first use, so importing this package
stays light (Great Expectations is imported only inside validation).
"""

from beit3core._lazy import lazy_getattr
from beit3core.data.formats import KINDS, find_datasets, is_dataset, make_header
from beit3core.data.reading import (
    clear_cache,
    decode_image,
    image_bytes,
    image_fields,
    iter_samples,
    load_image,
    load_split,
    read_header,
    read_rows,
    shard_reader,
    splits,
    vocabulary,
)

_LAZY = {
    "synthesize": "beit3core.data.synth",
    "validate": "beit3core.data.validation",
    "import_dataset": "beit3core.data.importers",
}

__all__ = [
    "KINDS", "clear_cache", "decode_image", "find_datasets", "image_bytes", "image_fields", "is_dataset", "iter_samples",
    "load_image", "load_split", "make_header", "read_header", "read_rows", "shard_reader", "splits",
    "vocabulary", *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY)
