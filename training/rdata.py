"""Read R's serialized data without R: just enough of the format to get character vectors out of a package.

An installed R package keeps its data sets in a lazy-load database: `data/Rdata.rdx` (a gzip-compressed RDS file
holding a list that maps each object's name to an (offset, length) pair) and `data/Rdata.rdb` (the objects, each a
4-byte big-endian uncompressed length followed by a zlib stream of the serialized object). Objects are in R's XDR
serialization format (version 2 or 3, header ``X\\n``). This reader understands the item types a package's index and
its character vectors use; any other type raises `RFormatError` naming the type code, never a silent misread.
"""

import gzip
import struct
import zlib
from pathlib import Path

# SEXP type codes and pseudo-types of R's serialize.c
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
NA_LENGTH = -1  # a CHARSXP of length -1 is NA_character_


class RFormatError(ValueError):
    """The bytes are not R serialization of the kinds this reader supports."""


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source
        self.refs: list = []  # symbols (and environments) are written once and referenced by index after

    def fail(self, what: str) -> RFormatError:
        return RFormatError(f"{self.source}: {what} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: wanted {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        if n < 0:
            raise self.fail(f"negative length {n}")
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise self.fail("not R XDR serialization (header is not 'X\\n')")
        version = self.int()
        self.int(), self.int()  # writer's and minimal reader's R versions
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise self.fail(f"unsupported serialization version {version}")

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE_SXP:
            return None
        if kind in (GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            return f"<environment {kind}>"
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise self.fail(f"reference {index} to an object not read yet")
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            n = self.int()
            return None if n == NA_LENGTH else self.take(n).decode("utf-8")
        if kind == LISTSXP:  # pairlist: read as a dict (tags are names) or a list when untagged
            entries = []
            while kind == LISTSXP:
                attr = self.item() if has_attr else None
                del attr
                tag = self.item() if has_tag else None
                entries.append((tag, self.item()))
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if kind != NILVALUE_SXP:
                raise self.fail(f"pairlist ends in type {kind}, expected NULL")
            return dict(entries) if all(t is not None for t, _ in entries) else [v for _, v in entries]
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            value = list(struct.unpack(f">{n}i", self.take(4 * n)))
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == STRSXP:
            value = [self.item() for _ in range(self.length())]
        elif kind == VECSXP:
            value = [self.item() for _ in range(self.length())]
        else:
            raise self.fail(f"unsupported R type code {kind}")
        if has_attr:
            attributes = self.item()
            names = attributes.get("names") if isinstance(attributes, dict) else None
            if kind == VECSXP and names is not None:
                value = dict(zip(names, value))
        return value


def unserialize(data: bytes, source: str = "<bytes>"):
    """R XDR serialization -> Python: character vectors become lists of str (None for NA), named lists dicts."""
    reader = _Reader(data, source)
    reader.header()
    return reader.item()


def read_lazyload_index(rdx: Path) -> dict[str, tuple[int, int]]:
    """`Rdata.rdx` -> {object name: (offset, length) in the .rdb}."""
    index = unserialize(gzip.decompress(Path(rdx).read_bytes()), str(rdx))
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RFormatError(f"{rdx}: not a lazy-load index (no 'variables' map)")
    return {name: (int(pos[0]), int(pos[1])) for name, pos in index["variables"].items()}


def read_lazyload_object(rdb: Path, offset: int, length: int):
    """One object of an `Rdata.rdb`: 4-byte big-endian uncompressed size, then a zlib stream."""
    with open(rdb, "rb") as f:
        f.seek(offset)
        record = f.read(length)
    if len(record) != length or length < 5:
        raise RFormatError(f"{rdb}: record at {offset} is truncated ({len(record)} of {length} bytes)")
    size = struct.unpack(">I", record[:4])[0]
    try:
        data = zlib.decompress(record[4:])
    except zlib.error as err:
        raise RFormatError(f"{rdb}: record at {offset} is not a zlib stream ({err})") from None
    if len(data) != size:
        raise RFormatError(f"{rdb}: record at {offset} inflates to {len(data)} bytes, header says {size}")
    return unserialize(data, f"{rdb}@{offset}")
