"""Darknet's LR schedule: whole curves against the reference §5.2 formulas, per policy, with burn_in and
two parameter groups of different multipliers, through real optimizer steps."""

from __future__ import annotations

import math

import pytest
import torch

import netspec
from netspec.cli import main
from netspec.errors import CfgError
from netspec.schedule import make_scheduler, random_uniform

STEPS = 60


def cfg(net_keys: str) -> str:
    return ("[net]\nwidth=4\nheight=4\nchannels=1\nlearning_rate=0.1\n" + net_keys +
            "\n[convolutional]\nfilters=2\nsize=1\nlearning_rate=0.25\n[convolutional]\nfilters=2\nsize=1\n")


def reference(policy: str, k: int, *, lr0=0.1, burn_in=0, power=4.0, max_batches=STEPS, step=1, scale=1.0,
              steps=(), scales=(), gamma=1.0, lr_min=1e-5, cycle=None, mult=2.0) -> float:
    """The reference text's formulas, written out independently of netspec.schedule."""
    if k < burn_in:
        return lr0 * (k / burn_in) ** power
    if policy == "constant":
        return lr0
    if policy == "step":
        return lr0 * scale ** (k // step)
    if policy == "steps":
        out = lr0
        for s, f in zip(steps, scales):
            if s > k:
                break
            out *= f
        return out
    if policy == "exp":
        return lr0 * gamma ** k
    if policy == "poly":
        return lr0 * (1 - k / max_batches) ** power
    if policy == "sigmoid":
        return lr0 / (1 + math.exp(gamma * (k - step)))
    if policy == "sgdr":
        start, length = 0, cycle or max_batches
        while start + length < k:
            start += length
            length *= mult
        return lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * (k - start) / length))
    raise AssertionError(policy)


CASES = {
    "constant": ("policy=constant", {}),
    "step": ("policy=step\nstep=7\nscale=0.5", {"step": 7, "scale": 0.5}),
    "steps": ("policy=steps\nsteps=10,25,40\nscales=.1,3,.5", {"steps": (10, 25, 40), "scales": (.1, 3, .5)}),
    "steps_minus_one": ("policy=steps\nsteps=-1,20,40\nscales=.1,10,.1", {"steps": (-1, 20, 40),
                                                                         "scales": (.1, 10, .1)}),
    "exp": ("policy=exp\ngamma=0.95", {"gamma": 0.95}),
    "poly": (f"policy=poly\npower=2\nmax_batches={STEPS}", {"power": 2.0}),
    "sigmoid": ("policy=sigmoid\ngamma=0.3\nstep=30", {"gamma": 0.3, "step": 30}),
    "sgdr": ("policy=sgdr\nsgdr_cycle=8\nsgdr_mult=2\nlearning_rate_min=0.001",
             {"cycle": 8, "mult": 2.0, "lr_min": 0.001}),
}


def run_curve(text: str, steps: int = STEPS) -> list[list[float]]:
    """Each group's lr as seen by the k-th optimizer.step(), k = 1..steps."""
    net = netspec.build(text)
    opt = netspec.make_optimizer(net)
    sched = make_scheduler(opt, net)
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen, opt


@pytest.mark.parametrize("burn_in", [0, 12])
@pytest.mark.parametrize("name", sorted(CASES))
def test_policy_curve_matches_reference(name, burn_in):
    keys, kw = CASES[name]
    policy = keys.splitlines()[0].split("=")[1]
    extra = ("" if "power" in keys else "\npower=4") + ("" if "max_batches" in keys else f"\nmax_batches={STEPS}")
    text = cfg(f"{keys}\nburn_in={burn_in}{extra}")
    seen, opt = run_curve(text)
    mults = [g["lr_mult"] for g in opt.param_groups]
    assert sorted(set(mults)) == [0.25, 1.0]  # two groups with different multipliers
    for k, lrs in enumerate(seen, 1):
        expected = reference(policy, k, burn_in=burn_in, **kw)
        for lr, mult in zip(lrs, mults):
            assert lr == expected * mult, (k, lr, expected, mult)


def test_known_values_steps_with_minus_one_and_scale_above_one():
    seen, opt = run_curve(cfg("policy=steps\nsteps=-1,20,40\nscales=.1,10,.1\nmax_batches=50"), 50)
    base = [lrs[[g["lr_mult"] for g in opt.param_groups].index(1.0)] for lrs in seen]
    assert base[0] == pytest.approx(0.01) and base[18] == pytest.approx(0.01)  # k=1, k=19
    assert base[19] == pytest.approx(0.1) and base[39] == pytest.approx(0.01)  # k=20, k=40


def test_burn_in_first_steps_are_k_over_burn_in():
    seen, opt = run_curve(cfg("burn_in=4\npower=2\nmax_batches=6"), 6)
    i = [g["lr_mult"] for g in opt.param_groups].index(1.0)
    assert [lrs[i] for lrs in seen] == pytest.approx([0.1 / 16, 0.1 / 4, 0.1 * 9 / 16, 0.1, 0.1, 0.1])


def test_random_policy_is_reproducible_and_in_range():
    seen, opt = run_curve(cfg("policy=random\npower=1\nmax_batches=20"), 20)
    i = [g["lr_mult"] for g in opt.param_groups].index(1.0)
    assert [lrs[i] for lrs in seen] == [0.1 * random_uniform(0, k) for k in range(1, 21)]
    assert len({lrs[i] for lrs in seen}) == 20


def test_state_dict_resume_continues_the_curve():
    text = cfg("policy=sgdr\nsgdr_cycle=5\nmax_batches=30")
    full, _ = run_curve(text, 30)
    net = netspec.build(text)
    opt = netspec.make_optimizer(net)
    sched = make_scheduler(opt, net)
    for _ in range(13):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = netspec.make_optimizer(net)
    sched2 = make_scheduler(opt2, net)
    sched2.load_state_dict(state)
    for group, lr in zip(opt2.param_groups, full[13]):  # restore() sets the lrs of the next step
        group["lr"] = lr
    rest = []
    for _ in range(17):
        rest.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    assert rest == full[13:]
    assert all(isinstance(v, (int, float, str, list, type(None))) for v in state["settings"].values())


@pytest.mark.parametrize("keys, message", [
    ("policy=steps\nsteps=10,20\nscales=.1", "scales= has 1 value|steps= has 2 values"),
    ("policy=steps", "steps= and scales="),
    ("policy=poly", "needs max_batches"),
])
def test_invalid_schedules_are_reported(keys, message):
    # the spec builder may already reject some of these; either way the user gets a positioned error
    with pytest.raises(CfgError, match=message) as info:
        net = netspec.build(cfg(keys))
        make_scheduler(torch.optim.SGD(net.parameters(), lr=0.1), net)
    assert info.value.line is not None


def test_schedule_command_csv(tmp_path, capsys):
    path = tmp_path / "s.cfg"
    path.write_text(cfg("policy=steps\nsteps=-1,5\nscales=.5,4\nmax_batches=8"))
    assert main(["schedule", str(path)]) == 0
    rows = capsys.readouterr().out.split()
    assert rows[0] == "step,lr" and rows[1] == "1,0.05" and rows[5] == "5,0.2" and len(rows) == 9


def test_schedule_command_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.cfg"
    path.write_text(cfg("policy=poly\nmax_batches=50\nburn_in=5"))
    assert main(["schedule", str(path), "--plot", str(tmp_path / "lr.png")]) == 0
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
