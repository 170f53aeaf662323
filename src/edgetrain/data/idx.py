"""Reading IDX files, the binary array format of MNIST (LeCun et al. 1998) and its successors.

An IDX file is a big-endian header followed by the raw array: two zero bytes, one byte naming the
element type, one byte giving the number of dimensions ``ndim``, then ``ndim`` unsigned 32-bit
sizes, then the elements in row-major order. The MNIST-family files are distributed gzip-compressed.
Parsing is one ``numpy.frombuffer`` call; every malformation (bad gzip stream, wrong magic,
truncated or over-long payload) becomes a ``ValueError`` that names the file.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

# IDX element-type codes (third header byte) and the big-endian numpy types they denote.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def idx_magic(dtype_code: int, ndim: int) -> int:
    """The 32-bit magic number of an IDX file holding ``ndim``-D elements of ``dtype_code``."""
    return (dtype_code << 8) | ndim


def describe_magic(magic: int) -> str:
    """``0x00000803`` -> ``"0x00000803 (ubyte, 3-D)"`` for error messages."""
    dtype = IDX_DTYPES.get((magic >> 8) & 0xFF)
    kind = f"{dtype.kind}{dtype.itemsize}" if dtype is not None else "unknown type"
    if dtype is not None and dtype.itemsize == 1:
        kind = "ubyte" if dtype.kind == "u" else "byte"
    return f"0x{magic:08X} ({kind}, {magic & 0xFF}-D)"


def parse_idx(buf: bytes, source: str = "<bytes>", expect_magic: int | None = None) -> np.ndarray:
    """Decode one (uncompressed) IDX byte string into a native-endian numpy array.

    ``expect_magic`` (e.g. ``idx_magic(0x08, 3)`` for MNIST images) rejects files of another type
    or rank. ``source`` names the file in error messages.
    """
    if len(buf) < 4:
        raise ValueError(f"{source}: only {len(buf)} bytes, too short for an IDX header")
    magic = int.from_bytes(buf[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{source}: wrong IDX magic {describe_magic(magic)}, expected "
                         f"{describe_magic(expect_magic)}")
    code, ndim = buf[2], buf[3]
    if buf[0] != 0 or buf[1] != 0 or code not in IDX_DTYPES:
        raise ValueError(f"{source}: not an IDX file (magic 0x{magic:08X}; expected two zero "
                         f"bytes, a type code in {sorted(IDX_DTYPES)} and a rank)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{source}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                         f"file has {len(buf)}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    found = len(buf) - header
    if found < expected:
        raise ValueError(f"{source}: truncated payload: shape {dims} needs {expected} bytes of "
                         f"data, found {found}")
    if found > expected:
        raise ValueError(f"{source}: {found - expected} unexpected bytes after the {expected} "
                         f"bytes of data for shape {dims}")
    data = np.frombuffer(buf, dtype=dtype, count=count, offset=header)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx_gz(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Decompress and parse a gzip-compressed IDX file (see ``parse_idx``)."""
    path = Path(path)
    try:
        buf = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    return parse_idx(buf, str(path), expect_magic)


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file's bytes, read in 1 MiB blocks (used to check downloads, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
