"""``[net]`` / ``[network]``: input size, and the optimizer, schedule and augmentation settings."""

from __future__ import annotations

from ..keys import Choice, Flag, Float, FloatList, InitKey, Int, IntList
from .base import Context, Params, Section, SpecError, register

POLICIES = ("constant", "step", "steps", "exp", "poly", "random", "sigmoid", "sgdr")

_T = {"training": True}


@register
class Net(Section):
    name = "net"
    aliases = ("network",)
    is_layer = False
    keys = {
        "width": Int(0, "input width", min=0),
        "height": Int(0, "input height", min=0),
        "channels": Int(0, "input channels", min=0),
        "inputs": Int(0, "flat input size for non-image nets", min=0),
        "batch": Int(1, "images per weight update", min=1, **_T),
        "subdivisions": Int(1, "gradient-accumulation steps per update", min=1, **_T),
        "time_steps": Int(1, "sequence length of recurrent layers", min=1),
        "letter_box": Flag(0, "letterbox images at inference"),
        "adam": Flag(0, "use Adam instead of SGD", **_T),
        "B1": Float(0.9, "Adam beta1", min=0, max=1, **_T),
        "B2": Float(0.999, "Adam beta2", min=0, max=1, **_T),
        "eps": Float(1e-6, "Adam epsilon", min=0, **_T),
        "learning_rate": Float(0.001, "base learning rate", min=0, **_T),
        "momentum": Float(0.9, "SGD momentum", min=0, **_T),
        "decay": Float(0.0001, "weight decay", min=0, **_T),
        "max_batches": Int(0, "number of optimizer steps", min=0, **_T),
        "max_epochs": Int(0, "epochs (classifier training)", min=0, **_T),
        "policy": Choice("constant", "learning-rate policy", choices=POLICIES, **_T),
        "burn_in": Int(0, "warm-up steps", min=0, **_T),
        "power": Float(4.0, "exponent of burn_in and poly/random", **_T),
        "learning_rate_min": Float(1e-5, "sgdr minimum rate", min=0, **_T),
        "sgdr_cycle": Int(None, "sgdr first cycle length (default max_batches)", min=1, **_T),
        "sgdr_mult": Float(2.0, "sgdr cycle growth", min=0, **_T),
        "step": Int(1, "policy=step: steps between scalings; policy=sigmoid: centre", **_T),
        "scale": Float(1.0, "policy=step: factor", **_T),
        "steps": IntList(None, "policy=steps: where the rate changes", **_T),
        "scales": FloatList(None, "policy=steps: factor at each of steps", **_T),
        "seq_scales": FloatList(None, "sequence scaling at each of steps", **_T),
        "gamma": Float(1.0, "policy=exp/sigmoid: factor", **_T),
        "loss_scale": Float(1.0, "fp16 loss scaling", **_T),
        "seen": Int(0, "images already seen", min=0, **_T),
        "beta1": Float(0.9, "legacy Adam beta1 spelling", **_T),
        "init": InitKey(None, "netspec: default initializer of every block's weights", **_T),
        "bias_init": InitKey(None, "netspec: default initializer of every block's biases", **_T),
        # augmentation and data keys (training only; reference §5.3)
        **{k: Float(d, "augmentation / data setting", **_T) for k, d in {
            "angle": 0, "aspect": 1, "saturation": 1, "exposure": 1, "hue": 0, "flip": 1, "blur": 0,
            "gaussian_noise": 0, "mixup": 0, "cutmix": 0, "mosaic": 0, "mosaic_bound": 0, "max_crop": 0,
            "min_crop": 0, "resize_step": 32, "label_smooth_eps": 0, "contrastive": 0,
            "contrastive_jit_flip": 0, "contrastive_jit_sigma": 0, "contrastive_color": 0, "unsupervised": 0,
            "track": 0, "augment_speed": 2, "sequential_subdivisions": 0, "mini_batch": 0,
            # engine keys (reference §5.4) and PJ-only keys
            "try_fix_nan": 0, "weights_reject_freq": 0, "equidistant_point": 0,
            "badlabels_rejection_percentage": 0, "num_sigmas_reject_badlabels": 0, "ema_alpha": 0,
            "use_cuda_graph": 0, "dynamic_minibatch": 0, "optimized_memory": 0, "workspace_size_limit_MB": 1024,
            "attention": 0, "adversarial_lr": 0, "max_chart_loss": 20, "show_receptive_field": 0,
            "notruth": 0, "random": 0, "max_ratio": 0, "min_ratio": 0, "center": 0, "clip": 0,
        }.items()},
    }

    def check(self, p: Params, ctx: Context) -> None:
        # Darknet stops on policy=steps without steps/scales, and reads past the end of scales (a crash)
        # when it has fewer values than steps.
        if p.policy == "steps":
            for key in ("steps", "scales"):
                if not p.given(key):
                    raise SpecError(f"policy=steps needs both steps= and scales= (missing {key}=)", "policy")
        if p.policy in ("steps", "sgdr") and p.steps is not None:
            for key in ("scales", "seq_scales"):
                values = getattr(p, key)
                if values is not None and len(values) < len(p.steps):
                    raise SpecError(f"{key}= has {len(values)} value(s) but steps= has {len(p.steps)}: give one "
                                    f"{key[:-1]} per step", key)

    def input_shape(self, p: Params) -> tuple[int, int, int]:
        """``(c, h, w)`` of the network input; non-image nets use ``inputs=`` as ``(inputs, 1, 1)``."""
        if p.width and p.height and p.channels:
            return (p.channels, p.height, p.width)
        if p.inputs:
            return (p.inputs, 1, 1)
        missing = [k for k in ("width", "height", "channels") if not getattr(p, k)]
        raise SpecError(f"[net] must give width, height and channels (or inputs= for a non-image net); "
                        f"missing {', '.join(missing)}", missing[0] if p.given(missing[0]) else None)
