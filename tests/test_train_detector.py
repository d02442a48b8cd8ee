"""`netspec train` on detector cfgs: obj.data in, Darknet's backup folder out, exact resume after SIGKILL, and
the demo detector learning to a stated mAP."""

from __future__ import annotations

import json

import pytest
import torch

from netspec.checkpoint import list_checkpoints, load_checkpoint
from netspec.demo_shapes import make_shapes_dataset

from .test_train import _assert_same_state, _sigkill_at_step, _train

# Every data path the loop touches: two mini-batches a step, augmentation (mosaic, colours, flip), multi-scale
# sizes (random=1), burn_in, a step of the LR, an EMA from step 4 (ema_alpha), and DataLoader workers.
TINY_DETECTOR = """[net]
width=64
height=64
channels=3
batch=4
subdivisions=2
learning_rate=0.01
momentum=0.9
decay=0.0005
burn_in=2
max_batches={max_batches}
policy=steps
steps=5
scales=.1
flip=1
hue=.1
saturation=1.5
exposure=1.5
mosaic=1
ema_alpha=0.9
[convolutional]
batch_normalize=1
filters=8
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=16
size=3
pad=1
activation=leaky
[convolutional]
filters=24
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,10, 20,20, 30,30
classes=3
num=3
jitter=.2
random=1
ignore_thresh=.7
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, train=12, valid=4, seed=0, width=64, height=64)


def test_exact_resume_of_a_detector_after_sigkill(tmp_path, shapes):
    cfg = tmp_path / "tiny-yolo.cfg"
    cfg.write_text(TINY_DETECTOR.format(max_batches=8))
    common = [str(cfg), "--data", str(shapes.data), "--checkpoint-every", "2", "--workers", "1"]
    straight = _train(*common, "--out", str(tmp_path / "straight"), timeout=300)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    _sigkill_at_step(7, *common, "--out", str(out))
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 6]
    assert not (out / "tiny-yolo_final.weights").exists()

    resumed = _train(*common, "--out", str(out), "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from ckpt-000000006.ckpt at step 6" in resumed.stderr

    for name in ("tiny-yolo_final.weights", "tiny-yolo_ema.weights"):
        assert (tmp_path / "straight" / name).read_bytes() == (out / name).read_bytes(), name  # bit for bit
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(out)
    assert a.step == b.step == 8
    _assert_same_state(a, b)
    assert a.state["history"] == b.state["history"]
    ema_a, ema_b = a.state["ema"]["average"], b.state["ema"]["average"]
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[n], ema_b[n]) for n in ema_a)
    # the log describes one uninterrupted run: iterations 1..8 once each, the same losses
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
            for d in (tmp_path / "straight", out)]
    assert [r["iteration"] for r in logs[1] if "loss" in r] == list(range(1, 9))
    assert [r["loss"] for r in logs[0] if "loss" in r] == [r["loss"] for r in logs[1] if "loss" in r]


def test_map_during_training_keeps_best_weights_and_charts_it(tmp_path, shapes):
    from netspec.cli import main

    cfg = tmp_path / "tiny-yolo.cfg"
    cfg.write_text(TINY_DETECTOR.format(max_batches=4).replace("ema_alpha=0.9", ""))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--data", str(shapes.data), "--out", str(out), "--map", "--map-every", "2",
                 "--quiet", "--json"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "mAP@0.5" in r]
    assert [r["iteration"] for r in evaluated] == [2, 4] and all(0 <= r["mAP@0.5"] <= 1 for r in evaluated)
    assert [r.get("count") is not None for r in records if "loss" in r] == [True] * 4  # the loss's own figures
    assert {p.name for p in out.glob("*.weights")} == {"tiny-yolo_best.weights", "tiny-yolo_final.weights"}
    state = load_checkpoint(out).state
    assert state["metrics"] == [[r["iteration"], r["mAP@0.5"]] for r in evaluated]
    assert state["best"] == max(r["mAP@0.5"] for r in evaluated)


def test_torchrun_two_processes_train_a_detector_then_resume_on_one(tmp_path, shapes):
    from .test_train import _torchrun

    cfg = tmp_path / "tiny-yolo.cfg"
    cfg.write_text(TINY_DETECTOR.format(max_batches=4))
    out = tmp_path / "ddp"
    run = _torchrun(2, cfg, shapes.data, out, "--checkpoint-every", "2", "--workers", "0")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [s for s, _ in list_checkpoints(out)] == [2, 4] and (out / "tiny-yolo_final.weights").is_file()
    first = load_checkpoint(out)
    resumed = _train(str(cfg), "--data", str(shapes.data), "--out", str(out), "--resume", "--max-batches", "6",
                     "--workers", "0", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(out)
    assert final.step == 6 and final.state["history"][:4] == first.state["history"]
