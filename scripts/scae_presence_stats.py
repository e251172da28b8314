"""What a SCAE suite's trained models do with their object capsules, read from the cache (it
never trains: a model not in the cache is listed as such): per backbone, on the test digits the
suite evaluates, how many capsules are present (prior presence > 0.5) per digit, the largest
prior presence, the prior presences' sum (the sparsity loss pulls it to O / 10), how many classes
the prior linear probe predicts, and the share of the posterior mass the 5 busiest capsules take.

    python scripts/scae_presence_stats.py leaderboards/scae-mnist-curve.toml \\
        --data-dir ../shared/datasets/mnist-9k --cache-dir .harness-cache
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pandas as pd
import torch

from harness.cache import ArtifactCache
from harness.execute import Workspace, resolve_device
from harness.plugins import load_plugins
from harness.suite import parse_suite


def statistics(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    with torch.no_grad():
        encodings = [model.encode(chunk, render=False) for chunk in x.split(batch_size)]
    prior = torch.cat([e.prior for e in encodings])
    posterior = torch.cat([e.posterior_presence for e in encodings])
    probe = model.probe_logits(prior, "prior").argmax(dim=1)
    mass = posterior.sum(dim=0) / posterior.sum()
    return {
        "present per digit": (prior > 0.5).sum(dim=1).double().mean().item(),
        "digits with one present": (prior > 0.5).any(dim=1).double().mean().item(),
        "largest prior presence": prior.max().item(),
        "prior sum per digit": prior.sum(dim=1).mean().item(),
        "prior probe classes": float(probe.unique().numel()),
        "posterior mass of top 5": mass.sort(descending=True).values[:5].sum().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    args = parser.parse_args()
    registry = load_plugins()
    suite = parse_suite(tomllib.loads(args.suite.read_text()), args.suite, registry)
    cache = ArtifactCache(args.cache_dir, print)
    workspace = Workspace(
        registry, resolve_device("cpu"), cache, args.data_dir, suite.batch_size, lambda it, _: it, print
    )
    rows, seen = [], set()
    for cell in suite.cells():
        if cell.model.component.name != "scae" or cell.training_key in seen:
            continue
        seen.add(cell.training_key)
        row = {"model": cell.model.label.rsplit("-", 1)[-1], "defense": cell.defense.label}
        if cache.path("models", cell.training_key).exists():
            trained = workspace.trained(cell)
            row |= statistics(trained.model, trained.x)
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
