"""Property tests for the parser and builder (hypothesis).

* A generated valid cfg always parses and builds; the inferred shapes equal the shapes computed independently
  in tests/strategies.py and the shapes ``forward_all`` produces.
* Any input whatsoever (hostile edits of valid cfgs, arbitrary bytes) gives a network or a ``CfgError`` with a
  line number: never another exception.

CI runs a bounded number of examples.  A long run:

    NETSPEC_FUZZ=long python -m pytest tests/test_fuzz_cfg.py -p no:cacheprovider
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings

import netspec
from netspec.specs import Limits

from .fuzz_oracle import check_forward, check_input
from .strategies import any_bytes, mutated_cfgs, valid_cfgs

# CI: a fixed set of examples (reproducible runs); the long profile explores afresh each time.
settings.register_profile("netspec-ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("netspec-long", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile("netspec-long" if os.environ.get("NETSPEC_FUZZ") == "long" else "netspec-ci")
if os.environ.get("NETSPEC_FUZZ_EXAMPLES"):  # e.g. NETSPEC_FUZZ_EXAMPLES=2000 for a medium run
    PROFILE = settings(PROFILE, max_examples=int(os.environ["NETSPEC_FUZZ_EXAMPLES"]))

# Small limits: a mutated cfg may describe a huge network, and the test must not allocate it.
LIMITS = Limits(max_params=5_000_000, max_activation_bytes=64 * 2**20, max_layers=500)


@settings(PROFILE)
@given(valid_cfgs())
def test_valid_cfg_builds_with_the_expected_shapes(cfg):
    spec = netspec.build_spec(cfg.text)
    assert spec.input_shape == cfg.input_shape
    assert [layer.out_shape for layer in spec.layers] == cfg.shapes, cfg.text
    assert [layer.type for layer in spec.layers] == [layer.section for layer in cfg.layers]
    check_forward(spec)


_SMALL = b"[net]\nwidth=4\nheight=4\nchannels=1\n[maxpool]\nsize=1\nstride=%s\n[conv]\nfilters=1\nsize=1\n"


@settings(PROFILE)
@given(mutated_cfgs())
# found by hypothesis: integers beyond 64 bits reached torch (TypeError), and beyond 32 bits (RuntimeError)
@example(_SMALL % b"99999999999999999999")
@example(_SMALL % b"4294967296")
def test_mutated_cfg_gives_a_network_or_a_located_cfg_error(data):
    check_input(data, LIMITS, run_forward=True)


@settings(PROFILE)
@given(any_bytes())
def test_arbitrary_bytes_give_a_network_or_a_located_cfg_error(data):
    check_input(data, LIMITS)


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\x00", b"\r", b"\n\n\n", b"[", b"]", b"=", b"#", b";"])
def test_degenerate_inputs(data):
    check_input(data, LIMITS)
