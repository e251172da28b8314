"""Source fingerprints follow a component's own code and the modules of its plugin that it imports."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from harness.fingerprint import _collect, clear_cache, source_fingerprint

PLUGIN, CORE = "fp_plugin", "fp_core"


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def write(tmp_path, monkeypatch):
    """Write ``{relative path: source}`` under a directory on sys.path; forget the modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write_files(files: dict[str, str]) -> None:
        for relative, source in files.items():
            path = tmp_path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)

    yield write_files
    for name in [name for name in sys.modules if name.partition(".")[0] in (PLUGIN, CORE)]:
        del sys.modules[name]


def edit(write, files: dict[str, str], factory: str = f"{PLUGIN}.a:A") -> tuple[str, str]:
    """The fingerprint of ``factory`` before and after ``files`` are rewritten."""
    before = source_fingerprint(factory)
    write(files)
    clear_cache()
    return before, source_fingerprint(factory)


BASE = {
    f"{PLUGIN}/__init__.py": "REGISTERED = ['a', 'other']\n",
    f"{PLUGIN}/a.py": "from fp_plugin.b import helper\nclass A: pass\n",
    f"{PLUGIN}/b.py": "from . import c\ndef helper(): return c.VALUE\n",
    f"{PLUGIN}/c.py": "VALUE = 1\n",
    f"{PLUGIN}/other.py": "class Other: pass\n",
    f"{CORE}/__init__.py": "CORE = 1\n",
}


def test_same_source_same_digest_and_the_factory_module_counts(write):
    write(BASE)
    first = source_fingerprint(f"{PLUGIN}.a:A")
    clear_cache()
    assert source_fingerprint(f"{PLUGIN}.a:A") == first
    assert len(first) == 16 and int(first, 16) >= 0
    before, after = edit(write, {f"{PLUGIN}/a.py": "from fp_plugin.b import helper\nclass A: x = 2\n"})
    assert before != after


def test_cached_until_cleared(write):
    write(BASE)
    before = source_fingerprint(f"{PLUGIN}.a:A")
    write({f"{PLUGIN}/a.py": "class A: x = 2\n"})
    assert source_fingerprint(f"{PLUGIN}.a:A") == before
    clear_cache()
    assert source_fingerprint(f"{PLUGIN}.a:A") != before


@pytest.mark.parametrize(
    "files",
    [
        {f"{PLUGIN}/b.py": "from . import c\ndef helper(): return -c.VALUE\n"},  # imported absolutely
        {f"{PLUGIN}/c.py": "VALUE = 2\n"},  # transitively, by a relative ``from . import c``
    ],
    ids=["direct", "transitive"],
)
def test_editing_an_imported_module_changes_the_digest(write, files):
    write(BASE)
    before, after = edit(write, files)
    assert before != after


@pytest.mark.parametrize(
    "importer",
    [
        "import fp_plugin.sub.dep\n",
        "from fp_plugin.sub import dep\n",
        "from fp_plugin.sub.dep import VALUE\n",
        "from .sub import dep\n",
        "from .sub.dep import VALUE\n",
        "def build():\n    from .sub.dep import VALUE\n    return VALUE\n",
    ],
)
def test_each_import_form_is_followed(write, importer):
    write({**BASE, f"{PLUGIN}/a.py": importer, f"{PLUGIN}/sub/__init__.py": "", f"{PLUGIN}/sub/dep.py": "VALUE = 1\n"})
    before, after = edit(write, {f"{PLUGIN}/sub/dep.py": "VALUE = 2\n"})
    assert before != after


def test_parent_relative_import_is_followed(write):
    write({**BASE, f"{PLUGIN}/sub/__init__.py": "", f"{PLUGIN}/sub/deep.py": "from .. import c\nclass Deep: pass\n"})
    before, after = edit(write, {f"{PLUGIN}/c.py": "VALUE = 2\n"}, f"{PLUGIN}.sub.deep:Deep")
    assert before != after


@pytest.mark.parametrize(
    "files",
    [
        {f"{PLUGIN}/other.py": "class Other: x = 2\n"},  # another component of the same plugin
        {f"{PLUGIN}/__init__.py": "REGISTERED = ['a']\n"},  # the registration code, run but never imported
        {f"{PLUGIN}/sub/__init__.py": "X = 2\n"},  # a parent package on the way to the imported module
        {f"{CORE}/__init__.py": "CORE = 2\n"},  # another top-level package: the core
    ],
    ids=["sibling", "own-init", "parent-init", "core"],
)
def test_editing_a_module_that_is_not_imported_leaves_the_digest_alone(write, files):
    write(
        {
            **BASE,
            f"{PLUGIN}/a.py": "import fp_core\nfrom . import b\nfrom fp_plugin.sub.dep import VALUE\nclass A: pass\n",
            f"{PLUGIN}/sub/__init__.py": "X = 1\n",
            f"{PLUGIN}/sub/dep.py": "VALUE = 1\n",
        }
    )
    before, after = edit(write, files)
    assert before == after


def test_a_relative_import_beyond_the_top_level_package_is_ignored(write):
    write({**BASE, f"{PLUGIN}/sub/__init__.py": "", f"{PLUGIN}/sub/deep.py": "from .... import c\nclass Deep: pass\n"})
    before, after = edit(write, {f"{PLUGIN}/c.py": "VALUE = 2\n"}, f"{PLUGIN}.sub.deep:Deep")
    assert before == after


def test_an_imported_package_init_counts(write):
    write({**BASE, f"{PLUGIN}/a.py": "from fp_plugin import REGISTERED\nclass A: pass\n"})
    before, after = edit(write, {f"{PLUGIN}/__init__.py": "REGISTERED = []\n"})
    assert before != after


def test_moving_code_between_modules_changes_the_digest(write):
    write({**BASE, f"{PLUGIN}/a.py": "from . import b, c\n", f"{PLUGIN}/b.py": "X = 1\n", f"{PLUGIN}/c.py": ""})
    before, after = edit(write, {f"{PLUGIN}/b.py": "", f"{PLUGIN}/c.py": "X = 1\n"})
    assert before != after


def test_no_module_is_imported(write):
    write({f"{PLUGIN}/__init__.py": "raise RuntimeError\n", f"{PLUGIN}/broken.py": "raise RuntimeError\n"})
    assert len(source_fingerprint(f"{PLUGIN}.broken:Factory")) == 16
    assert not [name for name in sys.modules if name.partition(".")[0] == PLUGIN]


def test_a_callable_factory_matches_its_string_form(write):
    write(BASE)
    module = importlib.import_module(f"{PLUGIN}.a")
    assert source_fingerprint(module.A) == source_fingerprint(f"{PLUGIN}.a:A")


def test_a_single_file_module(write):
    write({f"{PLUGIN}.py": "def factory(): return 1\n"})
    before, after = edit(write, {f"{PLUGIN}.py": "def factory(): return 2\n"}, f"{PLUGIN}:factory")
    assert before != after


def test_without_a_source_file_the_fallback_never_raises(monkeypatch):
    module = types.ModuleType("fp_in_memory")
    exec("def build(): return 1\ndef other(): return 2\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    digests = {
        source_fingerprint(module.build),
        source_fingerprint(module.other),
        source_fingerprint(len),
        source_fingerprint("fp_no_such_package.mod:Factory"),
        source_fingerprint(lambda: 0),
    }
    assert len(digests) == 5 and all(len(digest) == 16 for digest in digests)
    monkeypatch.delitem(sys.modules, module.__name__)
    assert len(source_fingerprint(module.build)) == 16


def test_shipped_factories_have_distinct_stable_digests():
    pgd, mlp = source_fingerprint("harness_art.attacks:PGD"), source_fingerprint("harness_classifiers.models:MLP")
    clear_cache()
    assert source_fingerprint("harness_art.attacks:PGD") == pgd
    assert source_fingerprint("harness_classifiers.models:MLP") == mlp
    assert pgd != mlp and len(pgd) == len(mlp) == 16


def test_shipped_factories_cover_their_plugin_modules_only():
    """``loaders`` imports ``idx`` of its plugin; the core, torch and the registering ``__init__`` do not count."""
    assert sorted(_collect(importlib.util.find_spec("harness_datasets"), "harness_datasets.loaders")) == [
        "harness_datasets.idx",
        "harness_datasets.loaders",
    ]
    assert list(_collect(importlib.util.find_spec("harness_art"), "harness_art.attacks")) == ["harness_art.attacks"]


def test_the_cores_own_components_are_not_fingerprinted_by_the_cores_source():
    from harness.plugins import load_plugins

    registry = load_plugins()
    assert registry.get("defense", "none").fingerprint == "harness"  # core changes bump revision numbers instead
    assert registry.get("attack", "pgd").fingerprint != "harness"
