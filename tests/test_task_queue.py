"""The Ray executor's order of tasks (harness.distributed.TaskQueue), without Ray: no slot waits
on a lock or on a training while other work could run."""

from __future__ import annotations

from types import SimpleNamespace

from harness.distributed import TaskQueue


def _group(resume_key: str, *attacks: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(resume_key=resume_key, attack=SimpleNamespace(label=a), name=f"{resume_key}/{a}")
            for a in attacks]  # fmt: skip


def _names(task):
    kind, cells = task
    return kind, [cell.name for cell in cells]


def test_trainings_of_different_backbones_start_together_before_any_sweep():
    none, at = _group("none", "evasion", "pgd", "pgd"), _group("at", "evasion")
    queue = TaskQueue([none, at])
    assert _names(queue.next()) == ("train", ["none/evasion", "none/pgd", "none/pgd"])
    assert _names(queue.next()) == ("train", ["at/evasion"])
    assert queue.next() is None, "both trainings run: nothing else can start yet"


def test_a_trained_group_releases_one_sweep_per_attack_entry():
    none = _group("none", "evasion", "pgd", "pgd")
    queue = TaskQueue([none])
    queue.trained(queue.next()[1])
    assert _names(queue.next()) == ("attack", ["none/evasion"])
    assert _names(queue.next()) == ("attack", ["none/pgd", "none/pgd"])
    assert queue.next() is None and not queue


def test_groups_sharing_checkpoints_train_one_at_a_time_and_others_overtake_them():
    head_a, head_b, other = _group("backbone", "a"), _group("backbone", "b"), _group("other", "c")
    queue = TaskQueue([head_a, head_b, other])
    assert _names(queue.next()) == ("train", ["backbone/a"])
    assert _names(queue.next()) == ("train", ["other/c"]), "head b would wait on head a's lock"
    assert queue.next() is None
    queue.trained(head_a)
    assert _names(queue.next()) == ("train", ["backbone/b"]), "trainings before sweeps"
    assert _names(queue.next()) == ("attack", ["backbone/a"])
