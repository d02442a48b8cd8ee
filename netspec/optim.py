"""Optimizer parameter groups from a cfg: Darknet's per-layer multipliers plus netspec's rules.

For every parameter, in this order (later steps refine earlier ones; multipliers compose by multiplication):

1. **Darknet defaults.** Weight decay ``[net] decay`` on the weights of the blocks whose section says
   ``decays_weights`` (conv, connected, local, shortcut and implicit); none on biases and BN
   parameters.  Learning-rate multiplier 1.
2. **Block keys.** ``learning_rate=`` (Darknet's per-layer multiplier) or ``lr_mult=`` (same meaning; an error
   if both are given and differ), ``decay_mult=``, ``freeze=1``.  The multipliers apply to every parameter of
   the block, BN included.
3. **Propagating keys.** The last block with ``stopbackward=1`` freezes itself and every earlier block;
   ``train_only_bn=1`` and ``onlyforward=1`` freeze their blocks' parameters (``train_only_bn`` also every
   earlier block's); BN running statistics still adapt.  The network itself passes no gradient back through
   an ``onlyforward=1`` or ``stopbackward=1`` block, as Darknet skips its backward.  ``stopbackward=N``
   (N > 1), ``dont_update=N`` and
   ``burnin_update=N`` delay the updates instead (see :func:`drop_delayed_grads`).
4. **Rules** (API ``rules=`` or CLI ``--rule``), in the order given: each multiplies ``lr_mult`` and
   ``decay_mult`` of the parameters it selects, and ``freeze=0|1`` overrides every earlier freeze decision
   (so a rule can unfreeze layers a ``stopbackward`` froze).  A rule selecting nothing is an error.

Frozen parameters get ``requires_grad=False`` and are left out of the optimizer.  Parameters with equal
final settings share one group; each group records ``lr_mult``, ``decay_mult``, the ``blocks`` and
parameter ``names`` it holds; ``make_scheduler`` keeps ``lr = rate * lr_mult`` exact.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn as nn

from .errors import CfgError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

ROLES = ("weight", "bias", "bn")


@dataclass
class Rule:
    """Selects parameters (all given selectors must match) and adjusts them.

    ``layers``: inclusive block index range; ``section``: section name (aliases accepted); ``role``:
    ``weight``, ``bias`` or ``bn``; ``glob``: fnmatch pattern over parameter names (``layers.3.conv.*``).
    """

    layers: tuple[int, int] | None = None
    section: str | None = None
    role: str | None = None
    glob: str | None = None
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    freeze: bool | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in ROLES:
            raise CfgError(f"rule {self.describe()}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.section is not None:
            from .sections.base import registry

            known = registry()
            if self.section not in known:
                from .keys import did_you_mean

                raise CfgError(f"rule {self.describe()}: unknown section '{self.section}'"
                                 f"{did_you_mean(self.section, known)}")
            self.section = known[self.section].name
        if self.layers is not None and self.layers[0] > self.layers[1]:
            raise CfgError(f"rule {self.describe()}: empty layer range {self.layers[0]}-{self.layers[1]}")
        if min(self.lr_mult, self.decay_mult) < 0:
            raise CfgError(f"rule {self.describe()}: multipliers must be >= 0")
        if all(v is None for v in (self.layers, self.section, self.role, self.glob)):
            raise CfgError(f"rule {self.describe()}: give at least one selector (layers, section, role, glob)")

    def describe(self) -> str:
        if self.text:
            return f"'{self.text}'"
        sel = {k: v for k, v in (("layers", self.layers), ("section", self.section), ("role", self.role),
                                 ("glob", self.glob)) if v is not None}
        return str(sel)

    def matches(self, info: ParamInfo) -> bool:
        if self.layers is not None and not self.layers[0] <= info.block <= self.layers[1]:
            return False
        if self.section is not None and info.section != self.section:
            return False
        if self.role is not None and info.role != self.role:
            return False
        return self.glob is None or fnmatch.fnmatchcase(info.name, self.glob)

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``SELECTORS:SETTINGS``, e.g. ``0-74:lr_mult=0.1``, ``section=connected,role=bias:decay_mult=0``,
        ``glob=layers.1*.bn.*:freeze``.  A bare number or range selects blocks."""
        if ":" not in text:
            raise CfgError(f"rule '{text}': expected SELECTORS:SETTINGS, e.g. 0-74:lr_mult=0.1")
        selectors, settings = text.split(":", 1)
        kwargs: dict[str, Any] = {"text": text}
        for part in filter(None, (s.strip() for s in selectors.split(","))):
            key, _, value = part.partition("=")
            if not value:
                key, value = "layers", part
            if key == "layers":
                m = re.fullmatch(r"(\d+)(?:-(\d+))?", value)
                if not m:
                    raise CfgError(f"rule '{text}': layer range must look like 12 or 0-74, got {value!r}")
                kwargs["layers"] = (int(m.group(1)), int(m.group(2) or m.group(1)))
            elif key in ("section", "role", "glob"):
                kwargs[key] = value
            else:
                raise CfgError(f"rule '{text}': unknown selector '{key}' (layers, section, role, glob)")
        for part in filter(None, (s.strip() for s in settings.split(","))):
            key, _, value = part.partition("=")
            try:
                if key in ("lr_mult", "decay_mult"):
                    kwargs[key] = float(value)
                elif key == "freeze":
                    if value not in ("", "0", "1"):
                        raise ValueError
                    kwargs["freeze"] = value != "0"
                else:
                    raise KeyError(key)
            except ValueError:
                raise CfgError(f"rule '{text}': bad value for {key}: {value!r}") from None
            except KeyError:
                raise CfgError(f"rule '{text}': unknown setting '{key}' (lr_mult, decay_mult, freeze)") from None
        return cls(**kwargs)


RuleLike = Union[Rule, str, dict]


@dataclass
class ParamInfo:
    """Where one parameter's final settings came from."""

    name: str
    param: nn.Parameter
    block: int
    section: str
    role: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    decayed: bool = False
    frozen: bool = False
    update_from: int = 0  # first optimizer step (1-based) that may change it; 0: from the start
    sources: list[str] = field(default_factory=list)

    def weight_decay(self, base_decay: float) -> float:
        return base_decay * self.decay_mult if self.decayed else 0.0


def _role(name: str) -> str:
    if ".bn." in f".{name}":
        return "bn"
    return "bias" if name.endswith("bias") else "weight"


def _where(spec, key: str) -> str:
    opt = spec.p.option(key)
    return f"{key}={opt.raw} (#{spec.index}, line {opt.line})" if opt else key


def _as_rule(rule: RuleLike) -> Rule:
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return Rule.parse(rule)
    if isinstance(rule, dict):
        return Rule(**rule)
    raise CfgError(f"a rule must be a Rule, a 'SELECTORS:SETTINGS' string or a dict, got {type(rule).__name__}")


def _block_problems(net) -> list[Problem]:
    problems = []
    for spec in net.spec.layers:
        p = spec.p
        if p.given("learning_rate") and p.given("lr_mult") and p.learning_rate != p.lr_mult:
            problems.append(spec.problem(f"lr_mult={p.lr_mult:g} disagrees with learning_rate={p.learning_rate:g} "
                                         "(both are this block's learning-rate multiplier; give one)", "lr_mult"))
    return problems


def describe_parameters(net: Network, rules: Iterable[RuleLike] | None = None) -> list[ParamInfo]:
    """Every distinct parameter of ``net`` with its final multipliers, freeze state and their sources."""
    problems = _block_problems(net)
    if problems:
        raise CfgError(problems)
    rule_list = [_as_rule(r) for r in (rules or ())]
    specs = net.spec.layers
    infos: list[ParamInfo] = []
    for name, param in net.named_parameters():  # shared tensors appear once
        parts = name.split(".")
        block = int(parts[1]) if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit() else -1
        spec = specs[block] if block >= 0 else None
        info = ParamInfo(name, param, block, spec.type if spec else "", _role(name))
        # which blocks' weights are decayed is the section's own fact (Section.decays_weights)
        info.decayed = info.role == "weight" and spec is not None and spec.section.decays_weights
        if spec is not None:
            p = spec.p
            for key in ("learning_rate", "lr_mult"):
                if p.given(key):
                    info.lr_mult = getattr(p, key)
                    info.sources.append(_where(spec, key))
                    break
            if p.given("decay_mult"):
                info.decay_mult = p.decay_mult
                info.sources.append(_where(spec, "decay_mult"))
            if p.freeze:
                info.frozen = True
                info.sources.append(_where(spec, "freeze"))
            if p.onlyforward:
                info.frozen = True
                info.sources.append(_where(spec, "onlyforward"))
        infos.append(info)
    _propagate(specs, infos, net.net.burn_in)
    for rule in rule_list:
        hits = [i for i in infos if rule.matches(i)]
        if not hits:
            raise CfgError(f"rule {rule.describe()} matches no parameter of the network")
        for info in hits:
            info.lr_mult *= rule.lr_mult
            info.decay_mult *= rule.decay_mult
            if rule.freeze is not None:
                info.frozen = rule.freeze
            info.sources.append(f"rule {rule.describe()}")
    return infos


def _propagate(specs, infos: list[ParamInfo], burn_in: int) -> None:
    """stopbackward / train_only_bn reach earlier blocks; delayed-update keys set ``update_from``."""
    stop = [s for s in specs if s.p.stopbackward == 1]
    only_bn = [s for s in specs if s.p.train_only_bn]
    delayed_stop = [s for s in specs if s.p.stopbackward > 1]
    for info in infos:
        if info.block < 0:
            continue
        if stop and info.block <= stop[-1].index:
            info.frozen = True
            info.sources.append(_where(stop[-1], "stopbackward"))
        if only_bn and info.block <= only_bn[-1].index:
            info.frozen = True
            info.sources.append(_where(only_bn[-1], "train_only_bn"))
        if delayed_stop and info.block <= delayed_stop[-1].index:
            info.update_from = max(info.update_from, delayed_stop[-1].p.stopbackward)
            info.sources.append(_where(delayed_stop[-1], "stopbackward"))
        p = specs[info.block].p
        if p.dont_update:
            info.update_from = max(info.update_from, p.dont_update + 1)
            info.sources.append(_where(specs[info.block], "dont_update"))
        if p.burnin_update:
            info.update_from = max(info.update_from, p.burnin_update * burn_in)
            info.sources.append(_where(specs[info.block], "burnin_update"))


def param_groups(net: Network, rules: Iterable[RuleLike] | None = None) -> list[dict[str, Any]]:
    """torch optimizer parameter groups for ``net`` (see the module docstring for the semantics).

    Each group: ``params``, ``lr`` (``[net] learning_rate * lr_mult``), ``weight_decay``, and for the record
    ``lr_mult``, ``decay_mult``, ``update_from``, ``blocks``, ``names``.  Frozen parameters get
    ``requires_grad=False`` and appear in no group.
    """
    base_lr, base_decay = net.net.learning_rate, net.net.decay
    infos = describe_parameters(net, rules)
    groups: dict[tuple, dict[str, Any]] = {}
    for info in infos:
        info.param.requires_grad_(not info.frozen)
        if info.frozen:
            continue
        decay = info.weight_decay(base_decay)
        key = (info.lr_mult, decay, info.decay_mult, info.update_from)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"params": [], "lr": base_lr * info.lr_mult, "weight_decay": decay,
                                   "lr_mult": info.lr_mult, "decay_mult": key[2], "update_from": info.update_from,
                                   "blocks": [], "names": []}
        group["params"].append(info.param)
        group["names"].append(info.name)
        if info.block not in group["blocks"]:
            group["blocks"].append(info.block)
    if not groups:
        raise CfgError("every parameter is frozen: nothing for the optimizer to train")
    return list(groups.values())


def make_optimizer(net: Network, rules: Iterable[RuleLike] | None = None) -> torch.optim.Optimizer:
    """SGD (``[net] momentum``, dampening 0, per-group decay) or, with ``adam=1``, Adam (``B1``, ``B2``, ``eps``).

    Both equal Darknet's update on the mean loss of a step's ``batch`` images.  Darknet's Adam runs on the
    *summed* gradient ``batch * (g + decay * w)`` and decays every parameter (biases and BN scales too), so on
    the mean gradient ``g`` it is Adam with L2 ``decay`` on all groups and ``eps / batch``."""
    groups = param_groups(net, rules)
    p = net.net
    if p.adam:
        for group in groups:
            group["weight_decay"] = p.decay * group["decay_mult"]
        return torch.optim.Adam(groups, lr=p.learning_rate, betas=(p.B1, p.B2), eps=p.eps / p.batch)
    return torch.optim.SGD(groups, lr=p.learning_rate, momentum=p.momentum)


def drop_delayed_grads(optimizer: torch.optim.Optimizer, step: int) -> None:
    """Before the ``step``-th ``optimizer.step()`` (1-based): clear the gradients of groups whose
    ``update_from`` is later, so they are not updated (no decay, no momentum) yet."""
    for group in optimizer.param_groups:
        if group.get("update_from", 0) > step:
            for param in group["params"]:
                param.grad = None


__all__ = ["ParamInfo", "Rule", "describe_parameters", "drop_delayed_grads", "make_optimizer", "param_groups"]
