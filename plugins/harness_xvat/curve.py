"""VAT's learning curve with few labels: test accuracy every ``--every`` steps of one long run per
seed, to tell a model that has not yet converged from one that has stalled.

    python -m harness_xvat.curve --data-dir ../shared/datasets/mnist-9k \\
        --output leaderboards/xvat-vat100-curve.csv

It trains the suites' own components, built by name through the installed plugins (the ``idx``
dataset, ``mlp-bn`` and ``vat``), on the reference's semi-supervised configuration: ``MLPSemi``
(784-1200-1200-10), 100 labels, batches of 100 labelled and 250 unlabelled images, VAT eps 0.3,
xi 1e-6, Adam 1e-3 with the learning rate x0.95 every 500 steps (the reference's ``--num-batch-it``
epoch, not a pass over our smaller pool). At each checkpoint it records the test accuracy with the
batch-norm statistics re-estimated over the whole pool (what the suites test) and with the running
ones, and the accuracy on the labelled examples. A row is written at each checkpoint; a killed run
keeps the seeds it finished and restarts the one it was in.

``--dataset``, ``--model`` and ``--defense KEY=VALUE`` (TOML values) change a parameter of the
components, for a variant in its own ``--output``: e.g. the official VAT's network and optimiser,
``--model affine=true output_norm=true lr=2e-3 lr_decay=0.9``, exact Hessian products,
``--defense xi=0``, or half the pool, ``--dataset test_size=5000``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from harness.contracts import Dataset, Model, TrainContext, TrainingHooks, TrainingSettings, TrainingState
from harness.errors import HarnessError, UsageError
from harness.files import write_atomically
from harness.registry import Registry
from harness_xvat.divergence import reestimate_batch_stats

DATASET = {"name": "idx", "images": "images-idx3-ubyte.gz", "labels": "labels-idx1-ubyte.gz", "test_size": 1000}
MODEL = {"name": "mlp-bn", "hidden": [1200, 1200], "lr": 1e-3, "lr_decay": 0.95}
DEFENSE = {"name": "vat", "labels": 100, "labeled_batch_size": 100, "unlabeled_batch_size": 250, "eps": 0.3, "xi": 1e-6}
DECAY_EVERY = 500
"""Steps per learning-rate decay: the reference's MNIST epoch (``--num-batch-it=500``)."""
BATCH_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
COLUMNS = ["seed", "step", "lr", "test_accuracy", "test_accuracy_running_stats", "labeled_accuracy", "seconds", "config"]


class Checkpoints(TrainingHooks):
    """Evaluates the model every ``every`` steps and after the last, before the defense's own
    end of training (which re-estimates the statistics), and hands each row to ``record``."""

    def __init__(self, defense: Any, data: Dataset, every: int, record: Any):
        self.defense, self.data, self.every, self.record = defense, data, every, record

    def training_started(self, state: TrainingState) -> None:
        self.started = time.perf_counter()

    def prepare_batch(self, state: TrainingState, batch: Any) -> Any:
        if state.step and state.step % self.every == 0:
            self.evaluate(state)
        return batch

    def training_finished(self, state: TrainingState) -> None:
        if state.step % self.every == 0:
            self.evaluate(state)

    def evaluate(self, state: TrainingState) -> None:
        model: Model = state.model
        began = time.perf_counter()
        seconds = began - self.started
        running = accuracy(model, self.data.x_test, self.data.y_test)
        saved = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(BATCH_NORM_BUFFERS)}
        reestimate_batch_stats(model, model.logits, state.x_train, state.settings.batch_size)
        labeled = self.defense.labeled_pool
        row = {
            "step": state.step,
            "lr": state.optimizer.param_groups[0]["lr"],
            "test_accuracy": accuracy(model, self.data.x_test, self.data.y_test),
            "test_accuracy_running_stats": running,
            "labeled_accuracy": accuracy(model, state.x_train[labeled], state.y_train[labeled]),
            "seconds": round(seconds, 1),
        }
        model.load_state_dict(saved, strict=False)
        model.train()
        self.record(row)
        self.started += time.perf_counter() - began  # the evaluation is not training time


def accuracy(model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in evaluation mode; leaves the model in evaluation mode."""
    from harness.training import predict_batched

    return (predict_batched(model, x, next(model.parameters()).device) == y).double().mean().item()


def train_seed(registry: Registry, data: Dataset, components: Mapping[str, dict[str, Any]], seed: int, steps: int,
               every: int, device: torch.device, record: Any) -> None:
    """One run of VAT on ``data`` for at least ``steps`` steps, a row per checkpoint."""
    from harness.training import fit, seed_everything

    seed_everything(seed)
    model_table, defense_table = components["model"], components["defense"]
    model = registry.build_from_table("model", model_table, input_shape=data.input_shape, num_classes=data.num_classes)
    steps_per_epoch = math.ceil(len(data.y_train) / defense_table["unlabeled_batch_size"])  # the loop's batch
    defense = registry.build_from_table("defense", {**defense_table, "epochs": math.ceil(steps / steps_per_epoch)})
    checkpoints = Checkpoints(defense, data, every, record)

    def loop(model: Model, data: Dataset, ctx: TrainContext, hooks: Sequence[TrainingHooks],
             settings: TrainingSettings | None) -> None:
        settings = replace(settings or model.training_settings(), lr_decay_epochs=0, lr_decay_steps=DECAY_EVERY)
        fit(model, data, ctx, hooks=[checkpoints, *hooks], settings=settings)

    def unused(*_: Any) -> Any:
        raise UsageError("VAT's learning curve needs no attack and no teacher")

    context = TrainContext(seed=seed, device=device, progress=lambda it, _: it, build_attack=unused,
                           teacher=unused, loop=loop)
    defense.train(defense.prepare(model), data, context)



def components(
    dataset: Mapping[str, Any], model: Mapping[str, Any], defense: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The dataset, model and defense tables with the command line's changes."""
    for name, changes in (("dataset", dataset), ("model", model), ("defense", defense)):
        if "name" in changes or "epochs" in changes:
            raise UsageError(f"--{name} cannot change 'name' or 'epochs' (the curve is VAT's, its length --steps)")
    return {"dataset": {**DATASET, **dataset}, "model": {**MODEL, **model}, "defense": {**DEFENSE, **defense}}


def parse_settings(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as TOML (``true``, ``2e-3``, ``[1200, 1200]``)."""
    settings = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        try:
            if not equals or not key.isidentifier():
                raise ValueError
            settings[key] = tomllib.loads(f"value = {value}")["value"]
        except (ValueError, tomllib.TOMLDecodeError):
            raise UsageError(f"{option} {pair}: expected KEY=VALUE with a TOML value, e.g. lr=2e-3") from None
    return settings


def config(steps: int, every: int, tables: Mapping[str, dict[str, Any]]) -> str:
    """What a curve's rows depend on besides the seed, stored in each row to refuse a mixed file."""
    return json.dumps({"dataset": tables["dataset"], "model": tables["model"], "defense": tables["defense"],
                       "decay_every": DECAY_EVERY, "steps": steps, "every": every}, sort_keys=True)


def read_finished(path: Path, expected_config: str) -> list[dict[str, Any]]:
    """The rows of ``path`` that belong to finished seeds of this configuration."""
    import pandas as pd

    if not path.exists():
        return []
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{path}: not a learning-curve CSV ({type(exc).__name__}); move it away or choose --output")
    if list(frame.columns) != COLUMNS:
        raise UsageError(f"{path}: not a learning-curve CSV (columns {', '.join(map(str, frame.columns))})")
    if len(frame) and set(frame["config"]) != {expected_config}:
        raise UsageError(f"{path}: made with another configuration (steps, every or the components); choose --output")
    last = json.loads(expected_config)["steps"]
    finished = frame.groupby("seed")["step"].transform("max") >= last
    return frame[finished].to_dict("records")


def run(data_dir: Path, output: Path, seeds: Sequence[int], steps: int, every: int, device: str,
        tables: Mapping[str, dict[str, Any]] | None = None) -> None:
    import pandas as pd

    from harness.plugins import load_plugins

    if steps % every:
        raise UsageError(f"--steps ({steps}) must be a multiple of --every ({every})")
    tables = tables or components({}, {}, {})
    expected = config(steps, every, tables)
    rows = read_finished(output, expected)
    done = {row["seed"] for row in rows}
    registry = load_plugins()
    data = registry.build_from_table("dataset", tables["dataset"], data_dir=data_dir)
    for seed in seeds:
        if seed in done:
            print(f"seed {seed}: finished before", file=sys.stderr)
            continue

        def record(row: dict[str, Any], seed: int = seed) -> None:
            rows.append({"seed": seed, **row, "config": expected})
            frame = pd.DataFrame(rows, columns=COLUMNS).sort_values(["seed", "step"], kind="stable")
            write_atomically(output, frame.to_csv(index=False).encode())
            print(f"seed {seed} step {row['step']}: test {row['test_accuracy']:.4f}", file=sys.stderr, flush=True)

        train_seed(registry, data, tables, seed, steps, every, torch.device(device), record)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness_xvat.curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the folder of the IDX files (MNIST-9k)")
    parser.add_argument("--output", type=Path, default=Path("xvat-vat100-curve.csv"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (set them: defaults collapse on a busy machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", nargs="+", default=[], metavar="KEY=VALUE", help="change a parameter of idx")
    parser.add_argument("--model", nargs="+", default=[], metavar="KEY=VALUE", help="change a parameter of mlp-bn")
    parser.add_argument("--defense", nargs="+", default=[], metavar="KEY=VALUE", help="change a parameter of vat")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.threads < 1:
        parser.error("--steps, --every and --threads must be positive")
    torch.set_num_threads(args.threads)
    try:
        changes = (parse_settings(getattr(args, name), f"--{name}") for name in ("dataset", "model", "defense"))
        tables = components(*changes)
        run(args.data_dir, args.output, args.seeds, args.steps, args.every, args.device, tables)
    except HarnessError as exc:
        print(f"harness_xvat.curve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"harness_xvat.curve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
