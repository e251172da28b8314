"""Plugin loading, component registration, broken plugins and lifecycle hooks."""

from __future__ import annotations

import json
import sys
import types

import pytest

from harness.errors import UsageError
from harness.hookspecs import hookimpl
from harness.plugins import load_plugins


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
    assert listing["art"]["components"] == {"attack": ["fgsm", "pgd"]} and "error" not in listing["art"]
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
    assert set(registry.components["attack"]) == {"fgsm", "pgd"}
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
