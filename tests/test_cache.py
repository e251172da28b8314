"""The artifact cache: digests of cached tensors, the threat-model check of cached attack runs, a
full or unwritable cache folder, and two processes saving one entry at once."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_SUITE

from harness import files
from harness.cache import FORMAT, ArtifactCache, digest
from harness.leaderboard import read_leaderboard

FGSM_ONLY = TINY_SUITE[: TINY_SUITE.index('[[attacks]]\nname = "pgd"')]
DIGEST_MISMATCH = "the tensors do not match their digest"
TIMING = ["train_seconds", "attack_seconds", "created_at"]


def results(path: Path) -> pd.DataFrame:
    return read_leaderboard(path).drop(columns=TIMING)


def entries(cache: Path, kind: str) -> list[Path]:
    return sorted((cache / kind).glob("*.pt"))


def read_payload(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    payload = torch.load(path, weights_only=True)
    return dict(payload["tensors"]), json.loads(payload["meta"])


def write_payload(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """An entry as the cache writes one, with whatever tensors and meta it is given (tampering)."""
    torch.save({"tensors": tensors, "meta": json.dumps(meta)}, path)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".pt")]


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


# --- the digest ---


def test_the_digest_covers_names_dtypes_shapes_and_bytes_of_every_dtype():
    tensors = {
        "bool": torch.tensor([True, False, True]),
        "bfloat16": torch.randn(3, 4).bfloat16(),
        "half": torch.randn(2, 2).half(),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "complex": torch.randn(2, dtype=torch.complex64),
        "scalar": torch.tensor(1.5, dtype=torch.float64),
        "empty": torch.empty(0, 7),
        "transposed": torch.arange(12.0).view(3, 4).t(),
    }
    reference = digest(tensors)
    assert len(reference) == 64
    assert digest({k: v.clone().contiguous() for k, v in reversed(tensors.items())}) == reference
    changed = [
        {**tensors, "bool": torch.tensor([True, False, False])},
        {**tensors, "bfloat16": tensors["bfloat16"].float()},  # same values, another dtype
        {**tensors, "empty": torch.empty(7, 0)},  # no bytes either way: the shape tells
        {**tensors, "scalar": tensors["scalar"].view(1)},
        {**tensors, "transposed": tensors["transposed"].contiguous().view(3, 4)},
        {("renamed" if k == "half" else k): v for k, v in tensors.items()},
    ]
    assert all(digest(other) != reference for other in changed)


def test_an_entry_round_trips_and_any_change_to_its_tensors_is_reported(tmp_path):
    warnings = Warnings()
    cache = ArtifactCache(tmp_path / "cache", warnings)
    config = {"model": "mlp", "seed": 0}
    state = {"weight": torch.randn(4, 3), "mask": torch.tensor([True, False]), "scale": torch.ones(2).bfloat16()}
    cache.save("models", "k", config, state, train_seconds=1.5)
    entry = cache.load("models", "k", config)
    assert entry is not None and not warnings
    assert all(torch.equal(entry.tensors[k], v) for k, v in state.items()) and entry.meta["train_seconds"] == 1.5
    assert entry.meta["format"] == FORMAT and entry.meta["digest"] == digest(state)
    assert leftovers(tmp_path) == []
    path = cache.path("models", "k")
    tensors, meta = read_payload(path)
    write_payload(path, {**tensors, "mask": torch.tensor([True, True])}, meta)
    assert cache.load("models", "k", config) is None
    assert warnings == [f"cached model {path} is unusable ({DIGEST_MISMATCH}: the file was damaged or altered); "
                        "computing it again"]  # fmt: skip


def test_an_entry_of_another_format_is_said_to_come_from_another_version(tmp_path):
    warnings = Warnings()
    cache = ArtifactCache(tmp_path, warnings)
    cache.save("heads", "k", {"a": 1}, {"w": torch.zeros(2)})
    tensors, meta = read_payload(cache.path("heads", "k"))
    write_payload(cache.path("heads", "k"), tensors, {**meta, "format": FORMAT - 1})
    assert cache.load("heads", "k", {"a": 1}) is None
    assert "written by another version of the harness" in warnings[0] and "configuration" not in warnings[0]
    cache.save("heads", "k", {"a": 1}, {"w": torch.zeros(2)})
    assert cache.load("heads", "k", {"a": 2}) is None
    assert "written for another configuration" in warnings[1]


# --- tampered entries, end to end ---


def test_zeroed_weights_in_a_model_entry_are_reported_and_the_model_retrained(cli, write_suite, tmp_path):
    suite = write_suite(FGSM_ONLY)
    cache = tmp_path / "cache"
    assert cli("run", suite, "--cache-dir", cache)[0] == 0
    [model] = entries(cache, "models")
    original, meta = read_payload(model)
    write_payload(model, {k: torch.zeros_like(v) for k, v in original.items()}, meta)
    code, out, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "again.csv")
    assert code == 0 and "2 ok" in out
    assert f"cached model {model} is unusable ({DIGEST_MISMATCH}" in err and "computing it again" in err
    pd.testing.assert_frame_equal(results(tmp_path / "again.csv"), results(suite.with_suffix(".csv")))
    # the entry was written again, whole and valid
    rewritten, meta = read_payload(model)
    assert meta["digest"] == digest(rewritten) and all(torch.equal(rewritten[k], v) for k, v in original.items())


def test_a_replaced_x_adv_in_an_attack_entry_is_reported_and_the_attack_run_again(cli, write_suite, tmp_path):
    suite = write_suite(FGSM_ONLY)
    cache = tmp_path / "cache"
    assert cli("run", suite, "--cache-dir", cache)[0] == 0
    attacked = entries(cache, "attacks")
    assert len(attacked) == 2
    tensors, meta = read_payload(attacked[0])
    quantised = (tensors["x_adv"] * 255).round() / 255  # still images, a subtly different attack
    assert not torch.equal(quantised, tensors["x_adv"])
    write_payload(attacked[0], {**tensors, "x_adv": quantised}, meta)
    code, out, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "again.csv")
    assert code == 0 and "2 ok" in out, err
    assert err.count(DIGEST_MISMATCH) == 1 and f"cached attack {attacked[0]} is unusable" in err
    pd.testing.assert_frame_equal(results(tmp_path / "again.csv"), results(suite.with_suffix(".csv")))
    assert torch.equal(read_payload(attacked[0])[0]["x_adv"], tensors["x_adv"])


def test_an_over_budget_attack_run_from_the_cache_fails_as_a_fresh_one_does(cli, write_suite, tmp_path, monkeypatch):
    """An entry whose x_adv breaks the budget, with a digest that matches it (so not damage but a
    bad run, cached by an older harness or altered on purpose), is the same error as the run."""
    from harness_art.attacks import FGSM

    suite = write_suite(FGSM_ONLY)
    cache = tmp_path / "cache"
    inputs: list[torch.Tensor] = []
    generate = FGSM.generate

    def recorded(self, model, x, y, eps, *, generator):
        inputs.append(x.cpu())
        return generate(self, model, x, y, eps, generator=generator)

    with monkeypatch.context() as patch:
        patch.setattr(FGSM, "generate", recorded)
        assert cli("run", suite, "--cache-dir", cache)[0] == 0
    x = torch.cat(inputs[: len(inputs) // 2])  # the test samples, in batches, for each of the two eps

    def binarised(self, model, x, y, eps, *, generator):  # far over eps 0.1 and 0.3
        return (x > 0.5).float()

    with monkeypatch.context() as patch:
        patch.setattr(FGSM, "generate", binarised)
        code, _, _ = cli("run", suite, "--cache-dir", tmp_path / "fresh-cache", "--output", tmp_path / "fresh.csv")
    assert code == 1
    fresh = read_leaderboard(tmp_path / "fresh.csv")
    assert fresh["status"].eq("error").all() and fresh["message"].str.contains("exceeded its budget").all()
    assert not entries(tmp_path / "fresh-cache", "attacks"), "a run over its budget is not cached"

    for path in entries(cache, "attacks"):
        tensors, meta = read_payload(path)
        assert tensors["x_adv"].shape == x.shape
        bad = {**tensors, "x_adv": (x > 0.5).float()}
        write_payload(path, bad, {**meta, "digest": digest(bad)})

    def refuse(*args, **kwargs):
        raise AssertionError("the attack runs must come from the cache")

    monkeypatch.setattr(FGSM, "generate", refuse)
    code, _, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "cached.csv")
    assert code == 1 and DIGEST_MISMATCH not in err and "unusable" not in err
    cached = read_leaderboard(tmp_path / "cached.csv")
    assert cached["status"].eq("error").all()
    pd.testing.assert_frame_equal(cached[["cell_id", "status", "message"]], fresh[["cell_id", "status", "message"]])
    for message in fresh["message"]:
        assert message.startswith("ValueError: attack 'fgsm' (plugin 'art') exceeded its budget")
        assert message in err


# --- a full or unwritable cache ---


def fsync_with_a_full_cache(cache: Path, real=os.fsync):
    """``os.fsync`` as on a full disk for files in ``cache``, and as usual for any other file."""

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(cache)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    return fsync


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell the cache's files apart")
def test_a_full_disk_under_the_cache_is_reported_once_and_the_results_kept(cli, write_suite, tmp_path, monkeypatch):
    suite = write_suite()
    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setattr(files.os, "fsync", fsync_with_a_full_cache(cache))
        code, out, err = cli("run", suite, "--cache-dir", cache)
    assert code == 0 and "4 cells (4 computed, 0 already done): 4 ok, 0 skipped, 0 error" in out, err
    assert err.count("No space left on device") == 1
    assert f"cannot write to the cache {cache}: No space left on device; continuing without caching" in err
    assert "unexpected pos" not in err and "error in" not in err
    assert read_leaderboard(suite.with_suffix(".csv"))["status"].eq("ok").all()
    left = [p for p in cache.rglob("*") if p.is_file() and p.parent.name != "locks"]
    assert left == [], "no entry and no temporary file is left"
    code, _, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "later.csv")
    assert code == 0 and "cannot write" not in err and len(entries(cache, "attacks")) == 4
    pd.testing.assert_frame_equal(results(tmp_path / "later.csv"), results(suite.with_suffix(".csv")))


def test_a_failed_save_warns_once_and_saving_stops(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    warnings = Warnings()
    cache = ArtifactCache(tmp_path / "cache", warnings)
    for key in "abc":
        cache.save("attacks", key, {}, {"x_adv": torch.rand(3, 1, 2, 2)}, seconds=0.0)
    full_disk = f"cannot write to the cache {tmp_path / 'cache'}: No space left on device; continuing without caching"
    assert warnings == [full_disk]
    assert not cache.writable and not cache.check() and len(warnings) == 1
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    assert cache.load("attacks", "a", {}) is None


def test_the_start_up_probe_reports_a_cache_folder_that_cannot_be_written(tmp_path):
    warnings = Warnings()
    good = ArtifactCache(tmp_path / "fine" / "cache", warnings)
    assert good.check() and good.writable and warnings == []
    assert list((tmp_path / "fine").rglob("*")) == [tmp_path / "fine" / "cache"], "the probe leaves nothing behind"

    (tmp_path / "a-file").write_text("not a folder")
    bad = ArtifactCache(tmp_path / "a-file", warnings)
    assert not bad.check() and not bad.writable
    first = warnings[0]
    assert len(warnings) == 1 and first.startswith(f"cannot write to the cache {tmp_path / 'a-file'}: Not a directory")
    assert warnings[0].endswith("; continuing without caching")
    bad.check()
    bad.save("models", "k", {}, {"w": torch.zeros(1)})
    assert len(warnings) == 1 and (tmp_path / "a-file").read_text() == "not a folder"

    (tmp_path / "cache2" / "models").mkdir(parents=True)
    (tmp_path / "cache2" / "heads").write_text("a file where a kind's folder belongs")
    assert not ArtifactCache(tmp_path / "cache2", warnings).check()  # a kind's folder that is a file
    assert len(warnings) == 2 and warnings[1].startswith(f"cannot write to the cache {tmp_path / 'cache2'}: ")


def test_a_run_whose_cache_folder_is_a_file_completes_without_caching(cli, write_suite, tmp_path):
    suite = write_suite(FGSM_ONLY)
    cache = tmp_path / "not-a-folder"
    cache.write_text("a regular file")
    code, out, err = cli("run", suite, "--cache-dir", cache)
    assert code == 0 and "2 ok, 0 skipped, 0 error" in out, err
    assert err.count("cannot write to the cache") == 1
    assert f"cannot write to the cache {cache}: Not a directory" in err and "continuing without caching" in err
    assert read_leaderboard(suite.with_suffix(".csv"))["status"].eq("ok").all()
    assert cache.read_text() == "a regular file"


# --- two writers of one entry ---

SAVES = 40


def tensors_of(writer: int, save: int) -> dict[str, torch.Tensor]:
    """What writer ``writer`` saves the ``save``-th time: every tensor tells whose and which it is,
    so that an entry mixing two saves shows."""
    tag = float(writer * 1000 + save)
    return {
        "x_adv": torch.full((64, 1, 16, 16), tag),
        "norms": torch.full((64,), tag, dtype=torch.float64),
        "flags": torch.full((4096,), writer == 1, dtype=torch.bool),
        "tag": torch.tensor([writer, save]),
    }


def _race(directory: str, writer: int, barrier) -> None:
    failures = []
    cache = ArtifactCache(Path(directory), failures.append)
    barrier.wait()
    for save in range(SAVES):
        cache.save("attacks", "shared", {"run": 1}, tensors_of(writer, save), seconds=float(writer))
    if failures:
        raise SystemExit(f"writer {writer}: {failures}")


def test_two_processes_saving_one_entry_leave_one_whole_entry_and_no_temporary_file(tmp_path):
    context = multiprocessing.get_context("spawn")  # no fork of a process that has run torch threads
    barrier = context.Barrier(2)
    writers = [context.Process(target=_race, args=(str(tmp_path), writer, barrier)) for writer in (0, 1)]
    try:
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=300)
    finally:
        for process in writers:
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in writers] == [0, 0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [Path("attacks/shared.pt")]
    warnings = Warnings()
    entry = ArtifactCache(tmp_path, warnings).load("attacks", "shared", {"run": 1})
    assert entry is not None and warnings == []
    assert entry.meta["digest"] == digest(entry.tensors)
    writer, save = entry.tensors["tag"].tolist()
    expected = tensors_of(writer, save)
    assert entry.tensors.keys() == expected.keys()
    assert all(torch.equal(entry.tensors[k], v) for k, v in expected.items())
    assert entry.meta["seconds"] == float(writer)


def test_two_runs_sharing_a_cache_train_each_model_once(write_suite, tmp_path):
    """The cache's lock on an entry: the second run waits for the first's training and loads it
    (its rows carry the first's training time), as Ray workers sharing a cache do."""
    import subprocess
    import sys

    suite = write_suite()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "harness", "run", str(suite), "--cache-dir", str(tmp_path / "cache"),
             "--output", str(tmp_path / f"run{i}.csv")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    assert all(run.wait(timeout=300) == 0 for run in runs), [run.stderr.read() for run in runs]
    seconds = [read_leaderboard(tmp_path / f"run{i}.csv")["train_seconds"] for i in range(2)]
    pd.testing.assert_series_equal(seconds[0], seconds[1])
    assert len(list((tmp_path / "cache" / "locks").glob("training-*.lock"))) == 1
