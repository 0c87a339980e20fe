"""PostgreSQL binary COPY data built a column at a time, not a row at a time.

psycopg's ``Copy.write_row`` dumps every value of every row through Python (about 5 us per
row of eight columns). Here the fixed-width columns of a block of rows become one numpy
record array (field count, then each field's length and big-endian value), and the
variable-width values (text, bytea) are joined between its records with one
``bytes.join``: the same bytes as ``write_row`` sends (``tests/test_copy_binary.py``), at a
fraction of the cost. The layout is PostgreSQL's "Binary Format" of COPY: signature, flags,
header extension, then per tuple an int16 field count and per field an int32 length (-1 for
NULL) and the value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FIXED_TYPES", "CopyColumn", "SIGNATURE", "TRAILER", "bytes_column", "copy_order",
           "encode", "fixed_column"]

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
"""The 11-byte signature, the flags field and the (empty) header extension."""
TRAILER = b"\xff\xff"
"""The file trailer: a field count of -1."""

FIXED_TYPES = {"bool": "?", "int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4",
               "float8": ">f8"}
"""COPY type -> the numpy dtype of its binary form (big-endian; bool is one byte 0/1)."""

_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class CopyColumn:
    """One column: fixed-width values (``values`` an array, ``missing`` where NULL), or
    variable-width ones (``values`` a sequence of bytes, None for NULL)."""

    copy_type: str
    values: Any
    missing: np.ndarray | None = None

    @property
    def fixed(self) -> bool:
        """True for a column written inside the record array (fixed width, no NULL)."""
        return self.copy_type in FIXED_TYPES and self.missing is None


def fixed_column(copy_type: str, values: Any, missing: Any = None) -> CopyColumn:
    """A fixed-width column; ``values`` cast (safely) to ``copy_type``'s binary form.

    Raises TypeError when the values do not fit the type (e.g. uint64 into int8).
    """
    dtype = np.dtype(FIXED_TYPES[copy_type])
    array = np.asarray(values)
    if array.dtype.kind == "b" and copy_type != "bool":
        raise TypeError(f"boolean values for a {copy_type} column")
    cast = array.astype(dtype, casting="same_kind" if array.dtype.kind == dtype.kind
                        else "safe")
    miss = None if missing is None else np.asarray(missing, dtype=bool)
    if miss is not None and not miss.any():
        miss = None
    return CopyColumn(copy_type, cast, miss)


def bytes_column(copy_type: str, values: Sequence[bytes | None]) -> CopyColumn:
    """A variable-width column (text as UTF-8 bytes, bytea) of bytes or None."""
    return CopyColumn(copy_type, values)


def _slices(buffer: bytes, width: int) -> list[bytes]:
    return [buffer[i:i + width] for i in range(0, len(buffer), width)]


def _fixed_as_bytes(column: CopyColumn, lo: int, hi: int) -> tuple[list[bytes], np.ndarray]:
    """A fixed-width column with NULLs, as variable-width pieces and lengths."""
    values = column.values[lo:hi]
    pieces = _slices(values.tobytes(), values.dtype.itemsize)
    missing = column.missing[lo:hi] if column.missing is not None else np.zeros(hi - lo, bool)
    for i in np.flatnonzero(missing).tolist():
        pieces[i] = b""
    return pieces, np.where(missing, -1, values.dtype.itemsize)


def _var_as_bytes(column: CopyColumn, lo: int, hi: int) -> tuple[list[bytes], np.ndarray]:
    values = column.values[lo:hi]
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    nulls = [i for i, v in enumerate(values) if v is None] if None in values else []
    for i in nulls:
        values[i] = b""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    lengths[nulls] = -1
    return values, lengths


def _block(columns: list[CopyColumn], lo: int, hi: int) -> bytes:
    n = hi - lo
    fixed = [c for c in columns if c.fixed]
    var = [c for c in columns if not c.fixed]
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for j, column in enumerate(fixed):
        fields += [(f"l{j}", ">i4"), (f"v{j}", FIXED_TYPES[column.copy_type])]
    pieces_of: list[tuple[list[bytes], np.ndarray]] = [
        _fixed_as_bytes(c, lo, hi) if c.copy_type in FIXED_TYPES else _var_as_bytes(c, lo, hi)
        for c in var]
    if var:
        fields.append(("next", ">i4"))
    head = np.empty(n, dtype=np.dtype(fields))
    head["count"] = len(columns)
    for j, column in enumerate(fixed):
        head[f"l{j}"] = column.values.dtype.itemsize
        head[f"v{j}"] = column.values[lo:hi]
    if not var:
        return head.tobytes()
    head["next"] = pieces_of[0][1]
    stride = 2 * len(var)
    joined: list[bytes] = [b""] * (n * stride)
    joined[0::stride] = _slices(head.tobytes(), head.dtype.itemsize)
    for j, (pieces, _) in enumerate(pieces_of):
        joined[2 * j + 1::stride] = pieces
        if j + 1 < len(var):
            joined[2 * j + 2::stride] = _slices(pieces_of[j + 1][1].astype(">i4").tobytes(), 4)
    return b"".join(joined)


def encode(columns: list[CopyColumn], rows: int, *, chunk_rows: int = _CHUNK_ROWS
           ) -> Iterator[bytes]:
    """The whole COPY stream for ``columns`` (signature, tuples, trailer), in blocks of
    ``chunk_rows`` rows, for ``Copy.write``.

    Each tuple holds the fixed-width NULL-free columns first, then the others, each group in
    the order given: the COPY statement lists its columns in :func:`copy_order`.
    """
    yield SIGNATURE
    for lo in range(0, rows, chunk_rows):
        yield _block(columns, lo, min(rows, lo + chunk_rows))
    yield TRAILER


def copy_order(columns: Sequence[CopyColumn]) -> list[int]:
    """Positions of ``columns`` with the fixed-width, NULL-free ones first (stable)."""
    return sorted(range(len(columns)), key=lambda i: not columns[i].fixed)
