"""The training loop shared by classifier and detector cfgs: Darknet's update rule step for step, EMA, the backup
folder, the JSON-lines log and chart, and the trainer defects of issue 10."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import netspec
from netspec.backups import BackupFolder, numbered_backup_due
from netspec.cli import main
from netspec.ema import DarknetEMA
from netspec.train import Dataset, Trainer, TrainError
from netspec.weights import read_header

# No [softmax]: the loss is cross-entropy on the pooled output, so the reference below needs no hook.
CFG = """[net]
width=6
height=6
channels=2
batch={batch}
subdivisions={subdivisions}
learning_rate=0.1
momentum=0.9
decay=0.01
burn_in=3
power=4
policy=steps
steps=5
scales=.5
max_batches={steps}
{extra}
[convolutional]
filters=4
size=3
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=3
size=1
activation=linear
learning_rate=0.5
[avgpool]
"""


def _data(n: int = 24) -> Dataset:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, 2, 6, 6, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return Dataset("random", x, y, x[:6], y[:6])


def _rate(k: int) -> float:
    """The cfg's schedule written out: burn_in=3 with power 4, then steps=5 scales=.5."""
    if k < 3:
        return 0.1 * (k / 3) ** 4
    return 0.1 * (0.5 if k >= 5 else 1.0)


def _darknet_reference(cfg: str, trainer: Trainer, steps: int, adam: bool = False) -> dict[str, torch.Tensor]:
    """Darknet's update written as Darknet's C does it, on a second copy of the net fed the same mini-batches.

    SGD: ``u += sum over images of -grad``; ``u -= decay*batch*w`` (conv weights); ``w += lr/batch * u``;
    ``u *= momentum``.  Adam (``adam_update_gpu``): ``d = u - decay*batch*w`` (every parameter),
    ``m = B1 m + (1-B1) d``, ``v = B2 v + (1-B2) d^2``, ``w += lr * mhat / (sqrt(vhat) + eps)``."""
    ref = netspec.build(cfg, seed=0)
    p = ref.net
    batch, decay, momentum = p.batch, p.decay, p.momentum
    params = dict(ref.named_parameters())
    updates = {n: torch.zeros_like(t) for n, t in params.items()}
    m = {n: torch.zeros_like(t) for n, t in params.items()}
    v = {n: torch.zeros_like(t) for n, t in params.items()}
    lr_scale = {n: (0.5 if n.startswith("layers.1.") else 1.0) for n in params}
    stream = trainer.task.steps(1, steps, 0, 1, p.subdivisions)
    ref.train()
    for k in range(1, steps + 1):
        for x, y in next(stream):
            ref.zero_grad()
            F.cross_entropy(ref(x).flatten(1), y, reduction="sum").backward()  # Darknet sums image deltas
            for n, t in params.items():
                updates[n] -= t.grad
        rate = _rate(k)
        with torch.no_grad():
            for n, w in params.items():
                lr = rate * lr_scale[n]
                if adam:
                    d = updates[n] - decay * batch * w
                    m[n] = p.B1 * m[n] + (1 - p.B1) * d
                    v[n] = p.B2 * v[n] + (1 - p.B2) * d * d
                    mhat, vhat = m[n] / (1 - p.B1 ** k), v[n] / (1 - p.B2 ** k)
                    w += lr * mhat / (vhat.sqrt() + p.eps)
                    updates[n].zero_()
                else:
                    if n.endswith("conv.weight"):
                        updates[n] -= decay * batch * w
                    w += lr / batch * updates[n]
                    updates[n] *= momentum
    return {n: t.detach() for n, t in params.items()}


@pytest.mark.parametrize("batch,subdivisions", [(8, 2), (6, 3), (4, 1)])
def test_update_equals_darknets_formula_step_for_step(tmp_path, batch, subdivisions):
    steps = 7  # through burn_in (k < 3) and past the LR step at 5
    cfg = CFG.format(batch=batch, subdivisions=subdivisions, steps=steps, extra="")
    trainer = Trainer(cfg, _data(), tmp_path / "run", progress=False, save_every=0)
    expected = _darknet_reference(cfg, trainer, steps)
    for k in range(1, steps + 1):
        trainer.train_step(k)
        trainer.step = k
    assert [round(_rate(k), 12) for k in range(1, 4)] == [round(r, 12) for r in
                                                          (0.1 / 81, 0.1 * 16 / 81, 0.1)]
    for name, param in trainer.net.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_adam_equals_darknets_adam(tmp_path):
    steps = 6
    cfg = CFG.format(batch=8, subdivisions=2, steps=steps, extra="adam=1\nB1=0.8\nB2=0.95\neps=0.0001")
    trainer = Trainer(cfg, _data(), tmp_path / "run", progress=False, save_every=0)
    expected = _darknet_reference(cfg, trainer, steps, adam=True)
    for k in range(1, steps + 1):
        trainer.train_step(k)
    for name, param in trainer.net.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulated_mini_batches_equal_torch_sgd_on_the_mean_loss(tmp_path):
    """Without BN (whose statistics are per mini-batch) 4 accumulated mini-batches are one SGD step on the mean."""
    cfg = CFG.format(batch=8, subdivisions=4, steps=5, extra="").replace("batch_normalize=1", "batch_normalize=0")
    trainer = Trainer(cfg, _data(), tmp_path / "run", progress=False, save_every=0)
    plain = netspec.build(cfg, seed=0)
    groups = [{"params": [t for n, t in plain.named_parameters() if n.startswith(f"layers.{i}.") and n.endswith(
        suffix)], "weight_decay": wd, "lr_mult": mult} for i, mult in ((0, 1.0), (1, 0.5))
        for suffix, wd in (("weight", 0.01), ("bias", 0.0))]
    sgd = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    stream = trainer.task.steps(1, 5, 0, 1, 1)  # the same images as one mini-batch of 8
    for k in range(1, 6):
        trainer.train_step(k)
        (x, y), = next(stream)
        for g in sgd.param_groups:
            g["lr"] = _rate(k) * g["lr_mult"]
        sgd.zero_grad()
        F.cross_entropy(plain(x).flatten(1), y).backward()
        sgd.step()
    mine = dict(plain.named_parameters())
    for name, param in trainer.net.named_parameters():
        torch.testing.assert_close(param.detach(), mine[name].detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_ema_follows_darknets_schedule():
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = DarknetEMA(lin, 0.5, max_batches=3000)  # start 1500, copied back at 2000
    assert ema.start == 1500 and ema.apply_at == 2000
    assert ema.after_step(lin, 1499) is None and not ema.initialised
    with torch.no_grad():
        lin.weight.fill_(4.0)
    assert ema.after_step(lin, 1500) == "EMA initialised" and float(ema.average["weight"]) == 4.0
    with torch.no_grad():
        lin.weight.fill_(8.0)
    ema.after_step(lin, 1501)
    assert float(ema.average["weight"]) == 6.0  # 0.5 * 4 + 0.5 * 8
    assert float(ema.network(lin).weight.detach()) == 6.0 and float(lin.weight.detach()) == 8.0
    assert ema.after_step(lin, 2000) == "EMA applied to the weights" and float(lin.weight.detach()) == 6.0
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema.after_step(lin, 2001)
    assert float(ema.average["weight"]) == 6.0  # Darknet stops averaging after the copy
    short = DarknetEMA(lin, 0.5, max_batches=100)  # no copy-back point after the start: average to the end
    assert short.start == 50 and short.apply_at is None


def test_ema_weights_written_and_restored_on_resume(tmp_path):
    cfg = CFG.format(batch=4, subdivisions=1, steps=6, extra="ema_alpha=0.9")
    first = Trainer(cfg, _data(), tmp_path / "run", progress=False, save_every=4)
    result = first.run()
    assert result["ema_weights"].endswith("net_ema.weights")
    straight = first.ema.average
    cfg_longer = cfg.replace("max_batches=6", "max_batches=6")
    again = Trainer(cfg_longer, _data(), tmp_path / "run", progress=False, resume=True)
    assert again.ema.initialised
    for name in straight:
        assert torch.equal(straight[name], again.ema.average[name])


def test_backup_names_and_schedule(tmp_path):
    assert [n for n in range(1, 30001) if numbered_backup_due(n)][:3] == [1000, 2000, 3000]
    assert numbered_backup_due(9000) and not numbered_backup_due(11000) and numbered_backup_due(20000)
    net = netspec.build(CFG.format(batch=4, subdivisions=1, steps=1, extra=""))
    folder = BackupFolder(tmp_path, "yolo-demo", images_per_step=4)
    assert folder.after_step(net, 99) == []
    assert [p.name for p in folder.after_step(net, 100)] == ["yolo-demo_last.weights"]
    assert [p.name for p in folder.after_step(net, 1000)] == ["yolo-demo_1000.weights", "yolo-demo_last.weights"]
    header = read_header((tmp_path / "yolo-demo_1000.weights").read_bytes(), "x")
    assert header.seen == 4000  # Darknet's header: images seen
    loaded = netspec.build(CFG.format(batch=4, subdivisions=1, steps=1, extra=""), seed=5)
    netspec.load_darknet_weights(loaded, tmp_path / "yolo-demo_last.weights")
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b), name


def test_run_leaves_darknets_backup_folder_log_and_chart(tmp_path):
    cfg_path = tmp_path / "tiny-net.cfg"
    cfg_path.write_text(CFG.format(batch=4, subdivisions=2, steps=5, extra=""))
    result = Trainer(cfg_path, _data(), tmp_path / "run", progress=False, save_every=2).run()
    out = tmp_path / "run"
    assert (out / "tiny-net_final.weights").is_file() and result["weights"] == str(out / "tiny-net_final.weights")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in steps] == [1, 2, 3, 4, 5]
    assert {"loss", "avg_loss", "lr", "images", "images_per_s", "time_left_s"} <= set(steps[0])
    assert steps[0]["avg_loss"] == pytest.approx(steps[0]["loss"])  # Darknet: the first average is the loss
    assert steps[1]["avg_loss"] == pytest.approx(0.9 * steps[0]["loss"] + 0.1 * steps[1]["loss"])
    assert steps[2]["lr"] == pytest.approx(0.1) and steps[4]["images"] == 20
    assert any("accuracy" in r for r in records)
    pytest.importorskip("matplotlib")
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quiet_prints_no_progress(tmp_path):
    """Issue 10: ``Trainer(progress=False)`` (``--quiet``) was never stored, so the bar was drawn anyway."""
    stream = io.StringIO()
    Trainer(CFG.format(batch=4, subdivisions=1, steps=3, extra=""), _data(), tmp_path / "run", progress=False,
            stream=stream, save_every=0).run()
    text = stream.getvalue()
    assert "3/3" not in text and "it/s" not in text and "img/s" not in text
    assert "trained steps 1..3" in text  # the summary is not progress
    shown = io.StringIO()
    Trainer(CFG.format(batch=4, subdivisions=1, steps=3, extra=""), _data(), tmp_path / "run2", progress=True,
            stream=shown, save_every=0).run()
    assert "3/3" in shown.getvalue()


def test_darknet_data_file_on_a_classifier_names_the_accepted_formats(tmp_path, capsys):
    """Issue 10: it said the file "contains pickled data"."""
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CFG.format(batch=4, subdivisions=1, steps=3, extra=""))
    data = tmp_path / "obj.data"
    data.write_text("classes = 2\ntrain = train.txt\nvalid = valid.txt\nnames = obj.names\nbackup = backup/\n")
    assert main(["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "pickled" not in err and "Darknet .data file" in err and ".npz with arrays x" in err and "digits" in err
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01binary")
    with pytest.raises(TrainError, match="not an .npz archive.*'digits'"):
        Trainer(cfg, str(tmp_path / "junk.bin"), tmp_path / "o")


def test_resuming_a_finished_run_says_it_is_complete(tmp_path, capsys):
    """Issue 10: it printed "trained steps 501..500"."""
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CFG.format(batch=4, subdivisions=1, steps=3, extra=""))
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 2, 6, 6), np.float32), y=np.arange(8) % 3)
    args = ["train", str(cfg), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "already complete" in err and "step 3 of max_batches=3" in err and "4..3" not in err
    assert main([*args, "--resume", "--max-batches", "5", "--json"]) == 0  # a flag extends the finished run
    out = capsys.readouterr()
    assert json.loads(out.out)["steps"] == 2 and "trained steps 4..5" in out.err


def test_flags_override_net_values(tmp_path):
    trainer = Trainer(CFG.format(batch=4, subdivisions=1, steps=3, extra=""), _data(), tmp_path / "run",
                      progress=False, overrides={"max_batches": 2, "learning_rate": 0.05, "burn_in": 0})
    assert trainer.max_steps == 2 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(TrainError, match="cannot override"):
        Trainer(CFG.format(batch=4, subdivisions=1, steps=3, extra=""), _data(), tmp_path / "r2",
                overrides={"hue": 0.1})
    assert math.isclose(trainer.run()["steps"], 2)


def test_engine_keys_netspec_does_not_do_are_errors_at_their_line(tmp_path):
    cfg = CFG.format(batch=4, subdivisions=1, steps=3, extra="weights_reject_freq=10\nloss_scale=128")
    with pytest.raises(netspec.CfgError) as info:
        Trainer(cfg, _data(), tmp_path / "run")
    text = str(info.value)
    assert "<cfg>:16:1: [net]: weights_reject_freq=10" in text and "<cfg>:17:1: [net]: loss_scale=128" in text
    with pytest.raises(netspec.CfgError, match=r":16:1: \[net\]: hue=.1: the classifier trainer does not augment"):
        Trainer(CFG.format(batch=4, subdivisions=1, steps=3, extra="hue=.1"), _data(), tmp_path / "run")
    Trainer(CFG.format(batch=4, subdivisions=1, steps=3, extra="flip=1\nuse_cuda_graph=1"), _data(),
            tmp_path / "ok")  # Darknet's default value / a speed-only engine key: nothing to refuse


def test_a_non_finite_loss_stops_the_run(tmp_path):
    cfg = CFG.format(batch=4, subdivisions=1, steps=6, extra="")
    data = _data()
    data.x[3] = float("nan")  # one poisoned image: the step that draws it has a NaN loss
    trainer = Trainer(cfg, data, tmp_path / "run", progress=False, save_every=1)
    with pytest.raises(TrainError, match=r"iteration \d: the loss is nan.*--resume"):
        trainer.run()
    assert trainer.step < 6 and not (tmp_path / "run" / "net_final.weights").exists()


@pytest.mark.parametrize("kind", ["weights", "checkpoint", "safetensors"])
def test_initial_weights_full_or_cut_in_any_format(tmp_path, kind):
    cfg = CFG.format(batch=4, subdivisions=1, steps=2, extra="")
    first = Trainer(cfg, _data(), tmp_path / "first", progress=False, save_every=0)
    first.run()
    source = {"weights": tmp_path / "first" / "net_final.weights", "checkpoint": tmp_path / "first"}.get(kind)
    if kind == "safetensors":
        source = tmp_path / "first.safetensors"
        netspec.checkpoint.export_safetensors(source, first.net)
    trained = first.net.state_dict()
    whole = Trainer(cfg, _data(), tmp_path / "whole", weights=source)
    assert all(torch.equal(v, trained[k]) for k, v in whole.net.state_dict().items() if v.is_floating_point())
    cut = Trainer(cfg, _data(), tmp_path / "cut", weights=source, upto=1)  # a backbone: layer 0 only
    mine = cut.net.state_dict()
    assert torch.equal(mine["layers.0.conv.weight"], trained["layers.0.conv.weight"])
    assert not torch.equal(mine["layers.1.conv.weight"], trained["layers.1.conv.weight"])


def test_amp_and_device_choices(tmp_path):
    cfg = CFG.format(batch=4, subdivisions=2, steps=2, extra="")
    trainer = Trainer(cfg, _data(), tmp_path / "amp", progress=False, save_every=0, amp=True)
    assert trainer.autocast == torch.bfloat16 and trainer.scaler is None  # CPU: bf16 autocast, no loss scaling
    trainer.run()
    assert all(math.isfinite(loss) for _, loss, _ in trainer.history)
    assert trainer.net.layers[0].conv.weight.dtype == torch.float32  # the master weights stay float32
    with pytest.raises(TrainError, match="fp16 needs a CUDA device"):
        Trainer(cfg, _data(), tmp_path / "fp16", amp="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="no CUDA device"):
            Trainer(cfg, _data(), tmp_path / "cuda", device="cuda")


def test_rules_reach_the_trainer_as_in_netspec_params(tmp_path, capsys):
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CFG.format(batch=4, subdivisions=1, steps=1, extra=""))
    trainer = Trainer(cfg, _data(), tmp_path / "run", rules=["0:freeze"])
    assert not trainer.net.layers[0].conv.weight.requires_grad
    assert all("layers.0." not in n for g in trainer.optimizer.param_groups for n in g["names"])
    assert main(["train", str(cfg), "--data", "digits-not-needed.npz", "--out", str(tmp_path / "o"),
                 "--rule", "0-5:lr_mult=2", "--quiet"]) == 1  # the rule parses; the data file is what fails
    assert "digits-not-needed.npz" in capsys.readouterr().err
