"""decode_image skips the EXIF parse when an image has nowhere to hold an orientation, and still applies every
orientation an image carries (EXIF, or XMP `tiff:Orientation`) exactly as Pillow's exif_transpose does."""

from __future__ import annotations

import io as pyio

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from beit3core import data
from beit3core.data import reading


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
