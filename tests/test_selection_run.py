"""Selectors inside real runs: probes are counted, updates reach the selector, plug-ins load from config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from csfl_fabric import run
from csfl_fabric.cli import main
from csfl_fabric.config import load_config, to_yaml
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import SELECTORS

from .conftest import SMOKE


def test_pow_d_probes_d_clients_per_round(smoke: list[str]) -> None:
    result = run(SMOKE, [*smoke, "selector.name=heuristic.pow_d", "selector.d=6", "rounds.num_rounds=2"])
    assert [m["select/probed_clients"] for m in result.metrics] == [6, 6]


def test_duplicated_clients_train_once_per_draw(smoke: list[str]) -> None:
    class Spy:
        ids: list[list[int]] = []

        def on_selection(self, selection: Any) -> None:
            self.ids.append(selection.ids.tolist())

    spy = Spy()
    overrides = [*smoke, "selector.name=heuristic.size_proportional", "rounds.clients_per_round=8",
                 "rounds.num_rounds=2"]
    result = run(SMOKE, overrides, callbacks=[spy])
    assert any(len(set(ids)) < len(ids) for ids in spy.ids), "8 draws from 10 clients should repeat one"
    assert [m["select/num_selected"] for m in result.metrics] == [8, 8]
    assert np.isfinite(result.metrics[-1]["eval/loss"])


def _built(overrides: list[str], run_dir: Path) -> Any:
    from csfl_fabric.build import build_run

    run_dir.mkdir()
    return build_run(load_config(SMOKE, overrides), run_dir=run_dir)


def test_updates_reach_selectors_that_need_them(tmp_path: Path) -> None:
    built = _built(["selector.name=learning.divfl", "selector.signal=update", "rounds.num_rounds=2"], tmp_path / "run")
    selector = built.orchestrator.selector
    seen: list[dict[int, Any] | None] = []
    update = selector.update
    selector.update = lambda feedback: (seen.append(feedback.updates), update(feedback))  # type: ignore[method-assign]
    built.orchestrator.run()
    num_params = sum(p.numel() for p in built.orchestrator.global_params.values())
    assert all(u is not None and len(u) == 4 for u in seen)
    assert all(v.shape == (num_params,) and v.abs().sum() > 0 for u in seen for v in u.values())  # type: ignore[union-attr]
    assert selector.known.sum() == 8  # two rounds of 4 unseen clients


def test_updates_are_not_collected_for_other_selectors(tmp_path: Path) -> None:
    built = _built(["rounds.num_rounds=1"], tmp_path / "run")
    built.orchestrator.run()
    assert built.orchestrator._updates is None


PLUGIN = '''
import numpy as np
from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector
from csfl_fabric.state import Selection


@SELECTORS.register("user.first_k")
class FirstK(ClientSelector):
    """The first k available clients (a plug-in example, 2024, https://example.org)."""

    def select(self, ctx):
        return Selection(ids=ctx.available[: ctx.k].astype(np.int64))
'''


def test_selector_import_registers_a_user_selector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_selectors_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    config = load_config(SMOKE, ["selector.import=my_selectors_plugin", "selector.name=user.first_k"])
    assert config.selector.module == "my_selectors_plugin"
    assert "user.first_k" in SELECTORS
    (tmp_path / "resolved.yaml").write_text(to_yaml(config))  # what a run directory keeps, reloaded on resume
    assert load_config(tmp_path / "resolved.yaml") == config


def test_failing_selector_import_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"Could not import `selector.import=no_such_module_xyz` \(ModuleNotFound"):
        load_config(SMOKE, ["selector.import=no_such_module_xyz"])
    # A module that fails inside its own code, with a two-line message: still one line, exit code 2.
    (tmp_path / "broken_plugin_xyz.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(SMOKE), "selector.import=broken_plugin_xyz", f"logging.dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "`selector.import=broken_plugin_xyz` (RuntimeError: boom second line)" in err
    assert not (tmp_path / "runs").exists()


def test_plugin_run_from_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_first_k_plugin.py").write_text(PLUGIN.replace("user.first_k", "user.first_k_yaml"))
    (tmp_path / "exp.yaml").write_text(SMOKE.read_text().replace(
        "selector: {name: heuristic.random}", "selector: {name: user.first_k_yaml, import: my_first_k_plugin}"))
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "exp.yaml", [f"logging.dir={tmp_path / 'runs'}", "rounds.num_rounds=1"])
    assert result.summary["selector"] == "user.first_k_yaml"
