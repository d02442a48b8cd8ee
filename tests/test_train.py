"""`netspec train`: exact resume after a real SIGKILL, torchrun/DDP with resume on another process count,
datasets, and the shipped digits demo cfg."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from netspec.checkpoint import list_checkpoints, load_checkpoint
from netspec.cli import main
from netspec.train import Sampler, Trainer, TrainError, load_dataset

from .conftest import CFGS, REPO

TINY = """[net]
width=8
height=8
channels=1
batch=8
subdivisions=2
learning_rate=0.05
momentum=0.9
decay=0.0005
burn_in=3
policy=steps
steps=5,12
scales=.5,.2
max_batches={max_batches}
[convolutional]
filters=6
size=3
pad=1
batch_normalize=1
activation=leaky
[dropout]
probability=0.3
[convolutional]
filters=3
size=1
activation=linear
learning_rate=0.5
[avgpool]
[softmax]
"""


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 3, size=40)
    np.savez(tmp_path / "data.npz", x=x, y=y, x_test=x[:10], y_test=y[:10])

    def write(max_batches: int, name: str = "tiny.cfg"):
        path = tmp_path / name
        path.write_text(TINY.format(max_batches=max_batches))
        return path

    return tmp_path, write


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netspec", "train", *args, "--quiet"], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# Runs the real CLI, but step K+3 never finishes: the parent kills the process there with SIGKILL.
_STALLING = """
import sys, time
import netspec.train as T
original = T.Trainer.train_step
def train_step(self, k):
    if k == {stall}:
        print("stalled", flush=True)
        time.sleep(600)
    return original(self, k)
T.Trainer.train_step = train_step
from netspec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _sigkill_at_step(stall: int, *train_args: str) -> None:
    """``netspec train ARGS`` in a child process, killed with SIGKILL while it is in step ``stall``."""
    child = subprocess.Popen([sys.executable, "-c", _STALLING.format(stall=stall), "train", *train_args, "--quiet"],
                             env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "stalled", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()


def _assert_same_state(a, b) -> None:
    for (name, x), (name_b, y) in zip(a.model_state.items(), b.model_state.items()):
        assert name == name_b and torch.equal(x, y), name
    sa, sb = a._optimizer["state"], b._optimizer["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for field in sa[key]:
            assert torch.equal(sa[key][field], sb[key][field]), (key, field)
    assert [g["lr"] for g in a._optimizer["param_groups"]] == [g["lr"] for g in b._optimizer["param_groups"]]
    assert a._scheduler["last_epoch"] == b._scheduler["last_epoch"]


def test_exact_resume_after_sigkill(tiny):
    tmp, write = tiny
    k = 8
    cfg = write(2 * k)
    data = str(tmp / "data.npz")
    straight = _train(str(cfg), "--data", data, "--out", str(tmp / "straight"), "--save-every", str(k))
    assert straight.returncode == 0, straight.stderr

    out = tmp / "killed"
    _sigkill_at_step(k + 3, str(cfg), "--data", data, "--out", str(out), "--save-every", str(k))
    assert [s for s, _ in list_checkpoints(out)] == [k]  # killed mid-run, after step k+2

    resumed = _train(str(cfg), "--data", data, "--out", str(out), "--resume", "--save-every", str(k))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from ckpt-{k:09d}.ckpt at step {k}" in resumed.stderr

    a, b = load_checkpoint(tmp / "straight"), load_checkpoint(out)
    assert a.step == b.step == 2 * k
    _assert_same_state(a, b)
    assert a.state["history"] == b.state["history"]  # every step's loss and LR, bitwise
    lrs = [lr for _, _, lr in a.state["history"]]
    assert lrs[0] == pytest.approx(0.05 * (1 / 3) ** 4) and lrs[5] == pytest.approx(0.025)
    assert a.state["test_accuracy"] == b.state["test_accuracy"]


def test_existing_checkpoints_need_resume(tiny, capsys):
    tmp, write = tiny
    cfg = write(2)
    args = ["train", str(cfg), "--data", str(tmp / "data.npz"), "--out", str(tmp / "o"), "--quiet"]
    assert main(args) == 0
    assert main(args) == 1 and "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # already at max_batches: nothing to do, still fine
    assert load_checkpoint(tmp / "o").step == 2


def test_sampler_is_a_function_of_seed_and_step_and_covers_each_epoch():
    s = Sampler(10, 4, seed=1)
    first_epoch = torch.cat([s.indices(0), s.indices(1), s.indices(2)[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert torch.equal(Sampler(10, 4, seed=1).indices(7), s.indices(7))
    assert not torch.equal(Sampler(10, 4, seed=2).indices(0), s.indices(0))


def test_dataset_errors_and_resizing(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 1, 4, 4)))
    with pytest.raises(TrainError, match="needs arrays 'x' and 'y'"):
        load_dataset(str(tmp_path / "bad.npz"), (1, 8, 8))
    np.savez(tmp_path / "rgb.npz", x=np.zeros((2, 3, 4, 4), np.float32), y=np.zeros(3))
    with pytest.raises(TrainError, match="3 labels for 2 images"):
        load_dataset(str(tmp_path / "rgb.npz"), (3, 8, 8))
    with pytest.raises(TrainError, match="3 channels, the cfg expects 1"):
        load_dataset(str(tmp_path / "rgb.npz"), (1, 8, 8))
    np.savez(tmp_path / "ok.npz", x=np.full((2, 4, 4), 255, np.uint8), y=[0, 1])
    data = load_dataset(str(tmp_path / "ok.npz"), (3, 8, 8))
    assert data.x.shape == (2, 3, 8, 8) and torch.allclose(data.x, torch.ones_like(data.x))


def test_detector_cfg_with_a_classifier_dataset_names_obj_data(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 32, 32), np.float32), y=[0, 1])
    cfg = ("[net]\nwidth=32\nheight=32\nchannels=3\nmax_batches=2\n[convolutional]\nfilters=18\nsize=1\n"
           "activation=linear\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n")
    with pytest.raises(TrainError, match="detection heads; it trains on a Darknet obj.data file"):
        Trainer(cfg, str(tmp_path / "d.npz"), tmp_path / "out")


def test_digits_demo_cfg_learns(tmp_path):
    pytest.importorskip("sklearn")
    text = (CFGS / "digits-classifier.cfg").read_text().replace("max_batches=500", "max_batches=120")
    text = text.replace("burn_in=30", "burn_in=10")
    trainer = Trainer(text, "digits", tmp_path / "run", progress=False, save_every=0)
    result = trainer.run()
    losses = [loss for _, loss, _ in trainer.history]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # the full 500-step run reaches ~0.99 test accuracy
    assert 0.0 <= result["test_accuracy"] <= 1.0 and trainer.data.x.shape[1:] == (1, 16, 16)


def _torchrun(nproc: int, cfg, data, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "netspec", "train", str(cfg), "--data", str(data), "--out", str(out), "--quiet",
                           *extra], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_then_resume_on_one(tiny):
    tmp, write = tiny
    data, out = tmp / "data.npz", tmp / "ddp"
    run = _torchrun(2, write(4), data, out, "--save-every", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    first = load_checkpoint(out)
    assert len(first.state["history"]) == 4
    resumed = _train(str(write(8, "longer.cfg")), "--data", str(data), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(out)
    assert final.step == 8 and final.state["history"][:4] == first.state["history"]
    assert not torch.equal(final.model_state["layers.0.conv.weight"], first.model_state["layers.0.conv.weight"])


def test_train_command_tears_down_the_process_group(tiny, monkeypatch):
    # A gloo group left to the exit-time destructors aborted a rank after a successful torchrun run
    # ("terminate called without an active exception"); the command ends the group itself.
    import torch.distributed as dist

    from netspec.cli import main

    tmp, write = tiny
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "1")
        assert main(["train", str(write(2)), "--data", str(tmp / "data.npz"), "--out", str(tmp / "run"),
                     "--quiet"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
