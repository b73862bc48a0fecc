"""Read safetensors files with NumPy alone: header parsing, memory mapping, dtype conversion.

The format is an 8-byte little-endian header length N, N bytes of JSON naming each tensor's
dtype, shape and byte range, then the data. safetensors' own NumPy API cannot return BF16 or
F8_E4M3 without extra packages, so this module parses the header itself and converts those
dtypes to float32 (BF16 exactly; FP8 E4M3 through a 256-entry table).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minillm.errors import CheckpointError

# safetensors dtype name -> NumPy dtype of the stored bits
STORAGE_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library rejects larger headers too


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen BF16 bit patterns (uint16) to float32; exact, because BF16 is the top half of an F32."""
    return np.left_shift(raw, 16, dtype=np.uint32).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to BF16 bit patterns (uint16), round-to-nearest-even, NaN kept NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _e4m3_table() -> np.ndarray:
    """float32 value of each FP8 E4M3 (e4m3fn) byte: bias 7, no infinities, 0x7F/0xFF are NaN."""
    table = np.empty(256, dtype=np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
        if exponent == 0xF and mantissa == 0x7:
            table[byte] = np.nan
        elif exponent == 0:
            table[byte] = sign * 2.0**-6 * mantissa / 8
        else:
            table[byte] = sign * 2.0 ** (exponent - 7) * (1 + mantissa / 8)
    return table


E4M3_TO_F32 = _e4m3_table()


def dequantize_fp8_blocks(weight: np.ndarray, scale_inv: np.ndarray, block: int = 128) -> np.ndarray:
    """DeepSeek-V3 FP8 weights: W[i, j] = e4m3(Wq[i, j]) * scale_inv[i // 128, j // 128].

    Despite its name, weight_scale_inv multiplies: it is the dequantization scale (amax / 448).
    """
    rows, cols = weight.shape
    expected = (-(-rows // block), -(-cols // block))
    if scale_inv.shape != expected:
        raise CheckpointError(
            f"FP8 scale shape {scale_inv.shape} does not fit weight shape {weight.shape}: "
            f"expected {expected} for {block}x{block} blocks"
        )
    scales = np.repeat(np.repeat(scale_inv.astype(np.float32), block, 0), block, 1)[:rows, :cols]
    return E4M3_TO_F32[weight] * scales


class SafetensorsFile:
    """One memory-mapped .safetensors file. `tensor(name)` returns a float32 (or integer) array."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointError(f"cannot open weights file {self.path}: {exc.strerror}") from None
        size = self.path.stat().st_size
        self.tensors = self._read_header(size)
        # an empty data section cannot be mapped; every tensor is then empty too
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def _read_header(self, size: int) -> dict[str, TensorInfo]:
        where = f"weights file {self.path}"
        if size < 8:
            raise CheckpointError(f"{where} is truncated ({size} bytes): re-download or re-export it")
        (header_len,) = struct.unpack("<Q", self._file.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{where} is corrupt or truncated: header length {header_len} does not fit in {size} bytes"
            )
        try:
            header = json.loads(self._file.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{where} has a corrupt header (not JSON): re-download or re-export it") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{where} has a corrupt header (not a JSON object)")

        data_start = 8 + header_len
        tensors = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            tensors[name] = self._check_entry(name, meta, data_start, size)
        return tensors

    def _check_entry(self, name: str, meta: object, data_start: int, size: int) -> TensorInfo:
        where = f"tensor {name!r} in {self.path}"
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{where} has a malformed header entry: {meta!r}") from None
        if dtype not in STORAGE_DTYPES:
            raise CheckpointError(f"{where} has unsupported dtype {dtype!r}; supported: {', '.join(STORAGE_DTYPES)}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"{where} has an invalid shape {list(shape)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * STORAGE_DTYPES[dtype].itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and end - begin == nbytes):
            raise CheckpointError(
                f"{where} is corrupt: byte range {begin}..{end} does not hold {dtype} {list(shape)} ({nbytes} bytes)"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{self.path} is truncated: {where} ends at byte {data_start + end} but the file has {size} bytes; "
                "re-download or re-export it"
            )
        return TensorInfo(dtype, shape, data_start + begin, data_start + end)

    def raw(self, name: str) -> np.ndarray:
        """Return the stored bits as a read-only array view of the mapped file (no copy)."""
        info = self.tensors[name]
        storage = STORAGE_DTYPES[info.dtype]
        if info.end == info.start:
            return np.zeros(info.shape, dtype=storage)
        return np.frombuffer(self._map, dtype=storage, count=(info.end - info.start) // storage.itemsize,
                             offset=info.start).reshape(info.shape)

    def tensor(self, name: str) -> np.ndarray:
        """Return the tensor converted for compute: floats become float32 (a new array), integers are kept."""
        info = self.tensors[name]
        raw = self.raw(name)
        if info.dtype == "BF16":
            return bf16_to_f32(raw)
        if info.dtype == "F8_E4M3":
            return E4M3_TO_F32[raw]
        if info.dtype in ("F32", "F16", "F64"):
            return raw.astype(np.float32)
        return np.array(raw)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # arrays still view the map (Engram tables): it closes when the last one goes
            self._map = None
        self._file.close()


class Checkpoint:
    """All weight files of a checkpoint directory: model.safetensors, or the shards listed in
    model.safetensors.index.json."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.is_file():
            files = self._shards_from_index(index)
        elif single.is_file():
            files = [single]
        else:
            found = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not found:
                raise CheckpointError(
                    f"no model.safetensors or model.safetensors.index.json in {self.directory}"
                )
            files = [self.directory / name for name in found]

        self.files = [SafetensorsFile(path) for path in files]
        self._owner: dict[str, SafetensorsFile] = {}
        for file in self.files:
            for name in file.tensors:
                if name in self._owner:
                    raise CheckpointError(f"tensor {name!r} appears in both {self._owner[name].path} and {file.path}")
                self._owner[name] = file

    def _shards_from_index(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is corrupt: expected a JSON object with a 'weight_map'") from None
        missing = [name for name in shard_names if not (self.directory / name).is_file()]
        if missing:
            raise CheckpointError(f"shards listed in {index} are missing: {', '.join(missing)}")
        return [self.directory / name for name in shard_names]

    @property
    def names(self) -> set[str]:
        return set(self._owner)

    @property
    def file_bytes(self) -> int:
        """Size of all weight files: what the memory map makes addressable."""
        return sum(file.path.stat().st_size for file in self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].tensors[name].shape

    def dtype(self, name: str) -> str:
        return self._owner[name].tensors[name].dtype

    def nbytes(self, name: str) -> int:
        info = self._owner[name].tensors[name]
        return info.end - info.start

    def itemsize(self, name: str) -> int:
        return STORAGE_DTYPES[self.dtype(name)].itemsize

    def raw(self, name: str) -> np.ndarray:
        """Return the stored bits of a tensor as a read-only view of its mapped file (no copy)."""
        return self._owner[name].raw(name)

    def tensor_row(self, name: str, index: int) -> np.ndarray:
        """float32 copy of tensor[index] along the first axis, converting only that slice."""
        file = self._owner[name]
        dtype = file.tensors[name].dtype
        raw = file.raw(name)[index]
        if dtype == "BF16":
            return bf16_to_f32(raw)
        if dtype in ("F32", "F16", "F64"):
            return raw.astype(np.float32)
        raise CheckpointError(f"tensor {name!r} of dtype {dtype} cannot be read one expert at a time")

    def tensor(self, name: str) -> np.ndarray:
        """float32 tensor; FP8 weights are dequantized with their `<name>_scale_inv` companion."""
        file = self._owner[name]
        if file.tensors[name].dtype == "F8_E4M3":
            scale_name = name + "_scale_inv"
            if scale_name not in self._owner:
                raise CheckpointError(f"FP8 tensor {name!r} has no {scale_name!r} to dequantize it with")
            try:
                return dequantize_fp8_blocks(file.raw(name), self._owner[scale_name].tensor(scale_name))
            except CheckpointError as exc:
                raise CheckpointError(f"tensor {name!r}: {exc}") from None
        return file.tensor(name)

    def close(self) -> None:
        for file in self.files:
            file.close()


_NAME_OF_STORAGE = {np.dtype(v): k for k, v in reversed(STORAGE_DTYPES.items())}  # uint8 -> "U8"


def save_file(tensors: dict[str, np.ndarray], path: str | Path, dtypes: dict[str, str] | None = None) -> None:
    """Write arrays as a safetensors file, for tests and tools.

    `dtypes` may name a stored dtype per tensor: "BF16" rounds a float array to BF16, and any
    other name (such as "F8_E4M3" for a uint8 array) labels the array's bits as that dtype. The
    file is written under a temporary name and renamed, so an existing file is never half-written.
    """
    dtypes = dtypes or {}
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = dtypes.get(name) or _NAME_OF_STORAGE.get(array.dtype.newbyteorder("<"))
        if dtype == "BF16" and array.dtype != np.uint16:
            array = f32_to_bf16(array)
        if dtype not in STORAGE_DTYPES or STORAGE_DTYPES[dtype].itemsize != array.dtype.itemsize:
            raise ValueError(f"cannot store tensor {name!r} of NumPy dtype {array.dtype} as {dtype}")
        blob = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the data section to 8 bytes
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)))
        out.write(header_bytes)
        for blob in blobs:
            out.write(blob)
    tmp.replace(path)
