"""PGD-40 through the harness against the floor: 40 bare forward + input-gradient passes.

Both are measured in the same pytest-benchmark run on the same model and batch; the goal is a
ratio of at most 1.3. Run with ``pytest tests/benchmarks --benchmark-enable``; in the ordinary
test run (benchmarks disabled) each function runs once as a smoke test and no ratio is checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from harness_classifiers.models import SmallCNN
from harness_datasets.loaders import load_digits

from harness.plugins import load_plugins
from harness.training import seed_everything

ITERATIONS = 40
EPS = 0.1
STEP = 2.5 * EPS / ITERATIONS
BATCH = 256
GOAL = 1.3
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    seed_everything(0)
    data = load_digits(Path("."), size=28, test_size=500)
    model = SmallCNN((1, 28, 28), 10, channels=[32, 64], hidden=128, epochs=1, batch_size=64, lr=1e-3).eval()
    return model, data.x_test[:BATCH].contiguous(), data.y_test[:BATCH].contiguous()


def bare_pgd(model, x, y):
    """The floor: nothing but 40 forward passes and input gradients, with a sign step."""
    x_adv = x.clone()
    for _ in range(ITERATIONS):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model.logits(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + STEP * grad.sign(), x - EPS), x + EPS).clamp_(0, 1)
    return x_adv


def record(benchmark, name):
    if not benchmark.disabled:
        MEDIANS[name] = benchmark.stats.stats.median


def test_bare_loop(benchmark, setup):
    model, x, y = setup
    benchmark.group = "pgd40"
    x_adv = benchmark.pedantic(bare_pgd, args=(model, x, y), rounds=7, warmup_rounds=1)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    record(benchmark, "bare")


def test_harness_pgd(benchmark, setup):
    model, x, y = setup
    component = load_plugins().get("attack", "pgd")
    params, problems = component.resolve_params({"max_iter": ITERATIONS, "batch_size": BATCH, "eps_step": STEP})
    assert not problems
    attack = component.build(params)
    benchmark.group = "pgd40"
    result = benchmark.pedantic(attack.run, args=(model, x, y, EPS), rounds=7, warmup_rounds=1)
    assert result.norms.max() <= EPS + 1e-6
    record(benchmark, "harness")
    if "bare" in MEDIANS and "harness" in MEDIANS:
        ratio = MEDIANS["harness"] / MEDIANS["bare"]
        benchmark.extra_info["ratio_to_bare_loop"] = round(ratio, 3)
        print(f"\nPGD-{ITERATIONS} through the harness / bare loop (medians): {ratio:.3f} (goal <= {GOAL})")
        assert ratio <= GOAL
