"""A small, dependency-free reader/writer of the safetensors format.

Layout (the public format): 8-byte little-endian header length N, N bytes of JSON header
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}``, padded with
spaces to a multiple of 8), then the raw little-endian tensor bytes, offsets relative to that data section.

netspec adds a SHA-256 of the header and data under the metadata key ``netspec.sha256``; when present it is
verified on load (and removed from the returned metadata), so a torn or corrupted file is reported, never
silently loaded.  Nothing in this format is executable: loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator

import torch

from .atomic import atomic_write
from .errors import CheckpointError

CHECKSUM_KEY = "netspec.sha256"
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_BY_NAME = {v: k for k, v in _DTYPES.items()}


def _raw(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in little-endian order (a view where possible)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    data = t.view(torch.uint8).numpy() if t.numel() else b""
    if sys.byteorder != "little" and t.element_size() > 1:  # pragma: no cover - big-endian hosts
        data = t.numpy().byteswap().view("u1")
    return memoryview(data).cast("B") if len(data) else memoryview(b"")


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[dict, list[memoryview]]:
    header: dict = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"safetensors metadata must map str to str, got {k!r}: {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    chunks: list[memoryview] = []
    offset = 0
    for name, tensor in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' cannot be a tensor name")
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {tensor.dtype} has no safetensors code")
        raw = _raw(tensor)
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    return header, chunks


def _digest(header: dict, chunks: Iterator) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None, *, checksum: bool = True) -> None:
    """Write ``tensors`` (CPU or not; any layout) and ``metadata`` to ``path`` atomically.

    ``checksum`` adds ``netspec.sha256`` to the metadata (verified by :func:`load_safetensors`).
    """
    header, chunks = _header(tensors, metadata)
    if checksum:
        header.setdefault("__metadata__", {})[CHECKSUM_KEY] = _digest(header, chunks)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_write(path) as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for chunk in chunks:
            fh.write(chunk)


def _fail(path, message: str) -> CheckpointError:
    return CheckpointError(f"{os.fspath(path)}: {message}")


def parse_safetensors(data: bytes | memoryview, path: str | os.PathLike = "<bytes>"
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Decode a whole safetensors file held in memory (see :func:`load_safetensors`)."""
    view = memoryview(data)
    if len(view) < 8:
        raise _fail(path, f"too short for a safetensors file ({len(view)} bytes)")
    (size,) = struct.unpack("<Q", view[:8])
    try:
        if size > min(MAX_HEADER_BYTES, len(view) - 8):
            raise ValueError("bad header length, or the file is truncated")
        header = json.loads(bytes(view[8:8 + size]).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        if bytes(view[:1]) == b"\x80" or bytes(view[:4]) == b"PK\x03\x04":
            raise _fail(path, "this looks like a pickle/torch.save file, not safetensors; netspec refuses to unpickle "
                              "(it could run arbitrary code)") from None
        raise _fail(path, f"not a safetensors file ({exc})") from None
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "safetensors __metadata__ is not an object")
    body = view[8 + size:]
    tensors: dict[str, torch.Tensor] = {}
    spans = []
    try:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _BY_NAME[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
            count = 1
            for d in shape:
                count *= d
            itemsize = torch.empty((), dtype=dtype).element_size()
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(body) or end - begin != count * itemsize:
                raise ValueError(f"tensor {name!r} has inconsistent offsets or shape")
            spans.append((begin, end))
            buf = bytearray(body[begin:end])
            if dtype == torch.bool:
                t = torch.frombuffer(buf, dtype=torch.uint8).to(torch.bool) if buf else torch.empty(0, dtype=dtype)
            else:
                t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            tensors[name] = t.reshape(shape)
    except KeyError as exc:
        raise _fail(path, f"unsupported or missing safetensors field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"damaged safetensors header: {exc}") from None
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise _fail(path, f"damaged safetensors file: bytes {covered}..{begin} of the data belong to no tensor")
        covered = end
    if covered != len(body):
        # what the safetensors format requires (its reference reader refuses it too): padding or a cut-and-paste
        raise _fail(path, f"damaged safetensors file: {len(body) - covered} bytes after the last tensor")
    expected = metadata.pop(CHECKSUM_KEY, None)
    if expected is not None:
        if not metadata:
            header.pop("__metadata__", None)
        actual = _digest(header, (body[b:e] for b, e in spans))
        if actual != expected:
            raise _fail(path, "checksum mismatch: the file is corrupt or was modified")
    return tensors, dict(metadata)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read ``path``: ``(tensors, metadata)``.  Raises :class:`~netspec.errors.CheckpointError` for a file
    that is not safetensors, is truncated, or fails its ``netspec.sha256`` checksum."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_safetensors(data, path)


__all__ = ["CHECKSUM_KEY", "load_safetensors", "parse_safetensors", "save_safetensors"]
