"""Plugin loading, component registration, broken plugins and lifecycle hooks."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
from harness_art.specs import CATALOGUE, UNAVAILABLE

from harness.errors import UsageError
from harness.hookspecs import hookimpl
from harness.plugins import load_plugins
from harness.registry import FRACTION, NON_NEGATIVE, POSITIVE, Range

ART_ATTACKS = sorted(["fgsm", "pgd", *CATALOGUE, *UNAVAILABLE])


@pytest.fixture
def module_plugin(monkeypatch):
    """Install an in-memory module importable by name, to load with ``-p``."""

    def install(name: str, **attributes) -> str:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
        return name

    return install


def test_shipped_plugins_register_through_entry_points():
    registry = load_plugins()
    names = {p.name for p in registry.plugins}
    assert {"standard", "datasets", "classifiers", "art"} <= names
    assert {"digits", "mnist", "fashion-mnist", "idx"} <= set(registry.components["dataset"])
    assert {"mlp", "cnn"} <= set(registry.components["model"])
    assert {"fgsm", "pgd"} <= set(registry.components["attack"])
    assert "none" in registry.components["defense"]
    art = next(p for p in registry.plugins if p.name == "art")
    assert art.distribution == "robustness-harness" and art.version
    assert art.hooks == ("register_attacks",)
    assert registry.get("attack", "pgd").plugin == "art"


def test_unknown_component_suggests_the_closest_name():
    registry = load_plugins()
    with pytest.raises(UsageError, match=r"unknown model 'cnnn' \(did you mean 'cnn'\?\)"):
        registry.get("model", "cnnn")


def failed(registry, name):
    """The error of plugin ``name``, checking that it is listed and that its components are gone."""
    info = next(p for p in registry.plugins if p.name == name)
    assert info.error, f"plugin '{name}' did not fail"
    assert not any(registry.by_plugin(name).values())
    assert not registry.plugin_manager.has_plugin(name)
    return info.error


def test_duplicate_component_names_both_plugins(module_plugin):
    @hookimpl
    def register_models(register):
        register("own-model", "x:y")
        register("mlp", "x:y")

    name = module_plugin("dup_plugin", register_models=register_models)
    registry = load_plugins([name])
    assert failed(registry, name) == (
        "model 'mlp' is registered twice: by plugin 'classifiers' (robustness-harness 0.1.0) "
        "and by plugin 'dup_plugin' ((unpackaged))"
    )
    assert registry.get("model", "mlp").plugin == "classifiers"


def test_misspelled_hook_implementation_disables_its_plugin(module_plugin):
    calls = []

    @hookimpl
    def register_modles(register):
        pass

    @hookimpl
    def cell_started(cell):
        calls.append(cell)

    name = module_plugin("typo_plugin", register_modles=register_modles, cell_started=cell_started)
    registry = load_plugins([name])
    assert failed(registry, name) == "hook 'register_modles' matches no hook spec (did you mean 'register_models'?)"
    registry.notify("cell_started", pytest.fail, cell="c")
    assert calls == [], "a failed plugin's hooks are not called"


BROKEN_PLUGINS = {
    "unknown hook": ({"register_modles": lambda register: None}, "hook 'register_modles' matches no hook spec"),
    "argument not in the spec": (
        {"register_models": lambda register, extra: None},
        "PluginValidationError: Plugin 'broken' for hook 'register_models'",
    ),
    "raising hook": ({"register_models": lambda register: 1 / 0}, "register_models raised ZeroDivisionError"),
    "duplicate within the plugin": (
        {"register_models": lambda register: [register("twin", "x:y"), register("twin", "x:y")]},
        "model 'twin' is registered twice by plugin 'broken' ((unpackaged))",
    ),
    "duplicate of another plugin": (
        {"register_attacks": lambda register: register("pgd", "x:y", params={"norm": "linf"})},
        "attack 'pgd' is registered twice: by plugin 'art' (robustness-harness 0.1.0) and by plugin 'broken'",
    ),
    "attack without a norm": (
        {"register_attacks": lambda register: register("normless", "x:y", params={})},
        "attack 'normless' of plugin 'broken' must declare a 'norm' parameter",
    ),
    "range for an unknown parameter": (
        {"register_models": lambda register: register("m", "x:y", params={"epochs": 5}, ranges={"epoch": POSITIVE})},
        "model 'm' of plugin 'broken' declares a range for unknown parameter 'epoch' (did you mean 'epochs'?)",
    ),
    "range for a parameter that is not numeric": (
        {"register_models": lambda register: register("m", "x:y", params={"act": "relu"}, ranges={"act": POSITIVE})},
        "model 'm' of plugin 'broken' declares a range for parameter 'act', whose default 'relu' is not numeric",
    ),
    "horizon that is not a parameter": (
        {"register_models": lambda register: register("m", "x:y", params={"epochs": 5}, horizon="steps")},
        "model 'm' of plugin 'broken': its horizon 'steps' is not one of its parameters",
    ),
    "horizon of an attack": (
        {"register_attacks": lambda register: register("a", "x:y", params={"norm": "l2", "steps": 5}, horizon="steps")},
        "attack 'a' of plugin 'broken' has a horizon, which only models have",
    ),
    "default out of its range": (
        {"register_models": lambda register: register("m", "x:y", params={"p": 1.5}, ranges={"p": FRACTION})},
        "model 'm' of plugin 'broken' declares parameter 'p' in [0, 1], but its default is 1.5",
    ),
}


@pytest.mark.parametrize("hooks, error", BROKEN_PLUGINS.values(), ids=BROKEN_PLUGINS.keys())
def test_a_broken_plugin_is_disabled_and_every_command_works(module_plugin, cli, write_suite, hooks, error):
    name = module_plugin("broken", **{hook: hookimpl(function) for hook, function in hooks.items()})
    registry = load_plugins([name])
    assert error in failed(registry, name)
    assert {"digits", "mlp", "pgd", "fgsm", "none"} <= {c for comps in registry.components.values() for c in comps}
    code, out, err = cli("-p", name, "plugins", "--json")
    listing = {p["name"]: p for p in json.loads(out)}
    assert code == 0 and error in listing[name]["error"] and listing[name]["components"] == {}
    assert listing["art"]["components"] == {"attack": ART_ATTACKS} and "error" not in listing["art"]
    assert f"plugin '{name}' failed: " in err
    code, out, _ = cli("-p", name, "plugins")
    assert code == 0 and f"{name}  ((unpackaged))\n  FAILED: " in out
    code, out, err = cli("-p", name, "validate", write_suite())
    assert code == 0 and "valid suite 'tiny'" in out, err


def test_a_plugin_that_swallows_a_registration_error_still_fails(module_plugin):
    @hookimpl
    def register_attacks(register):
        try:
            register("normless", "x:y")
        except Exception:
            pass
        register("fine", "x:y", params={"norm": "linf"})

    name = module_plugin("stubborn", register_attacks=register_attacks)
    registry = load_plugins([name])
    assert "must declare a 'norm' parameter" in failed(registry, name)
    assert "fine" not in registry.components["attack"]


def test_raising_hook_is_reported_and_other_plugins_work(module_plugin):
    @hookimpl
    def register_models(register):
        register("half", "x:y")
        raise RuntimeError("broken registration")

    name = module_plugin("raising_plugin", register_models=register_models)
    registry = load_plugins([name])
    assert failed(registry, name) == "register_models raised RuntimeError: broken registration"
    assert "half" not in registry.components["model"]
    assert "mlp" in registry.components["model"]


def test_blocking_by_name_and_by_environment(monkeypatch):
    registry = load_plugins(["no:art"])
    assert "pgd" not in registry.components["attack"]
    assert "art" not in {p.name for p in registry.plugins}
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "classifiers, art")
    registry = load_plugins()
    assert not {"mlp", "cnn", "fgsm", "pgd"} & {*registry.components["model"], *registry.components["attack"]}
    assert "digits" in registry.components["dataset"]


def test_disabled_autoload_loads_only_named_modules(monkeypatch):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert load_plugins().plugins == []
    registry = load_plugins(["harness_art"])
    assert sorted(registry.components["attack"]) == ART_ATTACKS
    assert registry.plugins[0].distribution == "(unpackaged)"


def test_missing_plugin_module_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot load plugin module 'no_such_module_xyz'"):
        load_plugins(["no_such_module_xyz"])


def test_parameter_checking_from_registered_defaults():
    pgd = load_plugins().get("attack", "pgd")
    params, problems = pgd.resolve_params({"max_iter": 10, "eps_step": 1, "norm": "l2"})
    assert problems == []
    assert params["max_iter"] == 10 and params["eps_step"] == 1 and params["norm"] == "l2"
    _, problems = pgd.resolve_params({"max_iter": "ten", "norm": "l3", "max_iters": 3})
    assert any("'max_iter' of attack 'pgd' must be an integer" in p for p in problems)
    assert any("must be one of 'linf', 'l2'" in p for p in problems)
    assert any("unknown parameter 'max_iters'" in p and "did you mean 'max_iter'" in p for p in problems)
    _, problems = load_plugins().get("model", "mlp").resolve_params({"hidden": [32.5]})
    assert problems == ["parameter 'hidden' of model 'mlp' must be a list of integers, got [32.5]"]


def test_range_reads_like_its_bounds():
    assert [str(r) for r in (POSITIVE, NON_NEGATIVE, FRACTION)] == ["> 0", ">= 0", "in [0, 1]"]
    assert str(Range(0, 1, low_open=True)) == "in (0, 1]" and str(Range(0, 1, high_open=True)) == "in [0, 1)"
    assert str(Range(high=5)) == "<= 5" and str(Range(high=0, high_open=True)) == "< 0"
    assert str(Range(0.5, 2.5)) == "in [0.5, 2.5]" and str(Range(1, low_open=True)) == "> 1"
    for bad in ({"low": 1, "high": 0}, {"low": 0, "high": 0, "low_open": True}, {"low": math.nan}, {"high": math.inf}):
        with pytest.raises(ValueError):
            Range(**bad)


def test_range_boundaries():
    assert 0 in NON_NEGATIVE and 0.0 in NON_NEGATIVE and -1e-9 not in NON_NEGATIVE
    assert 0 not in POSITIVE and 1e-9 in POSITIVE and math.inf in POSITIVE
    assert 0 in FRACTION and 1 in FRACTION and 1.0 in FRACTION and 1.0000001 not in FRACTION and -0.1 not in FRACTION
    assert 1 not in Range(0, 1, high_open=True) and 0.5 in Range(0, 1, high_open=True)
    assert 5 in Range(high=5) and 5 not in Range(high=5, high_open=True)
    assert not any(math.nan in r for r in (POSITIVE, NON_NEGATIVE, FRACTION, Range()))
    assert True not in FRACTION and "1" not in FRACTION and None not in NON_NEGATIVE


def test_parameter_values_are_checked_against_their_ranges():
    mlp = load_plugins().get("model", "mlp")
    assert mlp.ranges["epochs"] == POSITIVE and mlp.ranges["weight_decay"] == NON_NEGATIVE
    cases = {
        "epochs": (-1, "parameter 'epochs' of model 'mlp' must be > 0, got -1"),
        "batch_size": (0, "parameter 'batch_size' of model 'mlp' must be > 0, got 0"),
        "lr": (math.inf, "parameter 'lr' of model 'mlp' must be a finite number, got inf"),
        "weight_decay": (-0.1, "parameter 'weight_decay' of model 'mlp' must be >= 0, got -0.1"),
        "hidden": ([-5], "parameter 'hidden' of model 'mlp' must be a list of integers > 0, got [-5]"),
    }
    for key, (value, message) in cases.items():
        assert mlp.resolve_params({key: value})[1] == [message]
    _, problems = mlp.resolve_params({"lr": math.nan})
    assert problems == ["parameter 'lr' of model 'mlp' must be a finite number, got nan"]
    _, problems = mlp.resolve_params({"hidden": [32, 0], "lr": -math.inf, "epochs": -1, "batch_size": 0})
    assert len(problems) == 4, "every problem is reported"
    params, problems = mlp.resolve_params({"epochs": 1, "weight_decay": 0, "lr": 1e-9, "hidden": []})
    assert problems == [] and params["epochs"] == 1 and params["weight_decay"] == 0.0 and params["hidden"] == []
    pgd = load_plugins().get("attack", "pgd")
    assert pgd.resolve_params({"max_iter": 0})[1] == ["parameter 'max_iter' of attack 'pgd' must be > 0, got 0"]
    assert pgd.resolve_params({"eps_step": None})[1] == [], "None (unset) stays accepted"
    assert pgd.resolve_params({"eps_step": -0.1})[1] == ["parameter 'eps_step' of attack 'pgd' must be > 0, got -0.1"]
    assert pgd.resolve_params({"eps_step": math.inf})[1] == [
        "parameter 'eps_step' of attack 'pgd' must be a finite number, got inf"
    ]


def test_non_finite_values_are_rejected_unless_the_default_is_infinite(module_plugin):
    @hookimpl
    def register_attacks(register):
        register("walk", "x:y", params={"norm": "linf", "scale": 1.0, "radius": math.inf, "steps": [0.5, 1.0]})

    registry = load_plugins([module_plugin("unbounded_plugin", register_attacks=register_attacks)])
    walk = registry.get("attack", "walk")
    assert walk.ranges == {}
    assert walk.resolve_params({"scale": math.inf})[1] == [
        "parameter 'scale' of attack 'walk' must be a finite number, got inf"
    ]
    assert walk.resolve_params({"scale": math.nan})[1] == [
        "parameter 'scale' of attack 'walk' must be a finite number, got nan"
    ]
    assert walk.resolve_params({"steps": [0.5, math.nan]})[1] == [
        "parameter 'steps' of attack 'walk' must be a list of finite numbers, got [0.5, nan]"
    ]
    assert walk.resolve_params({"radius": math.nan})[1] == [
        "parameter 'radius' of attack 'walk' must not be NaN, got nan"
    ]
    params, problems = walk.resolve_params({"radius": math.inf, "scale": -2.0})
    assert problems == [] and params["radius"] == math.inf, "an infinite default admits inf; no range, any sign"


def test_plugin_that_fails_to_import_is_listed_and_others_work(cli, tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_plugins(["broken_plugin"])
    info = next(p for p in registry.plugins if p.name == "broken_plugin")
    assert info.error == "ImportError: needs a library that is not installed"
    assert "pgd" in registry.components["attack"]
    code, out, err = cli("-p", "broken_plugin", "plugins")
    assert code == 0
    assert "broken_plugin" in out and "FAILED: ImportError: needs a library" in out
    assert "plugin 'broken_plugin' failed: ImportError" in err


def lifecycle_plugins(module_plugin, *functions):
    """Load each ``cell_started`` implementation as its own plugin, in order."""
    names = [module_plugin(f"reporter_{i}", cell_started=f) for i, f in enumerate(functions)]
    return load_plugins(names)


def test_lifecycle_hooks_are_called_in_pluggy_order(module_plugin):
    calls = []

    @hookimpl(tryfirst=True)
    def first(cell):
        calls.append("first")

    @hookimpl
    def plain(cell):
        calls.append("plain")

    @hookimpl(trylast=True)
    def last(cell):
        calls.append("last")

    registry = lifecycle_plugins(module_plugin, last, plain, first)
    registry.notify("cell_started", pytest.fail, cell="c")
    assert calls == ["first", "plain", "last"]


def test_lifecycle_wrappers_see_the_call(module_plugin):
    calls = []

    @hookimpl(wrapper=True)
    def wrapper(cell):
        calls.append(f"wrapper before {cell}")
        result = yield
        calls.append(f"wrapper after {result}")
        return result

    @hookimpl(hookwrapper=True)
    def old_style(cell):
        calls.append("old-style before")
        outcome = yield
        calls.append(f"old-style after {outcome.get_result()}")

    @hookimpl
    def plain(cell):
        calls.append("plain")

    registry = lifecycle_plugins(module_plugin, plain, wrapper, old_style)
    registry.notify("cell_started", pytest.fail, cell="c")
    assert calls == ["old-style before", "wrapper before c", "plain", "wrapper after []", "old-style after []"]


def test_a_raising_lifecycle_hook_is_reported_and_the_others_run(module_plugin):
    calls, warnings = [], []

    @hookimpl
    def before(cell):
        calls.append("before")

    @hookimpl
    def raising(cell):
        raise ValueError(f"reporter is down at {cell}")

    @hookimpl
    def after(cell):
        calls.append("after")

    @hookimpl(wrapper=True)
    def wrapper(cell):
        result = yield
        calls.append(result)
        return result

    registry = lifecycle_plugins(module_plugin, after, raising, before, wrapper)
    registry.notify("cell_started", warnings.append, cell="c")
    assert calls == ["before", "after", []]
    assert warnings == ["plugin 'reporter_1': hook cell_started raised ValueError: reporter is down at c"]
