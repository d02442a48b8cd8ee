"""ONNX export of a built :class:`~netspec.network.Network`, optionally with the box decoding in the graph.

The graph has one input, ``images`` (``batch x C x H x W``, float32), and one output per detection head
named after its section and Darknet layer index (``yolo_16``, ``region_30``, ``Gaussian_yolo_139``,
``detection_20``; each exactly netspec's/Darknet's buffer for that head) or, for a classifier, ``output``.
With ``decode=True`` the outputs are instead ``boxes`` (``batch x N x 4``, ``x1, y1, x2, y2`` in input
pixels) and ``scores`` (``batch x N x classes``, objectness times class probability, not thresholded),
the N candidates of all heads in Darknet's order (per head: cell-major, then anchor).

netspec uses torch's TorchScript-based exporter (``dynamo=False``): it needs no package beyond torch, works
offline, and handles every op the sections use; the torch.export-based exporter additionally needs
``onnxscript`` and brings nothing this fixed-topology graph needs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from .atomic import write_bytes
from .errors import NetspecError

INPUT_NAME = "images"


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: str
    input_name: str
    input_shape: tuple[int, int, int, int]  # batch (1 when dynamic, as exported), C, H, W
    output_names: tuple[str, ...]
    dynamic_batch: bool
    opset: int


def _describe(spec) -> str:
    where = f"{spec.path}:{spec.block.line}" if getattr(spec, "path", None) else f"line {spec.block.line}"
    return f"[{spec.type}] #{spec.index} ({where})"


# ---------------------------------------------------------------------------------------------- sizes
def _at_size(net: nn.Module, width: int | None, height: int | None) -> nn.Module:
    """A private copy of ``net`` for export, rebuilt from its cfg when another input size is asked for."""
    _, h, w = net.input_shape
    width = width or w
    height = height or h
    if (width, height) == (w, h):
        return copy.deepcopy(net)
    from .network import assemble
    from .specs import build_specs

    spec = build_specs(net.spec.document, width, height, channels=net.input_shape[0], strict=False)
    # Network does not record darknet_bugs; the default (Darknet's behaviour) is what builds use.
    resized = assemble(spec, darknet_bugs=getattr(net, "darknet_bugs", True))
    if getattr(net, "fused", False):
        resized.fuse()
    ours = resized.state_dict()
    for name, tensor in net.state_dict().items():
        if name in ours and ours[name].shape != tensor.shape:
            index = int(name.split(".")[1])
            raise NetspecError(f"cannot export at {width}x{height}: {_describe(spec.layers[index])} has parameters "
                               f"whose shape depends on the input size ({name}: {tuple(tensor.shape)} at {w}x{h}, "
                               f"{tuple(ours[name].shape)} at {width}x{height}); export at {w}x{h}")
    resized.load_state_dict(net.state_dict())
    return resized


# ---------------------------------------------------------------------------------------------- decoding
def _check_decodable(module: nn.Module, spec) -> None:
    """The head's ``decode_boxes`` hook (the decoder ``netspec.detect`` uses too) must exist for it."""
    if not getattr(module, "decodes_boxes", False):
        raise NetspecError(f"{_describe(spec)}: netspec cannot decode this head into boxes (a tree= [region] whose "
                           "hierarchy file could not be read, or a head without a decoder); export without decode to "
                           "get its buffer")


def _pixel_corners(boxes: torch.Tensor, in_w: int, in_h: int) -> torch.Tensor:
    """Centre boxes relative to the input → x1, y1, x2, y2 in input pixels."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([(x - w / 2) * in_w, (y - h / 2) * in_h, (x + w / 2) * in_w, (y + h / 2) * in_h], -1)


# ---------------------------------------------------------------------------------------------- export
class _Exported(nn.Module):
    """The network as a graph with a tuple of outputs (and optionally the decoding appended)."""

    def __init__(self, net: nn.Module, decode: bool) -> None:
        super().__init__()
        self.net = net
        self.decode = decode
        _, self.in_h, self.in_w = net.input_shape
        if decode:
            if not net.is_detector:
                raise NetspecError("decode=True needs a detector: this network has no [yolo], [Gaussian_yolo], "
                                   "[region] or [detection] head")
            classes = set()
            for index in net.outputs:
                _check_decodable(net.layers[index], net.spec.layers[index])
                classes.add(net.layers[index].classes)
            if len(classes) > 1:
                raise NetspecError(f"decode=True needs every head to have the same number of classes, the heads "
                                   f"have {sorted(classes)}; export without decode")

    def forward(self, images: torch.Tensor):
        out = self.net(images)
        if not self.net.is_detector:
            return out
        if not self.decode:
            return tuple(out)
        boxes, scores = [], []
        for index, buf in zip(self.net.outputs, out):
            decoded = self.net.layers[index].decode_boxes(buf)
            boxes.append(_pixel_corners(decoded.boxes, self.in_w, self.in_h))
            scores.append(decoded.probs)
        return torch.cat(boxes, 1), torch.cat(scores, 1)


def output_names(net: nn.Module, decode: bool = False) -> tuple[str, ...]:
    """The graph's output names: ``boxes, scores`` when decoding, else one per head or ``output``."""
    if decode:
        return ("boxes", "scores")
    if not net.is_detector:
        return ("output",)
    return tuple(f"{net.spec.layers[i].type}_{i}" for i in net.outputs)


def export_onnx(net: nn.Module, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                batch: int = 1, dynamic_batch: bool = False, fuse: bool = False, decode: bool = False,
                opset: int = 17) -> OnnxExport:
    """Write ``net`` (in inference mode) as an ONNX model to ``path``.

    ``width``/``height`` export at another input size (the network is rebuilt from its cfg and gets
    ``net``'s parameters); ``batch`` is the batch size of the graph, or with ``dynamic_batch=True`` a
    symbolic ``batch`` dimension; ``fuse`` folds BatchNorm into the conv/connected weights (otherwise the
    graph keeps one BatchNormalization per Darknet BN); ``decode`` appends the box decoding (see the
    module documentation).  ``net`` itself is not modified.  Raises :class:`NetspecError` naming the
    section (and cfg line) that cannot be expressed in ONNX.
    """
    if batch < 1:
        raise NetspecError(f"batch must be at least 1, got {batch}")
    model = _at_size(net, width, height).float().eval()
    if fuse:
        model.fuse()  # Network.fuse: BN folded into the conv/connected weights (in float64, as Darknet)
    from .inference import restore_plain_weights

    restore_plain_weights(model)  # the exporter reads parameters() before it traces: the plain weights, not packed
    wrapper = _Exported(model, decode).eval()
    names = output_names(model, decode)
    c, h, w = model.input_shape
    images = torch.rand(batch, c, h, w)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *names)} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        _torch_export(wrapper, images, buffer, names, axes, opset)
    except NetspecError:
        raise
    except Exception as exc:  # the exporter fails in many ways; find the layer responsible
        raise _failing_layer(model, opset, exc) from exc
    data = buffer.getvalue()
    data = _keep_input(data, (None if dynamic_batch else batch, c, h, w))
    with torch.no_grad():
        outputs = wrapper(images)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    data = _declare_output_shapes(data, {n: tuple(o.shape) for n, o in zip(names, outputs)}, dynamic_batch)
    write_bytes(path, data)
    return OnnxExport(os.fspath(path), INPUT_NAME, (batch, c, h, w), names, dynamic_batch, opset)


def _keep_input(data: bytes, shape: tuple) -> bytes:
    """Put ``images`` back when the exporter pruned it: a graph whose outputs do not depend on the input
    (e.g. Darknet's zero-output activation bugs reproduced) must still take it, or callers break."""
    try:
        import onnx
    except ImportError:  # without onnx we cannot inspect the graph; the common case needs no repair
        return data
    model = onnx.load_from_string(data)
    if any(i.name == INPUT_NAME for i in model.graph.input):
        return data
    dims = ["batch" if d is None else d for d in shape]
    model.graph.input.insert(0, onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, dims))
    return model.SerializeToString()


def _declare_output_shapes(data: bytes, shapes: dict[str, tuple[int, ...]], dynamic_batch: bool) -> bytes:
    """Declare each output's shape as the network computes it: every dimension fixed but the batch (``batch``
    with ``dynamic_batch``).  The exporter's own inference names dimensions after the nodes that compute them
    (``Reshapeyolo_30_dim_2``), symbolic even in a static graph and shared between heads of different sizes."""
    try:
        import onnx
    except ImportError:  # without onnx the graph cannot be edited; the exporter's declaration stays
        return data
    model = onnx.load_from_string(data)
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(shapes[output.name]):
            dim = dims.add()
            if axis == 0 and dynamic_batch:
                dim.dim_param = "batch"
            else:
                dim.dim_value = size
    return model.SerializeToString()


def _torch_export(module: nn.Module, images: torch.Tensor, target, names, axes, opset: int) -> None:
    with _exporter_quiet(), torch.no_grad():
        torch.onnx.export(module, (images,), target, dynamo=False, input_names=[INPUT_NAME], output_names=list(names),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                          # PRESERVE (the model is in eval mode) keeps BatchNormalization nodes; EVAL would
                          # fold them into the convs whether or not fuse= asked for it.
                          training=torch.onnx.TrainingMode.PRESERVE)


def _expm1(g, x):
    return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32)))


_SYMBOLICS = {"aten::expm1": _expm1}  # ops netspec's modules use that the exporter lacks (elu, selu)


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """Silence the exporter and give it the symbolics it lacks, for the duration of one export.

    The legacy exporter is deprecated in favour of the dynamo one (see the module docstring) and warns
    about every strided slice it cannot constant-fold; on failure it also dumps the whole TorchScript
    graph to the process's stdout from C++ (its logging switch is stuck on in torch 2.13).  None of it
    is actionable for users: netspec reports the failing section instead.
    """
    for op, fn in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(op, fn, 9)
    log_enabled = torch._C._jit_is_onnx_log_enabled()
    saved = {}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved[fd] = os.dup(fd)
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:  # no usable fds (embedded interpreters): keep the noise
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, copy_fd in saved.items():
            os.dup2(copy_fd, fd)
            os.close(copy_fd)
        torch._C._jit_set_onnx_log_enabled(log_enabled)
        for op in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(op, 9)


class _OneLayer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.layer(*xs)


def _failing_layer(net: nn.Module, opset: int, exc: Exception) -> NetspecError:
    """Export each layer alone to name the first one ONNX cannot express."""
    outputs = []
    with torch.no_grad():
        c, h, w = net.input_shape
        x = torch.rand(1, c, h, w)
        for spec, module in zip(net.spec.layers, net.layers):
            inputs = [x if s < 0 else outputs[s] for s in spec.sources]
            try:
                with _exporter_quiet():
                    torch.onnx.export(_OneLayer(module).eval(), tuple(inputs), io.BytesIO(), dynamo=False,
                                      opset_version=opset, training=torch.onnx.TrainingMode.PRESERVE)
            except Exception as layer_exc:
                return NetspecError(f"{_describe(spec)} cannot be exported to ONNX (opset {opset}): "
                                    f"{_first_line(layer_exc)}")
            outputs.append(module(*inputs))
    return NetspecError(f"ONNX export failed: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
