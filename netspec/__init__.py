"""netspec: Darknet-style .cfg files in, PyTorch networks out.

``import netspec`` is cheap: torch and lark are imported only when a function that needs them is
first used (names are resolved lazily by ``__getattr__``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import CfgError, CheckpointError, DataError, LimitError, NetspecError, Problem, SectionError, WeightsError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "parse": "netspec.parser",
    "build": "netspec.builder",
    "build_spec": "netspec.builder",
    "Network": "netspec.network",
    "Limits": "netspec.specs",
    "NetSpec": "netspec.specs",
    "Document": "netspec.document",
    "init_weights": "netspec.init",
    "param_groups": "netspec.optim",
    "make_optimizer": "netspec.optim",
    "make_scheduler": "netspec.schedule",
    "save_checkpoint": "netspec.checkpoint",
    "load_checkpoint": "netspec.checkpoint",
    "export_safetensors": "netspec.checkpoint",
    "load_parameters": "netspec.params_io",
    "save_parameters": "netspec.params_io",
    "detect": "netspec.detection",
    "darknet_detections": "netspec.detection",
    "DetectError": "netspec.detection",
    "load_darknet_weights": "netspec.weights",
    "save_darknet_weights": "netspec.weights",
    "export_onnx": "netspec.onnx_export",
    "load_port": "netspec.ports",
    "Section": "netspec.sections.base",
    "register_section": "netspec.sections.base",
    "SpecError": "netspec.sections.base",
    "Inference": "netspec.sections.base",
    "InitTarget": "netspec.sections.base",
    "TargetError": "netspec.loss",
    "TrainError": "netspec.train",
    "load_image": "netspec.images",
    "resize_image": "netspec.images",
    "letterbox": "netspec.images",
    "ImageError": "netspec.images",
    "read_data_config": "netspec.datasets",
    "read_image_list": "netspec.datasets",
    "read_labels": "netspec.datasets",
    "label_path": "netspec.datasets",
    "read_coco": "netspec.datasets",
    "DetectionLoss": "netspec.loss",
    "Trainer": "netspec.train",
}

__all__ = ["CfgError", "CheckpointError", "DataError", "LimitError", "NetspecError", "Problem", "SectionError",
           "WeightsError", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .builder import build, build_spec  # noqa: F401
    from .document import Document  # noqa: F401
    from .network import Network  # noqa: F401
    from .parser import parse  # noqa: F401
    from .specs import Limits, NetSpec  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netspec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
