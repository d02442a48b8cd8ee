"""Darknet ``.weights`` files: load into and save from a built :class:`~netspec.network.Network`.

Format (reference §7): a header ``int32 major, minor, revision`` and ``seen`` (uint64 when
``major*10 + minor >= 2``, else uint32), then float32 records in layer order; each layer module
describes its record with ``darknet_record()``.  The file is read once into one buffer and every
tensor is copied from a view of it; saving writes one contiguous buffer.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from .atomic import atomic_write
from .errors import WeightsError

DEFAULT_VERSION = (0, 2, 5)


@dataclass
class DarknetHeader:
    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_bytes(self) -> int:
        return 8 if self.major * 10 + self.minor >= 2 else 4

    @property
    def size(self) -> int:
        return 12 + self.seen_bytes

    @property
    def transposed(self) -> bool:
        """Connected-layer matrices are stored ``[inputs][outputs]`` in such files."""
        return self.major > 1000 or self.minor > 1000

    def pack(self) -> bytes:
        seen_fmt = "<Q" if self.seen_bytes == 8 else "<I"
        return struct.pack("<iii", self.major, self.minor, self.revision) + struct.pack(seen_fmt, self.seen)


@dataclass
class LoadReport:
    """What :func:`load_darknet_weights` did."""

    path: str
    header: DarknetHeader
    layers_loaded: int  # layers whose record was read (layers without a record count when reached)
    last_layer: int  # index of the last layer reached, -1 if none
    floats_read: int
    floats_in_file: int
    complete: bool  # every layer (< upto) was reached
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        state = "all layers" if self.complete else f"layers 0..{self.last_layer} (the file ends there)"
        return (f"loaded {state} from {self.path}: {self.floats_read:,} floats, {self.layers_loaded} layers with "
                f"weights; header {self.header.major}.{self.header.minor}.{self.header.revision}, "
                f"seen={self.header.seen}")


def _records(net, upto: int | None):
    """``(index, spec, [(tensor, layout), ...])`` for each layer with a record, in file order."""
    if getattr(net, "fused", False):
        raise WeightsError("this network was fused (Network.fuse): its BatchNorm tensors are folded into the "
                           "weights, so it has no Darknet .weights records; load or save before fusing")
    n = len(net.layers) if upto is None else min(upto, len(net.layers))
    for index in range(n):
        spec = net.spec.layers[index]
        if spec.p.dontload:
            continue  # Darknet skips the layer without advancing in the file
        module = net.layers[index]
        record = module.darknet_record() if hasattr(module, "darknet_record") else []
        if spec.p.dontloadscales:
            record = [item for item in record if item[1] != "scales"]
        if record:
            yield index, spec, record


def _stored_shape(tensor: torch.Tensor, layout: str, transposed_file: bool) -> tuple[int, ...] | None:
    """The shape of a transposed matrix as stored, or None when stored in the tensor's own order."""
    if layout == "transposed" or (layout == "connected" and transposed_file):
        rows = tensor.shape[0]
        return (tensor.numel() // rows, rows)
    return None


def read_header(data: bytes | memoryview, path: str) -> DarknetHeader:
    if len(data) < 12:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet .weights header (16 or 20 bytes)")
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    plain = major in (0, 1) and 0 <= minor <= 9  # every Darknet fork writes 0.1.x or 0.2.x
    transposed = (1000 < major < 1100 or 1000 < minor < 1100) and major >= 0 and minor >= 0
    if not (plain or transposed) or revision < 0:
        raise WeightsError(f"{path}: unsupported header version {major}.{minor}.{revision}; this is not a Darknet "
                           ".weights file (or it is damaged)")
    header = DarknetHeader(major, minor, revision)
    if len(data) < header.size:
        raise WeightsError(f"{path}: the file ends inside its {header.size}-byte header")
    header.seen = struct.unpack_from("<Q" if header.seen_bytes == 8 else "<I", data, 12)[0]
    return header


def _describe(spec) -> str:
    return f"layer {spec.index} [{spec.type}] (line {spec.block.line})"


def load_darknet_weights(net, path: str | os.PathLike, upto: int | None = None, *, strict: bool = True,
                         allow_nonfinite: bool = False) -> LoadReport:
    """Load a Darknet ``.weights`` file into ``net`` (layers ``< upto`` only, like Darknet's ``partial``).

    A file that ends exactly at a layer boundary loads the layers up to there (backbones such as
    ``yolov4.conv.137``) and says so in the report.  A file that ends inside a record, or has bytes
    left after the last record, is a :class:`WeightsError` saying how many floats the cfg needs, how
    many the file has and in which layer they part (raised before any weight is changed);
    ``strict=False`` accepts both like Darknet (reads what there is, ignores the rest) and lists them
    in ``report.warnings``.  NaN or Inf values are an error unless ``allow_nonfinite``.
    """
    path = os.fspath(path)
    try:
        fh = open(path, "rb")
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, not a .weights file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        file_size = os.fstat(fh.fileno()).st_size
        header = read_header(fh.read(20), path)
        fh.seek(header.size)
        body_bytes = file_size - header.size
        total = body_bytes // 4
        records = list(_records(net, upto))
        plan, warnings, complete = _plan_load(records, total, path, strict)
        loaded = 0
        last_layer = -1
        with torch.no_grad():
            for index, spec, record in plan:
                if not _read_record(fh, record, header.transposed) == sum(t.numel() for t, _ in record):
                    raise WeightsError(f"{path}: the file changed while it was read ({_describe(spec)})")
                if not allow_nonfinite:
                    _check_finite(record, spec, path)
                loaded += 1
                last_layer = index
    offset = sum(t.numel() for _, _, record in plan for t, _ in record)
    n_layers = len(net.layers) if upto is None else min(upto, len(net.layers))
    if complete:
        last_layer = n_layers - 1
    else:
        warnings.append(f"{path}: the file ends after layer {last_layer}; layers {last_layer + 1}..{n_layers - 1} keep "
                        "their initial weights")
    leftover_bytes = body_bytes - offset * 4
    if complete and leftover_bytes and upto is None:
        needed = offset
        message = (f"{path}: {leftover_bytes:,} bytes left after the last record: the cfg needs {needed:,} floats, "
                   f"the file has {total:,}" + (f" and {body_bytes % 4} odd bytes" if body_bytes % 4 else "")
                   + " (wrong cfg for this file?)")
        if strict:
            raise WeightsError(message)
        warnings.append(message)
    net.darknet_header = header
    return LoadReport(path, header, loaded, last_layer, offset, total, complete, warnings)


def _plan_load(records, total: int, path: str, strict: bool):
    """The records the file holds completely, warnings, and whether every record is there.

    Decided from the file size alone, so a damaged file is reported before any weight changes."""
    needed = sum(t.numel() for _, _, rec in records for t, _ in rec)
    offset = 0
    for i, (_, spec, record) in enumerate(records):
        size = sum(t.numel() for t, _ in record)
        if offset == total:
            return records[:i], [], False
        if offset + size > total:
            message = (f"{path}: the file ends inside the record of {_describe(spec)}: the cfg needs {needed:,} "
                       f"floats, the file has {total:,} (this layer needs {size:,} from float {offset:,})")
            if strict:
                raise WeightsError(message)
            return records[:i], [message], False
        offset += size
    return records, [], True


def _read_record(fh, record, transposed_file: bool) -> int:
    """Read one record straight from the file into the tensors' memory; returns the floats read."""
    count = 0
    for tensor, layout in record:
        stored = _stored_shape(tensor, layout, transposed_file)
        direct = (stored is None and tensor.device.type == "cpu" and tensor.dtype == torch.float32
                  and tensor.is_contiguous() and sys.byteorder == "little")
        target = tensor if direct else torch.empty(stored or tensor.shape, dtype=torch.float32)
        view = memoryview(target.detach().numpy()).cast("B")
        got = fh.readinto(view)
        if got != view.nbytes:
            return count + got // 4
        if not direct:
            source = target.t() if stored else target
            tensor.copy_(source.reshape(tensor.shape))
        count += tensor.numel()
    return count


def _check_finite(record, spec, path: str) -> None:
    # One cheap reduction per tensor; only a non-finite sum needs the exact count.
    # (numpy, single-threaded: torch's threaded reductions stall when the machine is busy)
    for tensor, _ in record:
        values = tensor.detach().cpu().numpy()
        with np.errstate(over="ignore", invalid="ignore"):
            total = values.sum()
        if not np.isfinite(total):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                raise WeightsError(f"{path}: {bad} NaN/Inf value(s) in the record of {_describe(spec)} "
                                   "(pass allow_nonfinite=True / --allow-nonfinite to accept them)")


def darknet_weights_bytes(net, upto: int | None = None, header: DarknetHeader | None = None) -> bytes:
    """The ``.weights`` file for ``net`` as bytes (header from the last load unless given)."""
    header = header or getattr(net, "darknet_header", None) or DarknetHeader(*DEFAULT_VERSION)
    parts = []
    for _, _, record in _records(net, upto):
        for tensor, layout in record:
            t = tensor.detach().to("cpu", torch.float32)
            if _stored_shape(tensor, layout, header.transposed):
                t = t.reshape(tensor.shape[0], -1).t()
            parts.append(t.contiguous().numpy().ravel())
    body = np.concatenate(parts).astype("<f4", copy=False) if parts else np.zeros(0, "<f4")
    return header.pack() + body.tobytes()


def save_darknet_weights(net, path: str | os.PathLike, upto: int | None = None, *,
                         header: DarknetHeader | None = None) -> int:
    """Write ``net``'s weights (layers ``< upto``) as a Darknet ``.weights`` file; returns its size in bytes.

    The header is the one read by the last :func:`load_darknet_weights` (so a load/save round trip is
    byte-identical), else version 0.2.5 with ``seen=0``.  The write is atomic.
    """
    data = darknet_weights_bytes(net, upto, header)
    with atomic_write(path) as fh:
        fh.write(data)
    return len(data)
