"""Open and validate a GGUF file: metadata access and checked, zero-copy tensor access.

Reading goes through the reference reader (`gguf.GGUFReader`), which memory-maps the file:
tensors handed out here are views of the page cache, not copies, so a 2.4 GB model costs
nothing until its pages are touched.
"""

from __future__ import annotations

import os
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from ..errors import ModelFileError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"

# The tensor types lantern runs. Anything else in a file is refused when that tensor is used.
SUPPORTED_TYPES = frozenset(
    GGMLQuantizationType[name]
    for name in (
        "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K".split()
    )
)


@dataclass(frozen=True)
class TensorData:
    """One tensor of a GGUF file, still in its on-disk encoding.

    `shape` is in PyTorch order (rows first: a Linear weight is [out, in]); `raw` is the
    memory-mapped bytes (uint8, one row of blocks per tensor row) or, for F32/F16, the values.
    """

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: torch.Tensor

    @property
    def type_name(self) -> str:
        return self.type.name

    @property
    def nbytes(self) -> int:
        return self.raw.numel() * self.raw.element_size()


class GGUFFile:
    """A validated GGUF file. Raises ModelFileError with a one-line message on bad input."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.reader = _open_reader(self.path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._values: dict[str, Any] = {}
        self._check_tensor_extents()

    # ----- metadata -----------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value of metadata `key` as a Python scalar, string or list, or `default`."""
        if key in self._values:
            return self._values[key]
        field = self.reader.get_field(key)
        if field is None:
            return default
        try:
            value = field.contents()
        except Exception as exc:  # a malformed field is a corrupt file, not a lantern bug
            raise ModelFileError(f"{self.path}: metadata key {key!r} is unreadable ({exc})") from None
        if isinstance(value, np.generic):
            value = value.item()
        self._values[key] = value
        return value

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(f"{self.path}: GGUF metadata has no general.architecture")
        return arch

    @property
    def name(self) -> str:
        return str(self.get("general.name", self.path.stem))

    # ----- tensors ------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str, shape: Iterable[int] | None = None) -> TensorData:
        """The tensor `name`, checked for presence, type and (when given) shape."""
        info = self.tensors.get(name)
        if info is None:
            raise ModelFileError(
                f"{self.path}: tensor {name!r} is missing; the file is incomplete or not a "
                f"{self.architecture} model"
            )
        actual = tuple(int(d) for d in reversed(info.shape.tolist()))
        if shape is not None and actual != tuple(shape):
            raise ModelFileError(
                f"{self.path}: tensor {name!r} has shape {list(actual)}, expected {list(shape)} "
                f"from the model's metadata"
            )
        if info.tensor_type not in SUPPORTED_TYPES:
            supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
            raise UnsupportedModelError(
                f"{self.path}: tensor {name!r} has type {info.tensor_type.name}, which lantern "
                f"does not support (supported: {supported}); re-quantize the model to one of these"
            )
        with warnings.catch_warnings():
            # The map is read-only and lantern never writes to weights.
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.from_numpy(info.data)
        if info.tensor_type == GGMLQuantizationType.BF16 and raw.dtype == torch.uint8:
            raw = raw.view(torch.bfloat16)
        return TensorData(name, info.tensor_type, actual, raw)

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each type the file holds (its quant mix)."""
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.tensor_type.name] = counts.get(info.tensor_type.name, 0) + 1
        return counts

    def parameter_count(self) -> int:
        return sum(int(info.n_elements) for info in self.tensors.values())

    def _check_tensor_extents(self) -> None:
        size = self.path.stat().st_size
        for info in self.tensors.values():
            block, type_size = GGML_QUANT_SIZES[info.tensor_type]
            end = info.data_offset + info.n_elements // block * type_size
            if end > size:
                raise ModelFileError(
                    f"{self.path}: file is truncated (tensor {info.name!r} ends at byte {end}, "
                    f"file has {size}); download it again"
                )


class _String(bytes):
    """A string item of a metadata array, shaped like the numpy part GGUFReader would make."""

    def tobytes(self) -> bytes:
        return self

    @property
    def nbytes(self) -> int:
        return len(self)


class _Reader(GGUFReader):
    """gguf's memory-mapped reader with a fast path for metadata arrays.

    The stock reader builds several numpy views per array item, which takes seconds for a
    vocabulary of 50k tokens and 50k merges. Here a scalar array is one numpy view and a string
    array is walked with struct over the map. Fields come out exactly as the stock reader's.
    """

    _last_str = b""  # the last string read: the key of the field being read

    def _get_str(self, offset: int):
        length, data = super()._get_str(offset)
        self._last_str = data
        return length, data

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I" or sys.byteorder != "little":
            return super()._get_field_parts(orig_offs, raw_type)
        key = bytes(self._last_str).decode("utf-8", "replace")
        offs = orig_offs
        raw_itype = self._get(offs, np.uint32)
        alen = self._get(offs + 4, np.uint64)
        offs += 12
        count = int(alen[0])
        item_type = GGUFValueType(int(raw_itype[0]))
        types = [GGUFValueType.ARRAY, item_type]
        nptype = self.gguf_scalar_to_np.get(item_type)
        size = len(self.data)
        if nptype is not None:
            values = self._get(offs, nptype, count)
            if len(values) != count:
                raise ValueError(f"metadata array {key!r} declares {count} items but the file ends after {len(values)}")
            return offs + int(values.nbytes) - orig_offs, [raw_itype, alen, values], [2], types
        if item_type != GGUFValueType.STRING:
            return super()._get_field_parts(orig_offs, raw_type)
        buffer = memoryview(self.data)
        parts: list = [raw_itype, alen]
        for i in range(count):
            if offs + 8 > size:
                raise ValueError(f"metadata array {key!r}: item {i} of {count} starts past the end of the file")
            (length,) = struct.unpack_from("<Q", buffer, offs)
            if offs + 8 + length > size:
                raise ValueError(f"metadata array {key!r}: item {i} of {count} ({length} bytes) runs past the end "
                                 "of the file")
            parts.append(_String(buffer[offs + 8 : offs + 8 + length]))
            offs += 8 + length
        return offs - orig_offs, parts, list(range(2, 2 + count)), types


def _open_reader(path: Path) -> GGUFReader:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file; check the path or use a model alias such as 'smollm2'")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a .gguf file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if len(magic) < 4:
        raise ModelFileError(f"{path}: file is empty or truncated; it is not a usable GGUF model")
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF'); lantern loads .gguf models"
        )
    try:
        return _Reader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, struct.error) as exc:
        size = path.stat().st_size
        raise ModelFileError(
            f"{path}: GGUF header is truncated or corrupt ({size} bytes; {exc}); download it again"
        ) from None
