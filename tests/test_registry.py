"""Plugin loading, component registration and its errors."""

from __future__ import annotations

import sys
import types

import pytest

from harness.errors import PluginError, UsageError
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


def test_duplicate_component_names_both_plugins(module_plugin):
    @hookimpl
    def register_models(register):
        register("mlp", "x:y")

    name = module_plugin("dup_plugin", register_models=register_models)
    with pytest.raises(PluginError) as info:
        load_plugins([name])
    assert str(info.value) == (
        "model 'mlp' is registered twice: by plugin 'classifiers' (robustness-harness 0.1.0) "
        "and by plugin 'dup_plugin' ((unpackaged))"
    )


def test_misspelled_hook_implementation_is_rejected(module_plugin):
    @hookimpl
    def register_modles(register):
        pass

    name = module_plugin("typo_plugin", register_modles=register_modles)
    with pytest.raises(PluginError, match="register_modles"):
        load_plugins([name])


def test_attack_must_declare_its_norm(module_plugin):
    @hookimpl
    def register_attacks(register):
        register("normless", "x:y", params={})

    name = module_plugin("normless_plugin", register_attacks=register_attacks)
    with pytest.raises(PluginError, match="must declare a 'norm' parameter"):
        load_plugins([name])


def test_raising_hook_is_reported_and_other_plugins_work(module_plugin):
    @hookimpl
    def register_models(register):
        register("half", "x:y")
        raise RuntimeError("broken registration")

    name = module_plugin("raising_plugin", register_models=register_models)
    registry = load_plugins([name])
    info = next(p for p in registry.plugins if p.name == name)
    assert "RuntimeError: broken registration" in info.error
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
