"""AutoAttack (standard, Linf) through the harness against a direct call of the reference
(``pyautoattack``) on the same model, samples and seed, in one pytest-benchmark run.

The harness runs the reference once per component on the samples still unbroken (to learn which
component broke each sample), plus one clean forward pass; the goal is a ratio of at most 1.1.
Run with ``pytest tests/benchmarks --benchmark-enable``; in the ordinary test run each function
runs once as a smoke test and no ratio is checked.
"""

from __future__ import annotations

import pytest
import torch
from conftest import trained_digits_mlp
from harness_autoattack.attacks import _Logits

from harness.plugins import load_plugins

EPS = 0.08
SAMPLES = 100
SEED = 3
GOAL = 1.1
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(one_thread):
    model, data = trained_digits_mlp([64])
    return model, data.x_test[:SAMPLES].contiguous(), data.y_test[:SAMPLES].contiguous()


def direct(model, x, y):
    from pyautoattack import AutoAttack

    seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(SEED)))
    reference = AutoAttack(_Logits(model), norm="Linf", eps=EPS, seed=seed, version="standard")
    return reference.run_standard_evaluation(x, y, batch_size=len(x))[0]


def record(benchmark, name):
    if not benchmark.disabled:
        MEDIANS[name] = benchmark.stats.stats.median


def test_direct_call(benchmark, setup):
    model, x, y = setup
    benchmark.group = "autoattack"
    for p in model.parameters():  # as the harness runs attacks: no parameter gradients
        p.requires_grad_(False)
    x_adv = benchmark.pedantic(direct, args=(model, x, y), rounds=3, warmup_rounds=1)
    for p in model.parameters():
        p.requires_grad_(True)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    record(benchmark, "direct")


def test_harness_autoattack(benchmark, setup):
    model, x, y = setup
    attack = load_plugins().get("attack", "autoattack").build({"norm": "linf", "version": "standard", "attacks": []})
    benchmark.group = "autoattack"
    run = lambda: attack.run(model, x, y, EPS, torch.Generator().manual_seed(SEED))  # noqa: E731
    outcome = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert torch.equal(outcome.x_adv, direct(model, x, y))
    record(benchmark, "harness")
    if "direct" in MEDIANS and "harness" in MEDIANS:
        ratio = MEDIANS["harness"] / MEDIANS["direct"]
        benchmark.extra_info["ratio_to_direct_call"] = round(ratio, 3)
        print(f"\nAutoAttack standard through the harness / direct call (medians): {ratio:.3f} (goal <= {GOAL})")
        assert ratio <= GOAL
