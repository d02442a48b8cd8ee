"""Checkpoints: self-describing, pickle-free, checksummed, atomic, keep-last-k, newest-intact fallback,
per-block mismatch reports, safetensors export; and a SIGKILL-during-writes crash test."""

from __future__ import annotations

import os
import pickle
import random
import signal
import time

import numpy as np
import pytest
import torch

import netspec
from netspec.checkpoint import export_safetensors, list_checkpoints, load_checkpoint, save_checkpoint
from netspec.errors import CheckpointError
from netspec.safetensors_io import load_safetensors, save_safetensors

CFG = """[net]
width=8
height=8
channels=3
learning_rate=0.05
policy=steps
steps=3,6
scales=.5,.5
max_batches=10
[convolutional]
filters={filters}
size=3
pad=1
batch_normalize=1
activation=leaky
[avgpool]
[connected]
output=4
activation=linear
"""


def make(filters: int = 8):
    net = netspec.build(CFG.format(filters=filters))
    opt = netspec.make_optimizer(net)
    return net, opt, netspec.make_scheduler(opt, net)


def train_steps(net, opt, sched, n: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        loss = net(x).square().mean() + torch.rand(()).item() * 0  # touches the global RNG too
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_roundtrip_rebuilds_network_and_restores_everything(tmp_path):
    net, opt, sched = make()
    train_steps(net, opt, sched, 3)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path / "a.ckpt", net, opt, sched, step=3, epoch=0, note="hi", lrs=[0.1, 0.05])
    expected_rng = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt = load_checkpoint(path)
    assert ckpt.state == {"step": 3, "epoch": 0, "note": "hi", "lrs": [0.1, 0.05]}
    for (name, a), b in zip(net.state_dict().items(), ckpt.network.state_dict().values()):
        assert torch.equal(a, b), name
    net2 = ckpt.network
    opt2 = netspec.make_optimizer(net2)
    sched2 = netspec.make_scheduler(opt2, net2)
    random.seed(0)
    ckpt.restore(opt2, sched2)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_rng
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    # continuing both gives bitwise-identical parameters
    train_steps(net, opt, sched, 3, seed=9)
    train_steps(net2, opt2, sched2, 3, seed=9)
    for (name, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), name


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name, writer in (("evil.ckpt", lambda f: pickle.dump({"model": Payload()}, f)),
                         ("evil.pt", lambda f: torch.save({"model": Payload()}, f))):
        path = tmp_path / name
        with open(path, "wb") as fh:
            writer(fh)
        with pytest.raises(CheckpointError, match="refuses to unpickle"):
            load_checkpoint(path)
        assert not marker.exists()
    # the payload really would have fired
    with open(tmp_path / "evil.ckpt", "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_corruption_is_detected_and_directory_falls_back(tmp_path):
    net, opt, sched = make()
    for step in (1, 2, 3):
        train_steps(net, opt, sched, 1)
        save_checkpoint(tmp_path, net, opt, sched, step=step)
    newest = tmp_path / "ckpt-000000003.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) - 10] ^= 0xFF  # one flipped bit in the tensor data
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(newest)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 2 and ckpt.skipped and ckpt.skipped[0][0] == newest
    (tmp_path / "ckpt-000000002.ckpt").write_bytes(b"\x10\x00")  # truncated
    assert load_checkpoint(tmp_path).step == 1


def test_keep_last_survives_restarts(tmp_path):
    net, opt, sched = make()
    for step in range(1, 6):
        save_checkpoint(tmp_path, net, opt, sched, step=step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    net, opt, sched = make()  # a "restarted" process knows nothing of the earlier files
    save_checkpoint(tmp_path, net, opt, sched, step=6, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 6]
    (tmp_path / ".ckpt-000000007.ckpt.x1y2.tmp").write_bytes(b"torn")  # left by a killed write
    save_checkpoint(tmp_path, net, opt, sched, step=7, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000006.ckpt", "ckpt-000000007.ckpt"]


def test_partial_load_reports_per_block(tmp_path):
    net, opt, sched = make(8)
    path = save_checkpoint(tmp_path / "a.ckpt", net, opt, sched, step=0)
    other = netspec.build(CFG.format(filters=6))
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_into(other)
    text = str(info.value)
    assert "[convolutional] #0 (line 10): shape of layers.0.conv.weight: checkpoint 8x3x3x3, network 6x3x3x3" in text
    report = ckpt.load_into(other, strict=False)
    assert not report.ok and "layers.2.linear.bias" in report.loaded
    assert torch.equal(other.layers[2].linear.bias, net.layers[2].linear.bias)
    assert {name for name, _, _ in report.mismatched} >= {"layers.0.conv.weight", "layers.0.bn.weight"}


def test_safetensors_export_carries_the_cfg(tmp_path):
    net, _, _ = make()
    export_safetensors(tmp_path / "w.safetensors", net)
    tensors, metadata = load_safetensors(tmp_path / "w.safetensors")
    assert metadata["netspec.cfg"] == net.cfg_text and set(tensors) == set(net.state_dict())
    rebuilt = load_checkpoint(tmp_path / "w.safetensors").network
    assert torch.equal(rebuilt.layers[0].conv.weight, net.layers[0].conv.weight)
    st = pytest.importorskip("safetensors.torch")  # the reference implementation reads it too
    assert torch.equal(st.load_file(tmp_path / "w.safetensors")["layers.2.linear.weight"],
                       net.layers[2].linear.weight)


def test_safetensors_io_roundtrip_dtypes(tmp_path):
    tensors = {"f": torch.randn(2, 3), "d": torch.randn(2, dtype=torch.float64), "h": torch.randn(3).half(),
               "b": torch.randn(3).bfloat16(), "i": torch.arange(4), "u": torch.arange(3, dtype=torch.uint8),
               "q": torch.tensor([True, False]), "s": torch.tensor(2.5), "e": torch.empty(0, 4),
               "t": torch.randn(3, 4).T}
    save_safetensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    loaded, metadata = load_safetensors(tmp_path / "x.safetensors")
    assert metadata == {"k": "v"}
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_netspec_files_read_with_the_safetensors_package_and_back(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from netspec.safetensors_io import CHECKSUM_KEY

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).bfloat16()}
    save_safetensors(tmp_path / "ours.safetensors", tensors, {"k": "v"})
    theirs = load_file(tmp_path / "ours.safetensors")
    assert set(theirs) == set(tensors) and all(torch.equal(theirs[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as f:
        assert f.metadata()["k"] == "v" and CHECKSUM_KEY in f.metadata()
    save_file(tensors, tmp_path / "theirs.safetensors", {"k": "w"})
    loaded, metadata = load_safetensors(tmp_path / "theirs.safetensors")
    assert metadata == {"k": "w"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_tied_tensors_are_saved_once_per_name(tmp_path):
    shared = torch.randn(4)
    save_safetensors(tmp_path / "t.safetensors", {"x": shared, "y": shared, "z": shared[:2]})
    loaded, _ = load_safetensors(tmp_path / "t.safetensors")
    assert torch.equal(loaded["x"], shared) and torch.equal(loaded["y"], shared)
    assert torch.equal(loaded["z"], shared[:2])


def test_a_checkpoint_whose_checksum_key_is_damaged_is_refused(tmp_path):
    """The package writes metadata in any order, so a bit flip can hit the checksum's own key."""
    net, _, _ = make()
    data = save_checkpoint(tmp_path / "a.ckpt", net).read_bytes()
    at = data.index(b"netspec.content_sha256") + len("netspec.content_sha25")
    (tmp_path / "a.ckpt").write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    with pytest.raises(CheckpointError, match="no netspec checksum .* damaged"):
        load_checkpoint(tmp_path / "a.ckpt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="netspec did not write"):
        load_checkpoint(tmp_path / "plain.safetensors")


def _legacy_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A file as netspec wrote it before it used the safetensors package: its checksum covers the header as laid
    out and the data section."""
    import hashlib
    import json
    import struct

    header, data, offset = {"__metadata__": dict(metadata)}, b"", 0
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    digest.update(data)
    header["__metadata__"]["netspec.sha256"] = digest.hexdigest()
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_files_of_the_former_writer_are_verified(tmp_path):
    tensors = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    data = _legacy_file(tensors, {"k": "v"})
    (tmp_path / "old.safetensors").write_bytes(data)
    loaded, metadata = load_safetensors(tmp_path / "old.safetensors")
    assert metadata == {"k": "v"} and torch.equal(loaded["w"], tensors["w"])
    (tmp_path / "old.safetensors").write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_safetensors(tmp_path / "old.safetensors")


def _writer(directory, seed: int) -> None:  # runs in a forked child until it is killed
    try:
        net, opt, sched = make(32)
        step = seed * 1000
        while True:
            step += 1
            save_checkpoint(directory, net, opt, sched, step=step, keep_last=2)
    finally:
        os._exit(1)


def test_sigkill_during_checkpoint_writes_never_leaves_a_bad_newest(tmp_path):
    rng = random.Random(1234)
    kills = 0
    for round_ in range(50):
        pid = os.fork()
        if pid == 0:
            _writer(tmp_path, round_)
        time.sleep(rng.uniform(0.0, 0.05) if round_ else 0.3)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        found = list_checkpoints(tmp_path)
        if found:
            newest = found[-1][1]
            ckpt = load_checkpoint(newest)  # the newest file is intact, not merely some older one
            assert ckpt.step == found[-1][0]
            assert load_checkpoint(tmp_path).path == newest
    assert kills == 50 and list_checkpoints(tmp_path)


def test_checkpoint_rebuilds_at_the_size_the_net_was_built_at(tmp_path):
    # [net] says 8x8 but the net is built at 12x12: a [connected] layer's shape depends on it
    cfg = "[net]\nwidth=8\nheight=8\nchannels=1\n[connected]\noutput=3\nactivation=linear\n"
    net = netspec.build(cfg, width=12, height=12, darknet_bugs=False)
    save_checkpoint(tmp_path / "c.ckpt", net)
    back = load_checkpoint(tmp_path / "c.ckpt").network
    assert back.input_shape == (1, 12, 12) and back.darknet_bugs is False
    assert torch.equal(back.layers[0].linear.weight, net.layers[0].linear.weight)


def test_nonfinite_checkpoint_tensors_are_reported(tmp_path):
    net = netspec.build("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\nsize=1\n")
    with torch.no_grad():
        net.layers[0].conv.weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "n.ckpt", net)
    with pytest.raises(CheckpointError, match=r"1 NaN/Inf value\(s\) in layers.0.conv.weight"):
        _ = load_checkpoint(tmp_path / "n.ckpt").network
    ckpt = load_checkpoint(tmp_path / "n.ckpt")
    ckpt.load_into(netspec.build(ckpt.cfg_text), allow_nonfinite=True)


def test_bad_save_arguments_are_netspec_errors_and_write_nothing(tmp_path):
    net, opt, sched = make()
    with pytest.raises(netspec.NetspecError, match="needs step="):
        save_checkpoint(tmp_path, net, opt, sched)
    with pytest.raises(netspec.NetspecError, match="keep_last must be >= 1"):
        save_checkpoint(tmp_path, net, opt, sched, step=1, keep_last=0)
    with pytest.raises(netspec.NetspecError, match="metadata must map str to str"):
        save_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {"k": 1})
    with pytest.raises(netspec.NetspecError, match="'__metadata__' cannot be a tensor name"):
        save_safetensors(tmp_path / "y.safetensors", {"__metadata__": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []
