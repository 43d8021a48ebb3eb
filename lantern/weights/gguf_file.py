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
        "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS".split()
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
            self._refuse_mixture_of_experts()
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

    def _refuse_mixture_of_experts(self) -> None:
        """A file with expert tensors (Mixtral-style `*_exps`, a router `ffn_gate_inp`) or an
        `{arch}.expert_count` above 0 is a mixture-of-experts model: say so, in one line, where
        a tensor of a dense model is looked for and is missing."""
        experts = sorted(n for n in self.tensors if n.endswith(("_exps.weight", "_shexp.weight"))
                         or ".ffn_gate_inp." in n)
        count = self.get(f"{self.architecture}.expert_count", 0)
        if not experts and not (isinstance(count, int) and count > 0):
            return
        from ..models import ARCHITECTURES

        what = f"expert tensors such as {experts[0]!r}" if experts else f"{self.architecture}.expert_count = {count}"
        raise UnsupportedModelError(
            f"{self.path}: this is a mixture-of-experts {self.architecture} model ({what}), which lantern "
            f"does not run; lantern runs dense {', '.join(sorted(ARCHITECTURES))} models"
        )

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each type the file holds (its quant mix)."""
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.tensor_type.name] = counts.get(info.tensor_type.name, 0) + 1
        return counts

    def parameter_count(self) -> int:
        return sum(int(info.n_elements) for info in self.tensors.values())


class _String(bytes):
    """A string item of a metadata array, shaped like the numpy part GGUFReader would make."""

    def tobytes(self) -> bytes:
        return self

    @property
    def nbytes(self) -> int:
        return len(self)


# ggml's limit on tensor dimensions (GGML_MAX_DIMS) and on element counts (int64_t ne).
GGML_MAX_DIMS = 4
INT64_MAX = 2**63 - 1


class _BadTensor(ValueError):
    """A tensor table entry that does not fit the file: `what` completes "tensor NAME ..."."""

    def __init__(self, name: str | None, what: str, *, truncated: bool = False):
        super().__init__(f"tensor {name!r} {what}" if name is not None else f"tensor table entry {what}")
        self.name = name
        self.what = what
        self.truncated = truncated


class _BadAlignment(ValueError):
    pass


class _Reader(GGUFReader):
    """gguf's memory-mapped reader with a fast path for metadata arrays and a checked tensor table.

    The stock reader builds several numpy views per array item, which takes seconds for a
    vocabulary of 50k tokens and 50k merges. Here a scalar array is one numpy view and a string
    array is walked with struct over the map. Fields come out exactly as the stock reader's.

    The stock reader adds each tensor's offset to the data section's start in uint64 (so an
    offset near 2**64 wraps round to point into the header) and never compares tensors with one
    another; `_build_tensors` here checks the whole table first (see `_check_tensor_table`).
    """

    _last_str = b""  # the last string read: the key of the field being read
    _alignment = 32  # GGUF_DEFAULT_ALIGNMENT

    @property
    def alignment(self) -> int:
        return self._alignment

    @alignment.setter
    def alignment(self, value) -> None:
        # Set from general.alignment before the data section is located; 0 would divide by zero.
        value = int(value)
        if value <= 0 or value & (value - 1):
            raise _BadAlignment(f"metadata general.alignment = {value} is not a power of two")
        self._alignment = value

    def _get(self, offset, dtype, count=1, override_order=None):
        # The stock reader returns a short array for a read past the end of the file and fails
        # later with numpy's words ("index 0 is out of bounds"); this says where and what.
        count = int(count)
        itemsize = np.dtype(dtype).itemsize
        if offset < 0 or offset + itemsize * count > len(self.data):
            raise ValueError(f"a read of {count} x {np.dtype(dtype).name} at byte {offset} runs past the end of "
                             f"the file")
        return super()._get(offset, dtype, count, override_order)

    def _build_fields(self, offs, count):
        try:
            return super()._build_fields(offs, count)
        except ValueError as exc:
            if "metadata" in str(exc):
                raise
            entry = sum(not key.startswith("GGUF.") for key in self.fields) + 1
            raise ValueError(f"metadata entry {entry} of the {int(count)} the header declares: {exc}") from None

    def _get_tensor_info_field(self, orig_offs: int):
        # The dimension count decides where the rest of the entry lies: a wrong one shifts every
        # later field, so it is checked before the stock reader walks on.
        try:
            _length, name = self._get_str(orig_offs)
            n_dims = self._get(orig_offs + 8 + len(name), np.uint32)
        except (IndexError, ValueError):
            raise _BadTensor(None, f"at byte {orig_offs} is cut off by the end of the file", truncated=True) from None
        label = bytes(name).decode("utf-8", "replace")
        if len(n_dims) == 1 and not 1 <= int(n_dims[0]) <= GGML_MAX_DIMS:
            raise _BadTensor(label, f"has {int(n_dims[0])} dimensions (ggml allows 1 to {GGML_MAX_DIMS})")
        try:
            return super()._get_tensor_info_field(orig_offs)
        except (IndexError, ValueError) as exc:
            raise _BadTensor(label, f"has a table entry cut off or corrupt ({exc})", truncated=True) from None

    def _build_tensors(self, start_offs: int, fields) -> None:
        _check_tensor_table(fields, int(start_offs), self.alignment, len(self.data))
        super()._build_tensors(start_offs, fields)

    def _get_str(self, offset: int):
        length, data = super()._get_str(offset)
        self._last_str = data
        return length, data

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        # The stock reader fails here with numpy's words (an index out of bounds, "not a valid
        # GGUFValueType"); these say which key, so that the error names it.
        key = bytes(self._last_str).decode("utf-8", "replace")
        try:
            GGUFValueType(int(raw_type))
        except ValueError:
            raise ValueError(f"metadata key {key!r} has unknown value type {int(raw_type)}") from None
        try:
            return self._field_parts(orig_offs, raw_type, key)
        except (IndexError, ValueError) as exc:
            if repr(key) in str(exc):
                raise
            raise ValueError(f"metadata key {key!r} is cut off or corrupt ({exc})") from None

    def _field_parts(self, orig_offs: int, raw_type: int, key: str):
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I" or sys.byteorder != "little":
            return super()._get_field_parts(orig_offs, raw_type)
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
            if offs + count * np.dtype(nptype).itemsize > len(self.data):
                raise ValueError(f"metadata array {key!r} declares {count} items, which run past the end of the file")
            values = self._get(offs, nptype, count)
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


def _check_tensor_table(fields, data_start: int, alignment: int, file_size: int) -> None:
    """Check every tensor's name, type, dimensions, offset and size, in Python integers (no
    wrap-around), against ggml's limits, the alignment, the end of the file and each other:
    what llama.cpp's gguf_init checks, without requiring its back-to-back layout."""
    extents: list[tuple[int, int, str]] = []
    names: set[str] = set()
    for index, field in enumerate(fields):
        _name_len, name_data, n_dims, dims, raw_type, offset = field.parts
        try:
            name = bytes(name_data).decode("utf-8")
        except UnicodeDecodeError:
            raise _BadTensor(f"#{index}", "has a name that is not UTF-8") from None
        if name in names:
            raise _BadTensor(name, "appears twice in the tensor table")
        names.add(name)
        shape = [int(d) for d in dims.tolist()]
        if not 1 <= int(n_dims[0]) <= GGML_MAX_DIMS or len(shape) != int(n_dims[0]):
            raise _BadTensor(name, f"has {int(n_dims[0])} dimensions (ggml allows 1 to {GGML_MAX_DIMS})")
        try:
            qtype = GGMLQuantizationType(int(raw_type[0]))
        except ValueError:
            raise _BadTensor(name, f"has unknown tensor type {int(raw_type[0])}") from None
        if qtype not in GGML_QUANT_SIZES:
            raise _BadTensor(name, f"has tensor type {qtype.name}, which has no known block size")
        block, type_size = GGML_QUANT_SIZES[qtype]
        elements = 1
        for d in shape:
            elements *= d
        if elements > INT64_MAX:
            raise _BadTensor(name, f"has dimensions {shape} whose product overflows 64 bits")
        if shape[0] % block:
            raise _BadTensor(name, f"has a row of {shape[0]} elements, not a whole number of "
                                   f"{qtype.name} blocks of {block}")
        rel = int(offset[0])
        if rel % alignment:
            raise _BadTensor(name, f"has offset {rel}, not a multiple of the file's alignment {alignment}")
        start = data_start + rel
        end = start + elements // block * type_size
        if start >= 2**64 or end >= 2**64:
            raise _BadTensor(name, f"has offset {rel}, which wraps past 2**64")
        if end > file_size:
            raise _BadTensor(name, f"ends at byte {end}, past the end of the file ({file_size} bytes)",
                             truncated=True)
        extents.append((start, end, name))
    extents.sort()
    reach, reach_name = 0, ""  # the furthest end of the tensors before, and whose it is
    for start, end, name in extents:
        if start < reach and end > start:
            raise _BadTensor(name, f"overlaps tensor {reach_name!r} (its bytes {start}..{end} against ..{reach})")
        if end > reach:
            reach, reach_name = end, name


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
    except _BadTensor as exc:
        if exc.truncated:
            raise ModelFileError(f"{path}: file is truncated ({exc}); download it again") from None
        raise ModelFileError(f"{path}: {exc}; the file is corrupt, download it again") from None
    except _BadAlignment as exc:
        raise ModelFileError(f"{path}: {exc}; the file is corrupt, download it again") from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, struct.error) as exc:
        size = path.stat().st_size
        raise ModelFileError(
            f"{path}: GGUF header is truncated or corrupt ({size} bytes; {exc}); download it again"
        ) from None
