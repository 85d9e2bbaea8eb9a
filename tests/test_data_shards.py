"""WebDataset shards: img2dataset layout, byte-deterministic, index offsets usable for range reads."""

from __future__ import annotations

import tarfile

from beit3core.data.shards import (
    ShardReader,
    ShardWriter,
    group_samples,
    iter_tar,
    scan_index,
    tar_header,
)


def test_writer_layout_index_and_determinism(tmp_path):
    def write(folder):
        w = ShardWriter(str(folder), shard_size=3)
        refs = [(w.add(f"{k:09d}", bytes([k]) * (100 + 700 * k), "jpg", f"caption {k}", {"n": k}), w.current)
                for k in range(7)]
        assert w.close() == ["00000.tar", "00001.tar", "00002.tar"]
        return refs

    refs = write(tmp_path / "a")
    write(tmp_path / "b")
    for name in ("00000.tar", "00001.tar", "00002.tar", "00000.idx.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / "00001.tar") as tar:
        assert tar.getnames() == [f"{k:09d}.{e}" for k in (3, 4, 5) for e in ("jpg", "txt", "json")]
        assert tar.extractfile("000000004.txt").read() == b"caption 4"
    reader = ShardReader(str(tmp_path / "a"))
    for k, (member, shard) in enumerate(refs):
        assert member == f"{k:09d}.jpg" and shard == f"{k // 3:05d}.tar"
        assert reader.read(shard, member) == bytes([k]) * (100 + 700 * k)
    assert scan_index((tmp_path / "a" / "00002.tar").read_bytes()) == reader.index("00002.tar")


def test_reader_indexes_foreign_shards_and_groups_samples(tmp_path):
    w = ShardWriter(str(tmp_path), shard_size=10)
    w.add("a", b"IMG-A", "png", "x")
    w.add("b", b"IMG-B", "jpg", "y")
    w.close()
    (tmp_path / "00000.idx.json").unlink()  # as img2dataset writes them: no index
    assert ShardReader(str(tmp_path)).read("00000.tar", "b.jpg") == b"IMG-B"
    samples = list(group_samples(iter_tar(str(tmp_path / "00000.tar"))))
    assert [k for k, _ in samples] == ["a", "b"]
    assert samples[0][1]["png"] == b"IMG-A" and samples[1][1]["txt"] == b"y"


def test_writer_bytes_are_what_tarfile_writes(tmp_path):
    """The writer builds tar headers itself (speed); its shards are byte for byte those of Python's tarfile
    (GNU format, mtime 0, mode 0644, root owner), long names (GNU longname extension) included."""
    import io

    members = [("000000001.jpg", b"x" * 700), ("000000001.txt", b""), ("000000001.json", b'{"rows": []}'),
               ("k" * 120 + ".txt", b"long name"), ("000000002.txt", "caf\u00e9".encode())]
    w = ShardWriter(str(tmp_path), shard_size=10)
    for name, data in members:
        w._put(name, data)
    w._count = 1
    w.close()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "00000.tar").read_bytes() == buf.getvalue()
    assert ShardReader(str(tmp_path)).index("00000.tar") == scan_index(buf.getvalue())
    for size in (0, 1, 511, 512, 8 ** 11 - 1):
        info = tarfile.TarInfo("a.jpg")
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
        assert tar_header("a.jpg", size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _tar(members, fmt, dirs=()) -> bytes:
    """A tar written by Python's tarfile in `fmt`, with `dirs` as directory entries first."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _by_tarfile(data: bytes) -> list[tuple[str, bytes]]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def test_header_parse_reads_what_tarfile_reads(tmp_path):
    """`tar_members` reads plain headers itself (pretraining parses every shard it reads); on every layout the
    result is tarfile's: the writer's GNU shards, POSIX ustar with a name prefix (CPython tarfile splits names
    over 100 bytes into prefix/name), directories skipped; pax and GNU long-name records, which the plain parser
    leaves to tarfile, come back the same too."""
    from beit3core.data.shards import _plain_members, tar_members

    w = ShardWriter(str(tmp_path), shard_size=10)
    w.add("000000001", b"\xff\xd8" + b"j" * 1500, "jpg", "a caption", {"rows": [{"id": 1}]})
    w.add("000000002", b"", "jpg", "", {"rows": []})  # an empty member: no data blocks
    w.close()
    written = (tmp_path / "00000.tar").read_bytes()
    long_dir = "d" * 90 + "/" + "e" * 40
    members = [(f"{long_dir}/000000003.jpg", b"z" * 513), ("caf\u00e9.txt", "th\u00e9".encode())]
    cases = {
        "shard writer": written,
        "ustar prefix": _tar(members, tarfile.USTAR_FORMAT, dirs=("dir/",)),
        "pax": _tar(members + [("p" * 300 + ".txt", b"pax long name")], tarfile.PAX_FORMAT),
        "gnu longname": _tar([("g" * 150 + ".txt", b"gnu long name")], tarfile.GNU_FORMAT),
        "empty": _tar([], tarfile.GNU_FORMAT),
    }
    for what, data in cases.items():
        assert list(tar_members(data, what)) == _by_tarfile(data), what
    assert _plain_members(written) is not None and _plain_members(cases["ustar prefix"]) is not None
    assert _plain_members(cases["pax"]) is None and _plain_members(cases["gnu longname"]) is None
    assert _plain_members(cases["ustar prefix"])[0][0] == f"{long_dir}/000000003.jpg"


def test_damaged_shards_are_refused_as_tarfile_refuses_them():
    """A header with a wrong checksum or a member cut short is not parsed by hand: tarfile reads it and the
    shard is refused with one line naming it (a bad checksum on the first header is tarfile's
    'bad checksum'; a truncated member its 'unexpected end of data')."""
    import pytest

    from beit3core.data.shards import _plain_members, tar_members
    from beit3core.errors import UserError

    good = _tar([("000000001.jpg", b"x" * 2000), ("000000001.txt", b"t")], tarfile.GNU_FORMAT)
    bad_sum = bytearray(good)
    bad_sum[10] ^= 0x01  # a name byte: the stored checksum no longer matches
    truncated = good[:512 + 1000]
    for what, data in {"bad checksum": bytes(bad_sum), "truncated": truncated}.items():
        assert _plain_members(data) is None, what
        with pytest.raises(UserError, match=f"s3://b/{what.replace(' ', '_')}.tar: not a readable tar shard"):
            list(tar_members(data, f"s3://b/{what.replace(' ', '_')}.tar"))
