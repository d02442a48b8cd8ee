"""Parameter files of every format netspec reads, behind one loader and one writer.

Darknet ``.weights`` (:mod:`netspec.weights`), netspec checkpoints ``.ckpt`` and ``.safetensors`` exports
(:mod:`netspec.checkpoint`).  Files are recognized by their first bytes when read and by their suffix when
written.  The Darknet header (version and ``seen``) travels in the netspec files' metadata, so
``.weights`` → ``.safetensors``/``.ckpt`` → ``.weights`` is byte-identical.  Every command that takes
``--weights`` (and ``netspec convert``) goes through :func:`load_parameters`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import NetspecError

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

DARKNET, NETSPEC, TORCH = "darknet", "netspec", "torch"


def file_format(path: str | os.PathLike, *, reading: bool) -> str:
    """A parameter file's format: by its first bytes when reading, by its suffix when writing.

    ``netspec``: a netspec checkpoint or ``.safetensors`` export (both safetensors files), or a directory
    of checkpoints; ``torch``: a ``torch.save`` file (a PyTorch port's checkpoint); ``darknet``: anything
    else."""
    name = os.fspath(path)
    if not reading:
        return NETSPEC if name.lower().endswith((".safetensors", ".ckpt")) else DARKNET
    if os.path.isdir(name):
        return NETSPEC  # a training run's checkpoint directory: its newest intact checkpoint
    try:
        with open(name, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise NetspecError(f"{name}: cannot read: {exc.strerror or exc}") from None
    # safetensors: u64 header length, then a JSON header.  Checked first: the length's low byte can be
    # 0x80 or "P" (a 13,184-byte header starts b"\x80\x33"), which would look like torch's containers.
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return NETSPEC
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip container, or a legacy pickle
        return TORCH
    return DARKNET


@dataclass
class ParametersReport:
    """What :func:`load_parameters` did, whatever the file's format."""

    path: str
    format: str  # DARKNET or NETSPEC
    last_layer: int  # the layers after it were not filled from the file (-1: none was)
    complete: bool  # every layer (below ``upto``) was filled
    upto: int | None  # the cut asked for, when it left layers out
    detail: object  # the format's own report: netspec.weights.LoadReport or netspec.checkpoint.LoadReport
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.format == DARKNET:
            return str(self.detail)
        loaded = len(self.detail.loaded)
        cut = f" of layers 0..{self.upto - 1} (upto={self.upto})" if self.upto is not None else ""
        return f"loaded {loaded} tensors{cut} from {self.path}"


def load_parameters(net: Network, path: str | os.PathLike, upto: int | None = None, *, strict: bool = True,
                    allow_nonfinite: bool = False) -> ParametersReport:
    """Load a Darknet ``.weights`` file, a netspec checkpoint (or a directory of them: the newest intact
    one) or a ``.safetensors`` export into ``net``: layers ``0..upto-1`` only when ``upto`` is given.

    ``strict`` applies to Darknet files (short or long files are errors; see
    :func:`~netspec.weights.load_darknet_weights`); a netspec file must always fit the network exactly
    (below ``upto``).  A ``torch.save`` file is refused without being unpickled."""
    name = os.fspath(path)
    n_layers = len(net.layers)
    cut = upto if upto is not None and upto < n_layers else None
    fmt = file_format(path, reading=True)
    if fmt == TORCH:
        raise NetspecError(f"{name}: a torch.save file, not a netspec or Darknet file; if a PyTorch port wrote it, "
                           "convert it with: netspec convert FILE --cfg CFG --from erik|ultralytics|tianxiaomo -o OUT")
    if fmt == DARKNET:
        from .weights import load_darknet_weights

        report = load_darknet_weights(net, path, upto, strict=strict, allow_nonfinite=allow_nonfinite)
        return ParametersReport(name, DARKNET, report.last_layer, report.complete, cut, report,
                                list(report.warnings))
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    report = ckpt.load_into(net, strict=True, allow_nonfinite=allow_nonfinite, upto=upto)
    warnings = [f"{skipped}: skipped ({why})" for skipped, why in ckpt.skipped]
    last = (cut if cut is not None else n_layers) - 1
    return ParametersReport(os.fspath(ckpt.path), NETSPEC, last, True, cut, report, warnings)


def save_parameters(net: Network, path: str | os.PathLike, upto: int | None = None) -> str:
    """Write ``net``'s parameters in the format ``path``'s suffix names; returns a one-line report.

    ``.safetensors``: the weights alone; ``.ckpt``: a netspec checkpoint (no optimizer state); anything
    else: Darknet ``.weights`` (layers ``0..upto-1`` only when ``upto`` is given, like Darknet's
    ``partial``: a backbone file such as ``yolov4.conv.137``).  netspec files hold the whole network."""
    name = os.fspath(path)
    if file_format(path, reading=False) == DARKNET:
        from .weights import save_darknet_weights

        size = save_darknet_weights(net, path, upto)
        return f"wrote {name}: Darknet .weights, {size:,} bytes"
    if upto is not None:
        raise NetspecError(f"{name}: upto= applies to Darknet .weights output only (a netspec file holds the whole "
                           "network and its cfg)")
    if name.lower().endswith(".ckpt"):
        from .checkpoint import save_checkpoint

        save_checkpoint(path, net, rng=False)
        return f"wrote {name}: netspec checkpoint"
    from .checkpoint import export_safetensors

    export_safetensors(path, net)
    return f"wrote {name}: .safetensors, {len(net.state_dict())} tensors"


__all__ = ["DARKNET", "NETSPEC", "TORCH", "ParametersReport", "file_format", "load_parameters", "save_parameters"]
