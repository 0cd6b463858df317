"""The package's layers: no import cycles, no import of a layer above, and DVC deps that list
every module a stage runs."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr_impressions.config import SECTIONS, UNTRACKED

from .helpers import REPO
from .imports import PACKAGE, closure, import_graph, imports_of, module_path

# Lower layers never import higher ones. The top-level utilities are the base; the stage runner
# and the CLI sit above everything.
LAYERS = {
    "errors": 0, "config": 0, "atomic": 0, "schedules": 0, "settings": 0,
    "data": 1,
    "features": 2,
    "evaluation": 3,
    "captioning": 4,
    "reporting": 5,
    "serving": 6,
    "stage": 6, "cli": 6,
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def test_every_module_has_a_layer() -> None:
    unknown = {m for m in import_graph() if m != PACKAGE and m.split(".")[1] not in LAYERS}
    assert not unknown


def test_package_inits_hold_only_a_docstring() -> None:
    for path in (REPO / "src" / PACKAGE).rglob("__init__.py"):
        body = ast.parse(path.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), \
            f"{path} holds code: code there would run for every stage without being a dep"


def test_no_import_cycles() -> None:
    graph = import_graph()
    # Parent packages' __init__ files import nothing, so module-level edges are the graph.
    graphlib.TopologicalSorter(graph).static_order()  # raises CycleError on a cycle


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
              if layer_of(t) > layer_of(m)]
    assert not upward, upward


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    source = REPO / "src" / PACKAGE / "captioning" / "predict.py"
    found = imports_of(source, f"{PACKAGE}.captioning.predict")
    assert f"{PACKAGE}.captioning.bundle" in found and f"{PACKAGE}.data.images" in found
    script = tmp_path / "script.py"
    script.write_text("def main():\n    from cxr_impressions.captioning import studies\n")
    assert imports_of(script) == {f"{PACKAGE}.captioning", f"{PACKAGE}.captioning.studies"}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _settings_module(section: str) -> str:
    """The module of a section's dataclass, which `load_section` imports by name."""
    return f"{PACKAGE}.settings.{section}"


def test_each_section_is_a_module_of_settings_holding_its_dataclass() -> None:
    """The deps check below finds a loaded section's module by this name."""
    for section in SECTIONS:
        assert SECTIONS[section].__module__ == _settings_module(section), section
    modules = {m for m in import_graph() if m.startswith(f"{PACKAGE}.settings.")}
    # What several sections' dataclasses use, and the decoding settings that `decode` extends.
    shared = {_settings_module("fields"), _settings_module("decoding")}
    assert modules == {_settings_module(s) for s in SECTIONS} | shared


def _modules_run(stage: str) -> set[str]:
    """The package modules a stage's script runs: those it imports, at any depth, and the
    settings module of each section it loads or tracks, which `load_section` imports by name
    (no import statement shows it), with what that module imports."""
    script = REPO / "stages" / f"{stage}.py"
    sections = _loaded_sections(script) | set(_stages()[stage].get("params", []))
    start = imports_of(script) | {_settings_module(s) for s in sections}
    return closure(start, import_graph())


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_deps_cover_every_module_the_stage_runs(stage: str) -> None:
    spec = _stages()[stage]
    assert f"stages/{stage}.py" in spec["deps"]
    deps = [REPO / d for d in spec["deps"] if isinstance(d, str) and "${" not in d]
    used = _modules_run(stage)
    missing = []
    for module in sorted(used):
        path = module_path(module)
        if path.name == "__init__.py":
            continue  # docstring only (tested above)
        if not any(path == d or d in path.parents for d in deps):
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"dvc.yaml stage {stage} misses deps: {missing}"


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_deps_list_no_module_the_stage_does_not_run(stage: str) -> None:
    """Exactly the modules it runs: a package module listed but not run would rerun the stage
    for nothing. A folder is a dep only where the stage runs every module in it (reporting/, whose
    static files the page reads too)."""
    used = {module_path(m) for m in _modules_run(stage)}
    unused = []
    for dep in _stages()[stage]["deps"]:
        path = REPO / dep
        if not isinstance(dep, str) or REPO / "src" not in path.parents:
            continue
        modules = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        unused += [str(m.relative_to(REPO)) for m in modules
                   if m not in used and m.name != "__init__.py"]
    assert not unused, f"dvc.yaml stage {stage} lists modules it does not run: {unused}"


def test_a_decode_param_reruns_the_selection_and_no_stage_before_it() -> None:
    """Why each section has its own module, and the decoder its own settings class: a new or
    changed field of DecodeParams reruns the selection stage (and, through models/decoding.json,
    what follows it), never training (an hour on the full data) or the data, finetune and
    features stages before it (hours, and finetune is not bitwise reproducible). The decoding
    settings themselves (settings/decoding.py) are code that train runs too: its validation
    decoding and the bundle's loader use them."""
    stages = _stages()
    decode = "src/cxr_impressions/settings/decode.py"
    rerun = {stage for stage, spec in stages.items() if decode in spec["deps"]}
    assert rerun == {"selection"}, sorted(rerun)
    decoding = "src/cxr_impressions/settings/decoding.py"
    assert {"train", "selection", "evaluate"} <= {
        stage for stage, spec in stages.items() if decoding in spec["deps"]}


def test_loading_a_section_imports_only_its_own_settings_module() -> None:
    """The loader's import of a section's module is lazy, in a fresh process as a stage runs:
    loading `decode` imports settings.decode (and what it imports), not finetune's module."""
    code = ("import sys\n"
            "from cxr_impressions.config import load_section\n"
            "load_section('decode')\n"
            "print(*sorted(m for m in sys.modules if m.startswith('cxr_impressions.settings.')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = result.stdout.split()
    assert "cxr_impressions.settings.finetune" not in imported
    assert imported == [_settings_module("decode"), _settings_module("decoding"),
                        _settings_module("fields")]


def _loaded_sections(path: Path) -> set[str]:
    """The params sections a script loads: the literal names of its `load_section` calls."""
    sections = set()
    for node in ast.walk(ast.parse(path.read_text())):
        called = getattr(node, "func", None)
        if isinstance(node, ast.Call) and getattr(called, "id", getattr(called, "attr", None)) \
                == "load_section":
            name = node.args[0] if node.args else None
            assert isinstance(name, ast.Constant) and isinstance(name.value, str), \
                f"{path}:{node.lineno}: load_section needs a literal section name"
            sections.add(name.value)
    return sections


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_stage_tracks_exactly_the_whole_sections_it_reads(stage: str) -> None:
    """Whole sections, so a typo in one reruns the stage (and meets the loader's error) instead
    of being ignored; exactly those read, so nothing is used untracked or tracked unused;
    `machine` never, so paths and threads of one machine rerun nothing."""
    tracked = _stages()[stage].get("params", [])
    assert all(isinstance(p, str) and p in SECTIONS for p in tracked), \
        f"dvc.yaml stage {stage}: params must be whole sections of params.yaml, got {tracked}"
    assert not set(tracked) & UNTRACKED, f"dvc.yaml stage {stage} tracks {UNTRACKED}"
    loaded = _loaded_sections(REPO / "stages" / f"{stage}.py")
    assert set(tracked) == loaded - UNTRACKED, (stage, sorted(tracked), sorted(loaded))


def test_only_stage_scripts_read_params() -> None:
    """The package takes its params as arguments, so the stage scripts' `load_section` calls are
    all a stage reads, and the test above sees them all."""
    # The CLI may read sections no stage tracks (`serve`: `cxr serve`'s settings).
    readers = [str(path.relative_to(REPO)) for path in (REPO / "src" / PACKAGE).rglob("*.py")
               if path.name != "config.py" and _loaded_sections(path) - UNTRACKED]
    assert not readers
    probe = REPO / "stages" / "train.py"
    assert _loaded_sections(probe) == {"model", "train", "machine"}  # sees calls
