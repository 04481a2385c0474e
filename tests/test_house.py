"""The package's shape: no import cycles, small modules, old import paths, callbacks and plug-ins from the config."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import csfl_fabric
from csfl_fabric import _compat, cli, run
from csfl_fabric.config import load_config
from csfl_fabric.errors import ConfigError, InvalidParamsError, UnknownNameError
from tests import plugin_fixtures
from tests.conftest import REPO, SMOKE

PACKAGES = {"csfl_fabric": REPO / "csfl_fabric", "csfl_callbacks": REPO / "callbacks" / "csfl_callbacks"}


def _module_imports() -> dict[str, set[str]]:
    """Every module of both packages -> the modules of both it imports (any import statement, anywhere)."""
    graph: dict[str, set[str]] = {}
    for top, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = (top, *path.relative_to(root).with_suffix("").parts)
            name = ".".join(parts).removesuffix(".__init__")
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
            graph[name] = deps
    return {m: {_resolve(d, graph) for d in deps} - {"", m, "csfl_fabric"} for m, deps in graph.items()}


def _resolve(name: str, graph: dict[str, set[str]]) -> str:
    while name and name not in graph:
        name = name.rpartition(".")[0]
    return name


def test_no_module_is_part_of_an_import_cycle() -> None:
    graph = _module_imports()
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            cycles.append([*stack[stack.index(module):], module])
            return
        for dep in sorted(graph.get(module, ())):
            if not dep.startswith(module + "."):  # a package importing its own submodules is not a cycle
                visit(dep, [*stack, module])

    for module in sorted(graph):
        visit(module, [])
        if cycles:
            break
    assert cycles == []


def test_csfl_callbacks_never_imports_csfl_fabric() -> None:
    graph = _module_imports()
    assert {m: d for m, d in graph.items() if m.startswith("csfl_callbacks")
            and any(x.startswith("csfl_fabric") for x in d)} == {}


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for root in PACKAGES.values() for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize(("old", "new"), sorted(_compat.MOVED.items()))
def test_old_import_paths_still_work(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_public_names_resolve_to_the_same_objects() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from csfl_fabric.callbacks.memory import RamGuard as OldGuard
        from csfl_fabric.compare import compare as old_compare
        from csfl_fabric.trainer import ClientTrainer as OldTrainer
    from csfl_callbacks import RamGuard

    from csfl_fabric.callbacks import Callback
    from csfl_fabric.callbacks import RamGuard as ReExported
    from csfl_fabric.training.sequential import ClientTrainer

    assert OldGuard is RamGuard is ReExported
    assert OldTrainer is ClientTrainer
    assert old_compare is csfl_fabric.compare
    assert Callback is csfl_fabric.Callback
    assert set(csfl_fabric.__all__) == set(csfl_fabric._PUBLIC)


def test_importing_the_package_loads_no_training_plotting_or_vision_code() -> None:
    code = "import sys, csfl_fabric; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=REPO).stdout.split())
    assert not loaded & {"torch", "lightning", "matplotlib", "scipy", "torchvision", "omegaconf", "wandb"}


def _write(tmp_path: Path, extra: dict) -> Path:
    config = {**yaml.safe_load(SMOKE.read_text()), **extra}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_callbacks_from_the_config_are_built_after_the_built_in_ones(tmp_path: Path) -> None:
    # Prepare: a registered callback that takes `release`, one by `module:Class` with a param, and a built-in one.
    path = _write(tmp_path, {"callbacks": [{"target": "plugin.releaser", "params": {"label": "x"}},
                                           {"target": "tests.plugin_fixtures:RoundCounter", "params": {"start": 10}},
                                           {"target": "memory.monitor", "params": {"every_n_rounds": 2}}],
                             "plugins": ["tests.plugin_fixtures"]})
    plugin_fixtures.RoundCounter.instances.clear()
    result = run(path, [f"logging.dir={tmp_path / 'runs'}"])
    # Assert: the counter ran each round from its param, wrote its metric, and the releaser got the run's caches.
    assert [r["plugin/rounds_seen"] for r in result.metrics] == [11.0, 12.0, 13.0]
    assert len(plugin_fixtures.RoundCounter.instances) == 1
    releaser = plugin_fixtures.Releaser.last
    assert releaser is not None
    assert releaser.label == "x"
    assert [f.__qualname__ for f in releaser.release] == ["ClientStore.release", "ClientTrainer.release"]


@pytest.mark.parametrize(("entry", "error", "message"), [
    ({"target": "memory.monitr"}, UnknownNameError, "`callbacks[0].target`: Unknown callback `memory.monitr`. "
                                                    "Valid choices (closest first): memory.monitor"),
    ({"target": "no_such_module:Thing"}, UnknownNameError, "Could not load callback `no_such_module:Thing` "
                                                           "(ModuleNotFoundError"),
    ({"target": "tests.plugin_fixtures:Missing"}, UnknownNameError, "AttributeError"),
    ({"target": "memory.monitor", "params": {"every": 2}}, InvalidParamsError,
     "`callbacks[0].params`: Unknown param `every` for callback `memory.monitor`. Valid params: every_n_rounds"),
    ({"target": ""}, ConfigError, "`callbacks[0].target` is empty"),
    ({"target": "memory.monitor", "parms": {}}, ConfigError, "Unknown key `parms` in `callbacks[0]`. Valid keys: "
                                                            "target, params."),
    ("memory.monitor", ConfigError, "Expected `callbacks[0]` to be a mapping"),
])
def test_bad_callback_entries_name_the_entry(entry: dict | str, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        load_config({**yaml.safe_load(SMOKE.read_text()), "callbacks": [entry]})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_callback_entry_is_one_line_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {"callbacks": [{"target": "memory.ram_gaurd"}]})
    assert cli.main(["run", str(path), f"logging.dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csfl-fabric: error: `callbacks[0].target`: Unknown callback `memory.ram_gaurd`")
    assert "memory.ram_guard" in err
    assert not (tmp_path / "runs").exists()


def test_plugins_register_a_dataset_and_a_partitioner(tmp_path: Path) -> None:
    overrides = ["plugins=[tests.plugin_fixtures]", "data.dataset=plugin.blobs", "data.params.n=120",
                 "data.partition.name=plugin.deal", "data.num_clients=6", "train.model=mlp",
                 f"logging.dir={tmp_path / 'runs'}"]
    result = run(SMOKE, overrides)
    assert result.summary["status"] == "success"
    assert result.summary["final_acc"] > 0.8  # two well-separated blobs
    with pytest.raises(ConfigError, match=r"Could not import `plugins\[0\]=tests.no_such_plugin`"):
        load_config(SMOKE, ["plugins=[tests.no_such_plugin]"])
