"""Reading a tar header: the common ones quickly, every other one exactly as `tarfile` does.

Taught in notebook 04 ("Images"): a layer is a tar stream, and each of its entries starts with
a 512-byte header of fixed fields (``od -A d -c -N 512 layer.tar`` shows one: the name, then
mode, owner, size and mtime as octal text, a checksum, the type, the link target...).

`tarfile` reads each field with a small Python function (`nti`, `nts`): ~30 µs a header here,
0.2 s of the 1.0 s it takes to unpack a 6,768-entry Debian image on a tmpfs. `QuickTarInfo`
reads a header in one ``struct`` call instead (~15 µs), but only when every field is plain:
octal digits between spaces, the unsigned checksum right, a type other than GNU sparse, a
name that does not start with NUL. Any other header, odd or malicious, goes to tarfile's own
`TarInfo.frombuf`, which accepts or refuses it as it always has. Either way the result is the
same object; `tests/test_tar_header.py` checks that on mutated headers of every kind.
"""

import struct
import tarfile

__all__ = ["QuickTarInfo"]

# name, mode, uid, gid, size, mtime, chksum, type, linkname, (magic, version), uname, gname,
# devmajor, devminor, prefix: the ustar layout, which GNU tar's headers share
_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s")


def _octal(field: bytes) -> int | None:
    """A number field as tarfile reads it (`tarfile.nti`), or None if it is anything but
    octal digits between spaces (base-256, signs, other blanks: left to tarfile)."""
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if not digits.isdigit():
        return None
    try:
        return int(digits, 8)
    except ValueError:  # an 8 or a 9
        return None


def _text(field: bytes, encoding: str, errors: str) -> str:
    return field.split(b"\0", 1)[0].decode(encoding, errors)  # as `tarfile.nts`


class QuickTarInfo(tarfile.TarInfo):
    """`tarfile.TarInfo` with a faster `frombuf` for plain headers; pass it as
    ``tarfile.TarFile(..., tarinfo=QuickTarInfo)``."""

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        if len(buf) != tarfile.BLOCKSIZE or buf[0] == 0:
            return super().frombuf(buf, encoding, errors)  # end, empty or truncated
        (name, mode, uid, gid, size, mtime, chksum, kind, linkname, uname, gname,
         devmajor, devminor, prefix) = _FIELDS.unpack_from(buf)
        numbers = [_octal(field) for field in (mode, uid, gid, size, mtime, chksum,
                                               devmajor, devminor)]
        # The checksum counts its own 8 bytes as spaces (256); tarfile also accepts the
        # signed sum some old tars wrote, and says which error a bad one is: its own way.
        if None in numbers or kind == tarfile.GNUTYPE_SPARSE \
                or numbers[5] != 256 + sum(buf) - sum(chksum):
            return super().frombuf(buf, encoding, errors)
        info = cls()
        (info.mode, info.uid, info.gid, info.size, info.mtime, info.chksum, info.devmajor,
         info.devminor) = numbers
        info.name = _text(name, encoding, errors)
        info.type = kind
        info.linkname = _text(linkname, encoding, errors)
        info.uname = _text(uname, encoding, errors)
        info.gname = _text(gname, encoding, errors)
        prefix = _text(prefix, encoding, errors)
        # What tarfile's frombuf does after reading the fields, in its order.
        if info.type == tarfile.AREGTYPE and info.name.endswith("/"):
            info.type = tarfile.DIRTYPE  # an old V7 directory
        if info.isdir():
            info.name = info.name.rstrip("/")
        if prefix and info.type not in tarfile.GNU_TYPES:
            info.name = prefix + "/" + info.name  # a ustar long name
        return info
