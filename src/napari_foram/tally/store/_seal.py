"""Row seals: every committed row bound to its place (sample and row index).

A chunk file copied in from another sample, or from another place of the same array,
decodes well and passes zstd's checksum: the checksum says the bytes are the bytes that
were written, not where they belong. A seal does. Each sample keeps an array
``row_seal`` of two 64-bit digests per row:

- column 0 digests the row's crop (CRC-32 and Adler-32 of its 224 x 224 x 3 bytes);
- column 1 digests the sample id, the row index, the row's value in every specimen
  column (the list is kept in the sample attribute ``row_seal_columns``, so a column
  added later does not change what old seals cover) and column 0.

A swapped chunk of any column, of the crops or of the seals themselves then disagrees
with the seals of its rows (`seal_mismatches`). Per-class columns are digested without
their trailing zeros and NaNs: adding classes pads them with zeros, which must not break a
seal. A seal of 0 means "not sealed" (rows of stores written before seals existed); they
are not checked. The kept features are a cache outside the commit and are not sealed.

In-place changes (a review, a reclassification, a repair) reseal the rows they change.
The writer first records the rows in the sample attribute ``resealing``, writes, reseals
and clears it in the attrs write that ends the change; a writer killed in between leaves
the marker, `check` skips those rows and the next writer reseals them.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import CROP_SIZE

from ._kept import PER_CLASS_ARRAYS
from ._schema import _COLUMNS, _ROWS_PER_CHUNK

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Name of the seal array in a sample group.
SEAL_ARRAY = "row_seal"
#: Sample attribute listing the columns a seal covers, in order.
SEAL_COLUMNS_ATTR = "row_seal_columns"
#: Sample attribute holding rows being changed in place ("all" or a list of rows).
RESEALING_ATTR = "resealing"
#: The seal of a row that was never sealed.
UNSEALED = 0
#: Rows of crops read at a time when checking seals (about 38 MB).
_CROP_BLOCK = 256


def sealed_columns(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The specimen columns a sample's seals cover (all current ones for a new sample)."""
    names = attrs.get(SEAL_COLUMNS_ATTR)
    if isinstance(names, list) and all(isinstance(n, str) and n in _COLUMNS for n in names):
        return tuple(names)
    return tuple(_COLUMNS)


def create_seal_array(group: Any, rows: int) -> Any:
    """The sample's seal array, `rows` rows of UNSEALED (chunks written out, so every
    committed row has its chunk file), and the attribute naming the sealed columns.
    """
    from ._files import _compressor

    arr = group.create_array(
        SEAL_ARRAY,
        shape=(rows, 2),
        chunks=(_ROWS_PER_CHUNK, 2),
        dtype="uint64",
        fill_value=UNSEALED,
        compressors=_compressor(),
    )
    if rows:
        arr.with_config({"write_empty_chunks": True})[:rows] = UNSEALED
    group.update_attributes({SEAL_COLUMNS_ATTR: list(_COLUMNS)})
    return arr


def _digest(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    value = int.from_bytes(h.digest(), "little")
    return value or 1  # 0 is reserved for "not sealed"


def _crop_digest(crop: np.ndarray) -> int:
    # CRC-32 and Adler-32 side by side (64 bits): three times faster than blake2b on a
    # 150 kB crop, which made sealing half of an append's time. The row seal (blake2b)
    # binds this digest to its place; this one only has to tell crops apart.
    data = np.ascontiguousarray(crop, dtype=np.uint8).data.cast("B")
    value = (zlib.crc32(data) << 32) | zlib.adler32(data)
    return value or 1


def crop_digests(crops: np.ndarray | None, n: int) -> np.ndarray:
    """Digest of each crop (`n` rows of zeros when there are no crops: what is stored)."""
    if crops is None:
        zero = _crop_digest(np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8))
        return np.full(n, zero, dtype=np.uint64)
    return np.array([_crop_digest(c) for c in crops], dtype=np.uint64)


def _trailing_width(values: np.ndarray) -> np.ndarray:
    """Per row, the length without trailing zeros and NaNs."""
    keep = values != 0
    if np.issubdtype(values.dtype, np.floating):
        keep &= ~np.isnan(values)
    k = values.shape[1]
    any_kept = keep.any(axis=1)
    last = k - np.argmax(keep[:, ::-1], axis=1)
    return np.where(any_kept, last, 0)


def row_seals(
    sample_id: str,
    rows: np.ndarray,
    columns: Mapping[str, np.ndarray],
    crop_digest: np.ndarray,
    names: Sequence[str],
) -> np.ndarray:
    """Seals of `rows` of `sample_id`, from their values in `columns` (one entry per row
    for every name in `names`) and their crop digests.
    """
    rows = np.asarray(rows, dtype=np.int64)
    fixed: list[np.ndarray] = []
    per_class: list[tuple[np.ndarray, np.ndarray]] = []
    for name in names:
        dtype = np.dtype(_COLUMNS[name][0])
        values = np.ascontiguousarray(columns[name], dtype=dtype).reshape(len(rows), -1)
        if name in PER_CLASS_ARRAYS:
            per_class.append((values, _trailing_width(values)))
        else:
            fixed.append(values.view(np.uint8).reshape(len(rows), -1))
    fixed.append(np.ascontiguousarray(crop_digest, dtype="<u8").view(np.uint8).reshape(-1, 8))
    table = np.concatenate(fixed, axis=1) if fixed else np.zeros((len(rows), 0), np.uint8)
    place = sample_id.encode("utf-8") + b"\0"
    out = np.empty(len(rows), dtype=np.uint64)
    for i, row in enumerate(rows.tolist()):
        parts = [place, int(row).to_bytes(8, "little"), table[i].tobytes()]
        parts += [values[i, : width[i]].tobytes() for values, width in per_class]
        out[i] = _digest(*parts)
    return out


def seal_rows(
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any],
    sample_id: str,
    rows: np.ndarray | slice,
    *,
    crops: np.ndarray | None = None,
) -> None:
    """Seal `rows` (indices, or a slice of committed rows) from what the arrays hold now;
    `crops` are their new crops when the caller has them (else the kept crop digests).
    """
    seal = arrays[SEAL_ARRAY]
    idx = (
        np.arange(*rows.indices(seal.shape[0]))
        if isinstance(rows, slice)
        else np.asarray(rows, dtype=np.int64)
    )
    if idx.size == 0:
        return
    names = sealed_columns(attrs)
    if isinstance(rows, slice):
        values = {name: arrays[name][rows] for name in names}
        kept = seal[rows][:, 0]
    else:
        values = {name: arrays[name].oindex[idx] for name in names}
        kept = seal.oindex[idx][:, 0]
    digests = crop_digests(crops, idx.size) if crops is not None else kept
    if crops is None and np.any(digests == UNSEALED):
        # Rows written before seals existed: digest their crops now.
        unsealed = np.flatnonzero(digests == UNSEALED)
        digests = digests.copy()
        digests[unsealed] = crop_digests(arrays["crops"].oindex[idx[unsealed]], unsealed.size)
    seals = row_seals(sample_id, idx, values, digests, names)
    both = np.stack([digests.astype(np.uint64), seals], axis=1)
    if isinstance(rows, slice):
        seal[rows] = both
    else:
        seal.oindex[idx] = both


def resealing_rows(attrs: Mapping[str, Any], n: int) -> np.ndarray:
    """Rows an interrupted in-place change left unsealed (see the module's docstring)."""
    marker = attrs.get(RESEALING_ATTR)
    if marker == "all":
        return np.arange(n)
    if isinstance(marker, list):
        rows = np.array([r for r in marker if isinstance(r, int) and 0 <= r < n], np.int64)
        return np.unique(rows)
    return np.zeros(0, dtype=np.int64)


def marker_for(rows: np.ndarray, n: int) -> str | list[int]:
    """The `resealing` marker for `rows` of `n` ("all" when it would be long)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    return "all" if rows.size > 1024 or rows.size >= n else [int(r) for r in rows]


def seal_mismatches(group: Any, sample_id: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose crop disagrees with its digest, rows whose seal disagrees), among the
    `n` committed rows of a sample group; unsealed rows and rows being resealed are not
    checked. Empty when the sample has no seal array (written before seals existed).
    """
    none = np.zeros(0, dtype=np.int64)
    if SEAL_ARRAY not in group or n == 0:
        return none, none
    seal = group[SEAL_ARRAY][:n]
    skip = np.zeros(n, dtype=bool)
    skip[resealing_rows(group.attrs, n)] = True
    names = sealed_columns(group.attrs)
    check = np.flatnonzero((seal[:, 1] != UNSEALED) & ~skip)
    values = {name: group[name][:n][check] for name in names}
    bad_seal = check[row_seals(sample_id, check, values, seal[check, 0], names) != seal[check, 1]]
    crops = group["crops"]
    with_digest = (seal[:, 0] != UNSEALED) & ~skip
    bad_crop: list[np.ndarray] = []
    for start in range(0, n, _CROP_BLOCK):
        stop = min(start + _CROP_BLOCK, n)
        wanted = np.flatnonzero(with_digest[start:stop])
        if wanted.size == 0:
            continue
        found = crop_digests(crops[start:stop][wanted], wanted.size)
        bad_crop.append(start + wanted[found != seal[start:stop, 0][wanted]])
    return (np.concatenate(bad_crop) if bad_crop else none), bad_seal
