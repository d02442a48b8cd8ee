"""safetensors files through the ``safetensors`` package, with netspec's checksum and untrusted-file checks.

Writing uses ``safetensors.torch.save_file`` (straight from the tensors' memory, through a temporary file
that atomically replaces the target); reading uses ``safe_open``: tensors are memory-mapped from the file,
not read and copied.  Any safetensors file reads here, and the files netspec writes read with the plain
package (netspec's information is ``str -> str`` metadata, as the format allows).

netspec adds a SHA-256 under the metadata key ``netspec.content_sha256``: over the metadata and every tensor's
name, dtype, shape and bytes, in name order, so it does not depend on how a writer lays out the file.
It is verified on load (and removed from the returned metadata), so a torn or corrupted file is reported,
never silently loaded.  Files written before netspec used the package carry ``netspec.sha256`` (over the
header as laid out and the data section); they are verified that way.  Before the package sees a file, its
header is checked here, so that a damaged or hostile file gets an error saying what is wrong with it.
Nothing in this format is executable: loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Mapping

import torch

from .atomic import atomic_path
from .errors import CheckpointError

CHECKSUM_KEY = "netspec.content_sha256"
LEGACY_CHECKSUM_KEY = "netspec.sha256"  # layout-based; verified on files netspec wrote before
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors package's own limit

# bytes per element of the dtype codes the format defines (what a file may hold)
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "C64": 8}


def _little_endian_bytes(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes as the format stores them (little-endian)."""
    if not tensor.numel():
        return memoryview(b"")
    flat = tensor.reshape(-1)
    if sys.byteorder != "little" and tensor.element_size() > 1:  # pragma: no cover - big-endian hosts
        return memoryview(flat.numpy().byteswap().view("u1"))
    return memoryview(flat.view(torch.uint8).numpy())


def content_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The SHA-256 stored under :data:`CHECKSUM_KEY`: metadata (without the checksum keys) and tensors."""
    listing = {"metadata": {k: v for k, v in metadata.items() if k not in (CHECKSUM_KEY, LEGACY_CHECKSUM_KEY)},
               "tensors": {name: [str(t.dtype), list(t.shape)] for name, t in tensors.items()}}
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        digest.update(_little_endian_bytes(tensors[name]))
    return digest.hexdigest()


def _prepared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors, none sharing memory (the package refuses shared storage: a tied parameter
    is stored once per name, as the state_dict lists it)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if name == "__metadata__":
            raise CheckpointError("'__metadata__' cannot be a tensor name")
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            storages.add(ptr)
        out[name] = t
    return out


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None, *, checksum: bool = True) -> None:
    """Write ``tensors`` (CPU or not; any layout) and ``metadata`` to ``path`` atomically.

    ``checksum`` adds :data:`CHECKSUM_KEY` to the metadata (verified by :func:`load_safetensors`).
    """
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CheckpointError(f"safetensors metadata must map str to str, got {k!r}: {type(v).__name__}")
    prepared = _prepared(tensors)
    if checksum:
        meta[CHECKSUM_KEY] = content_digest(prepared, meta)
    with atomic_path(path) as tmp:
        save_file(prepared, tmp, meta or None)


def _fail(path, message: str) -> CheckpointError:
    return CheckpointError(f"{os.fspath(path)}: {message}")


def _parse_header(head: bytes, read_header, file_size: int, path) -> tuple[dict, int]:
    """Check a safetensors header: ``(header, data offset)``, or a :class:`CheckpointError` that says what
    is wrong.  ``head`` is the file's first 8 bytes, ``read_header(n)`` returns the next n."""
    if len(head) < 8:
        raise _fail(path, f"too short for a safetensors file ({file_size} bytes)")
    (size,) = struct.unpack("<Q", head[:8])
    try:
        if size > min(MAX_HEADER_BYTES, file_size - 8):
            raise ValueError("bad header length, or the file is truncated")
        header = json.loads(read_header(size).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
            raise _fail(path, "this looks like a pickle/torch.save file, not safetensors; netspec refuses to unpickle "
                              "(it could run arbitrary code)") from None
        raise _fail(path, f"not a safetensors file ({exc})") from None
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "safetensors __metadata__ is not an object of strings")
    data_bytes = file_size - 8 - size
    spans = []
    try:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            item = _ITEM_BYTES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
            count = 1
            for d in shape:
                count *= d
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_bytes or end - begin != count * item:
                raise ValueError(f"tensor {name!r} has inconsistent offsets or shape")
            spans.append((begin, end))
    except KeyError as exc:
        raise _fail(path, f"unsupported or missing safetensors field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"damaged safetensors header: {exc}") from None
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise _fail(path, f"damaged safetensors file: bytes {covered}..{begin} of the data belong to no tensor")
        covered = end
    if covered != data_bytes:
        # what the safetensors format requires (its reference reader refuses it too): padding or a cut-and-paste
        raise _fail(path, f"damaged safetensors file: {data_bytes - covered} bytes after the last tensor")
    return header, 8 + size


def _verify(path, header: dict, tensors: dict[str, torch.Tensor], read_data, required: bool) -> dict[str, str]:
    """The metadata without the checksum, after checking the checksum the file carries (if any; ``required``:
    a file without one is an error)."""
    metadata = dict(header.get("__metadata__", {}))
    expected = metadata.pop(CHECKSUM_KEY, None)
    legacy = metadata.pop(LEGACY_CHECKSUM_KEY, None)
    if expected is not None:
        actual = content_digest(tensors, metadata)
    elif legacy is not None:
        actual = _legacy_digest(header, metadata, read_data)
        expected = legacy
    elif required:
        if not any(key.startswith("netspec.") for key in metadata):
            raise _fail(path, "a safetensors file that netspec did not write (no netspec metadata, no checksum)")
        # e.g. a bit flip in the checksum's own key: the file would otherwise load unverified
        raise _fail(path, f"no netspec checksum ({CHECKSUM_KEY}) in the metadata: the file is damaged")
    else:
        return metadata
    if actual != expected:
        raise _fail(path, "checksum mismatch: the file is corrupt or was modified")
    return metadata


def _legacy_digest(header: dict, metadata: dict[str, str], read_data) -> str:
    """netspec's checksum before it used the package: the header as laid out (without the checksum), then
    every tensor's bytes in header order."""
    layout = {k: v for k, v in header.items() if k != "__metadata__"}
    if metadata:
        layout = {"__metadata__": metadata, **layout}
    digest = hashlib.sha256(json.dumps(layout, sort_keys=True, separators=(",", ":")).encode())
    for entry in layout.values():
        if "data_offsets" in entry:
            begin, end = entry["data_offsets"]
            for chunk in read_data(begin, end):
                digest.update(chunk)
    return digest.hexdigest()


def load_safetensors(path: str | os.PathLike, *, require_checksum: bool = False
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read ``path``: ``(tensors, metadata)``, the tensors memory-mapped from the file.  Raises
    :class:`~netspec.errors.CheckpointError` for a file that is not safetensors, is truncated or padded,
    or fails its netspec checksum (or, with ``require_checksum``, has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with open(path, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            header, data_start = _parse_header(fh.read(8), fh.read, file_size, path)
            tensors = {}
            with safe_open(os.fspath(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)

            def read_data(begin: int, end: int):
                fh.seek(data_start + begin)
                while begin < end:
                    chunk = fh.read(min(end - begin, 1 << 24))
                    if not chunk:
                        raise _fail(path, "the file changed while it was read")
                    begin += len(chunk)
                    yield chunk

            metadata = _verify(path, header, tensors, read_data, require_checksum)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    except SafetensorError as exc:  # what the checks above let through (e.g. the file changed meanwhile)
        raise _fail(path, f"damaged safetensors file ({exc})") from None
    return tensors, metadata


def parse_safetensors(data: bytes | memoryview, path: str | os.PathLike = "<bytes>", *, require_checksum: bool = False
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Decode a whole safetensors file held in memory, with the checks of :func:`load_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = bytes(data)
    header, data_start = _parse_header(data[:8], lambda n: data[8:8 + n], len(data), path)
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise _fail(path, f"damaged safetensors file ({exc})") from None
    metadata = _verify(path, header, tensors, lambda b, e: [data[data_start + b:data_start + e]], require_checksum)
    return tensors, metadata


__all__ = ["CHECKSUM_KEY", "LEGACY_CHECKSUM_KEY", "content_digest", "load_safetensors", "parse_safetensors",
           "save_safetensors"]
