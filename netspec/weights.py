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
from typing import TYPE_CHECKING

import numpy as np
import torch

from .atomic import atomic_write
from .errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

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

    def as_dict(self) -> dict[str, int]:
        """The header as JSON-able values (how netspec files carry it)."""
        return {"major": self.major, "minor": self.minor, "revision": self.revision, "seen": self.seen}

    @classmethod
    def from_dict(cls, values: object) -> DarknetHeader:
        """The header :meth:`as_dict` gave, as read back from a file: ``ValueError`` if it is not one."""
        if not isinstance(values, dict) or set(values) != {"major", "minor", "revision", "seen"} \
                or not all(type(v) is int for v in values.values()):
            raise ValueError(f"not a Darknet header: {values!r}")
        header = cls(**values)
        try:
            header.pack()
        except struct.error:
            raise ValueError(f"Darknet header values out of range: {values!r}") from None
        return header


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
    upto: int | None = None  # the upto= that left layers out (None: every layer was asked for)

    def __str__(self) -> str:
        if not self.complete:
            state = f"layers 0..{self.last_layer} (the file ends there)"
        elif self.upto is not None:
            state = f"layers 0..{self.upto - 1} (upto={self.upto}; the others keep their weights)"
        else:
            state = "all layers"
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


def load_darknet_weights(net: Network, path: str | os.PathLike, upto: int | None = None, *, strict: bool = True,
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
        plan, warnings, complete = _plan_load(records, total, path, strict,
                                              lambda: _disagreement(fh, header, records, total, net))
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
        with open(path, "rb") as again:
            message += _disagreement(again, header, records, total, net)
        if strict:
            raise WeightsError(message)
        warnings.append(message)
    net.darknet_header = header
    cut = upto if upto is not None and upto < len(net.layers) else None
    return LoadReport(path, header, loaded, last_layer, offset, total, complete, warnings, cut)


def _variance_tensors(net) -> set[int]:
    """ids of the BatchNorm running variances: Darknet writes them >= 0, so a record read from the wrong
    place shows itself there (they are usually read from some layer's weights, half of which are negative)."""
    found = set()
    for module in net.layers:
        for sub in module.modules():
            var = getattr(sub, "running_var", None)
            if isinstance(var, torch.Tensor):
                found.add(id(var))
    return found


def _disagreement(fh, header: DarknetHeader, records, total: int, net) -> str:
    """Where a file of the wrong size first parts from the cfg, as a sentence to append to the error ('' if
    the file does not tell).

    The file's size only says that some record differs; its content says where: walking the records as the
    cfg lays them out, each batch-norm variance must be >= 0.  The records agree up to the last layer whose
    variances read right before the first that does not; the layer after it is the first that disagrees
    (typically the conv before a head whose ``classes`` or anchors differ).  Read only on this error path."""
    position = fh.tell()  # the caller may go on reading the records from here
    try:
        return _first_disagreement(fh, header, records, total, net)
    finally:
        fh.seek(position)


def _first_disagreement(fh, header: DarknetHeader, records, total: int, net) -> str:
    variances = _variance_tensors(net)
    last_good = first_bad = None
    offset = 0
    for position, (_, _, record) in enumerate(records):
        at = offset
        verdict = None
        for tensor, _ in record:
            n = tensor.numel()
            if id(tensor) in variances and n and at + n <= total:
                fh.seek(header.size + 4 * at)
                values = np.frombuffer(fh.read(4 * n), dtype="<f4")
                ok = len(values) == n and bool(np.all(values >= 0))  # NaN compares False: not ok either
                verdict = ok if verdict is None else verdict and ok
            at += n
        if verdict is False:
            first_bad = position
            break
        if verdict:
            last_good = position
        offset = at
    if first_bad is None:
        # No misplaced record seen: only a longer file whose extra floats fit the one record after the last
        # checked one, as that layer with other output channels, says where (not padding, not a truncation).
        if last_good is None or last_good + 1 != len(records) - 1 or offset >= total:
            return ""
        _, spec, record = records[-1]
        size, channels = sum(t.numel() for t, _ in record), spec.out_shape[0]
        if size % channels or (size + total - offset) % (size // channels):
            return ""
    elif last_good is None:
        return f"; the file disagrees with the cfg at or before {_describe(records[first_bad][1])}"
    good, spec = records[last_good][1], records[last_good + 1][1]
    return (f"; the file matches the cfg up to layer {good.index}: the first layer that disagrees is {_describe(spec)} "
            f"(other filters/classes?); upto={spec.index} (--upto {spec.index}) loads layers 0..{spec.index - 1} "
            "and leaves the rest to initialization")


def _plan_load(records, total: int, path: str, strict: bool, disagreement=lambda: ""):
    """The records the file holds completely, warnings, and whether every record is there.

    Decided from the file size alone, so a damaged file is reported before any weight changes;
    ``disagreement()`` explains a file of the wrong size (see :func:`_disagreement`)."""
    needed = sum(t.numel() for _, _, rec in records for t, _ in rec)
    offset = 0
    for i, (_, spec, record) in enumerate(records):
        size = sum(t.numel() for t, _ in record)
        if offset == total:
            return records[:i], [], False
        if offset + size > total:
            where = disagreement()
            message = (f"{path}: the file is too short for this cfg: it ends inside the record of {_describe(spec)}: "
                       f"the cfg needs {needed:,} floats, the file has {total:,} (this layer needs {size:,} from "
                       f"float {offset:,})" + (where or f"; --upto {spec.index} loads layers 0..{spec.index - 1} "
                                               "only (or is the cfg's width/height/classes not the file's?)"))
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


def darknet_weights_bytes(net: Network, upto: int | None = None, header: DarknetHeader | None = None) -> bytes:
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


def save_darknet_weights(net: Network, path: str | os.PathLike, upto: int | None = None, *,
                         header: DarknetHeader | None = None) -> int:
    """Write ``net``'s weights (layers ``< upto``) as a Darknet ``.weights`` file; returns its size in bytes.

    The header is the one read by the last :func:`load_darknet_weights` (so a load/save round trip is
    byte-identical), else version 0.2.5 with ``seen=0``.  The write is atomic.
    """
    data = darknet_weights_bytes(net, upto, header)
    with atomic_write(path) as fh:
        fh.write(data)
    return len(data)
