"""The offline demo end to end: `netspec demo-data` → `netspec train` for a bounded number of iterations →
an mAP@0.5 on the demo's validation split far above the untrained network's, the same number `netspec map`
prints for the trained weights."""

from __future__ import annotations

import json

import netspec
from netspec.cli import main
from netspec.demo_shapes import make_shapes_dataset
from netspec.detector_training import DetectionTask
from netspec.train import Trainer

from .conftest import CFGS

REACHED = 0.6  # measured 0.81 (0.87 with contiguous tensors); an untrained net scores 0.00


def test_demo_detector_learns_to_a_stated_map(tmp_path, capsys):
    shapes = make_shapes_dataset(tmp_path / "shapes", seed=0)  # the default demo: 400 training, 100 validation
    cfg = CFGS / "shapes-tiny.cfg"
    untrained = DetectionTask(netspec.build(cfg), shapes.data, workers=0).evaluate(netspec.build(cfg))
    assert untrained["mAP@0.5"] < 0.05

    out = tmp_path / "run"
    # the cfg's own max_batches (500 iterations of batch 16; about 110 s of CPU): after 300 the mAP still
    # swings with float rounding (0.42 to 0.60), after the cfg's LR steps it settles
    result = Trainer(cfg, shapes.data, out, progress=False, save_every=0, eval_every=500, workers=1).run()
    assert result["mAP@0.5"] >= REACHED, result

    final = out / "shapes-tiny_final.weights"
    assert result["weights"] == str(final)
    capsys.readouterr()
    assert main(["map", str(shapes.data), str(cfg), "--weights", str(final), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == result["mAP@0.5"]  # the trainer's mAP is netspec map's
