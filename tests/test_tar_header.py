"""`QuickTarInfo` reads every header exactly as `tarfile.TarInfo` does (no root needed).

A layer's headers are untrusted: the quick parser may only ever take the plain ones, and must
give the same object (or the same error) as tarfile for any 512 bytes. Checked on headers of
every kind tarfile writes, and on many thousands of mutations of them.
"""

import random
import tarfile

import pytest

from contained.images.tar_header import QuickTarInfo

ENCODINGS = [("utf-8", "surrogateescape"), ("ascii", "strict")]


def _member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def base_blocks() -> list[bytes]:
    """512-byte blocks of headers tarfile writes: every entry type, long and prefixed names,
    big ids and sizes (base-256), names that are not ASCII, in each format."""
    members = [
        _member("usr/bin/env", size=12_345, mode=0o755, uname="root", gname="root"),
        _member("etc/", tarfile.DIRTYPE, mode=0o755),
        _member("bin", tarfile.SYMTYPE, linkname="usr/bin"),
        _member("usr/bin/view", tarfile.LNKTYPE, linkname="usr/bin/vim"),
        _member("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        _member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        _member("run/fifo", tarfile.FIFOTYPE),
        _member("usr/share/" + "d" * 90 + "/file", size=1),  # ustar: prefix and name
        _member("x" * 150, size=2),  # GNU: a long-name header first
        _member("home/user", uid=2**22, gid=2**22, size=3),  # octal for ustar, base-256 past it
        _member("big", size=2**34),  # over 8 GiB: base-256 (GNU) or pax
        _member("old", mtime=-1),  # before 1970: base-256 (GNU)
        _member("caf\u00e9/\u00fcber", size=4, uname="j\u00f6rg"),
        _member("etc/sparse"),
    ]
    blocks = []
    for info in members:
        for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
            try:
                data = info.tobuf(fmt, "utf-8", "surrogateescape")
            except ValueError:
                continue  # this format cannot hold it (ustar: a long name, a big size)
            blocks += [data[i:i + 512] for i in range(0, len(data), 512)]
    # A v7 directory (a regular file whose name ends in /), a GNU sparse header, an empty
    # name, an end-of-archive block, a short one.
    blocks += [_with_checksum(_member("v7dir/").tobuf(tarfile.USTAR_FORMAT)[:512], b"\0", 156),
               _with_checksum(blocks[0], b"S", 156),
               _with_checksum(blocks[0], b"\0", 0),
               bytes(512), blocks[0][:300], b""]
    return blocks


def _with_checksum(block: bytes, value: bytes, at: int) -> bytes:
    """`block` with `value` written at `at`, and its checksum made right again."""
    block = bytearray(block[:at] + value + block[at + len(value):])
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def outcome(parser, block: bytes, encoding: str, errors: str):
    try:
        info = parser.frombuf(block, encoding, errors)
    except Exception as error:  # noqa: BLE001 — the error is the outcome to compare
        return ("error", type(error), str(error))
    return ("info", {slot: getattr(info, slot, "<unset>") for slot in tarfile.TarInfo.__slots__})


def mutations(block: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Random changes where they matter: the number fields (digits, 8, 9, signs, blanks,
    NULs, base-256 marks), the type, the names; half with the checksum made right again, so
    that the quick path reads them too."""
    alphabet = b"01234567 89+-_\t\n\0\x80\xffaZ/.\xc3\xa9"
    spots = list(range(100, 157)) + list(range(329, 345)) + [0, 1, 99, 156, 157, 345, 499]
    found = []
    for _ in range(count):
        mutated = bytearray(block.ljust(512, b"\0")[:512])
        for _ in range(rng.randint(1, 4)):
            mutated[rng.choice(spots)] = rng.choice(alphabet)
        mutated = bytes(mutated)
        if rng.random() < 0.5:
            mutated = _with_checksum(mutated, b"", 0)
        found.append(mutated)
    return found


@pytest.mark.parametrize("encoding, errors", ENCODINGS)
def test_every_header_tarfile_writes_is_read_the_same(encoding, errors):
    for block in base_blocks():
        assert outcome(QuickTarInfo, block, encoding, errors) == \
            outcome(tarfile.TarInfo, block, encoding, errors), block[:100]


@pytest.mark.parametrize("encoding, errors", ENCODINGS)
def test_mutated_headers_are_read_the_same_or_refused_the_same(encoding, errors):
    rng = random.Random(15)
    compared = 0
    for block in base_blocks():
        for mutated in mutations(block, rng, 400):
            assert outcome(QuickTarInfo, mutated, encoding, errors) == \
                outcome(tarfile.TarInfo, mutated, encoding, errors), mutated
            compared += 1
    assert compared > 10_000


def test_a_plain_header_takes_the_quick_way_and_an_odd_one_tarfiles(monkeypatch):
    """Without this, the two tests above would pass with a parser that always asks tarfile."""
    calls = []
    original = tarfile.TarInfo.frombuf.__func__

    def counted(cls, buf, encoding, errors):
        calls.append(buf)
        return original(cls, buf, encoding, errors)

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(counted))
    plain = _member("usr/bin/env", size=5).tobuf(tarfile.USTAR_FORMAT)[:512]
    assert QuickTarInfo.frombuf(plain, "utf-8", "surrogateescape").name == "usr/bin/env"
    assert calls == []
    odd = _member("big", size=2**34).tobuf(tarfile.GNU_FORMAT)[:512]  # base-256 size
    assert QuickTarInfo.frombuf(odd, "utf-8", "surrogateescape").size == 2**34
    assert calls == [odd]


def test_a_layer_read_with_it_lists_the_same_members(tmp_path):
    """The whole stream, pax and GNU extension headers included (they call frombuf too)."""
    import io

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in (_member("a" * 120, size=0), _member("dir/", tarfile.DIRTYPE),
                     _member("link", tarfile.SYMTYPE, linkname="b" * 200),
                     _member("x", size=0, pax_headers={"SCHILY.xattr.user.k": "v"})):
            tar.addfile(info, io.BytesIO(b""))

    def members(cls):
        with tarfile.TarFile(fileobj=io.BytesIO(data.getvalue()), tarinfo=cls) as tar:
            return [outcome_of(info) for info in tar]

    def outcome_of(info):
        return {slot: getattr(info, slot, None) for slot in tarfile.TarInfo.__slots__
                if slot not in ("tarfile",)}

    assert members(QuickTarInfo) == members(tarfile.TarInfo)
