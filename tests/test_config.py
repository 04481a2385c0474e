from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from csfl_fabric.cli import main
from csfl_fabric.config import Config, load_config, to_yaml
from csfl_fabric.errors import ConfigError, InvalidParamsError, UnknownNameError

from .conftest import REPO, SMOKE

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.rounds.clients_per_round <= cfg.data.num_clients


def test_overrides_apply_after_file() -> None:
    cfg = load_config(SMOKE, ["rounds.num_rounds=7", "train.lr=0.3", "seed=5"])
    assert (cfg.rounds.num_rounds, cfg.train.lr, cfg.seed) == (7, 0.3, 5)


def test_dict_source_and_shorthand_params() -> None:
    cfg = load_config({"data": {"partition": {"name": "dirichlet", "alpha": 0.1}}}, ["aggregator.name=fedadam",
                                                                                     "aggregator.server_lr=0.5"])
    assert cfg.data.partition.params == {"alpha": 0.1}
    assert cfg.aggregator.params == {"server_lr": 0.5}


def test_switching_component_drops_params_of_the_old_one() -> None:
    # The file (via the defaults) names dirichlet with alpha; switching to iid must not carry alpha over.
    cfg = load_config(SMOKE, ["data.partition.name=iid"])
    assert cfg.data.partition.name == "iid"
    assert cfg.data.partition.params == {}
    cfg = load_config({"aggregator": {"name": "fedavgm", "params": {"momentum": 0.5}}},
                      ["aggregator.name=fedadam", "aggregator.params.beta1=0.8"])
    assert cfg.aggregator.params == {"beta1": 0.8}
    # Naming the same component again keeps its params.
    cfg = load_config(SMOKE, ["data.partition.name=dirichlet", "data.partition.params.alpha=0.2"])
    assert cfg.data.partition.params == {"alpha": 0.2}


def test_file_switching_component_drops_schema_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  partition: {name: shards}\n")
    assert load_config(path).data.partition.params == {}


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(SMOKE, ["train.lr=0.25"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "error", "fragments"),
    [
        (["roundz.num_rounds=3"], ConfigError, ["`roundz`", "rounds"]),
        (["rounds.num_roundz=3"], ConfigError, ["`rounds.num_roundz`", "num_rounds"]),
        (["rounds.num_rounds=abc"], ConfigError, ["`rounds.num_rounds`", "integer", "'abc'"]),
        (["rounds.clients_per_round=500"], ConfigError, ["`rounds.clients_per_round`", "500", "num_clients=10"]),
        (["rounds.num_rounds=0"], ConfigError, ["`rounds.num_rounds`", ">= 1", "0"]),
        (["train.lr=-1"], ConfigError, ["`train.lr`", "-1"]),
        (["train.optimizer=adm"], ConfigError, ["`train.optimizer`", "'adm'", "adam"]),
        (["logging.wandb=offlin"], ConfigError, ["`logging.wandb`", "offline"]),
        (["memory.abort_threshold=0.5"], ConfigError, ["`memory.abort_threshold`", "0.5", "ram_threshold=0.7"]),
        (["data.loader=dataloder"], ConfigError, ["`data.loader`", "'dataloder'", "dataloader"]),
        (["data.max_cached_loaders=0"], ConfigError, ["`data.max_cached_loaders`", ">= 1"]),
        (["selector.name=heuristic.rnadom"], UnknownNameError, ["heuristic.rnadom", "heuristic.random"]),
        (["aggregator.name=fedavgg"], UnknownNameError, ["fedavgg", "fedavg"]),
        (["train.model=cnnn"], UnknownNameError, ["cnnn", "cnn"]),
        (["data.dataset=digitz"], UnknownNameError, ["digitz", "digits"]),
        (["data.partition.name=dirichlett"], UnknownNameError, ["dirichlett", "dirichlet"]),
        (["selector.params.d=3"], InvalidParamsError, ["`d`", "heuristic.random"]),
        (["aggregator.params.nope=1"], InvalidParamsError, ["`nope`", "fedavg"]),
        (["no_equals_sign"], ConfigError, ["no_equals_sign", "key=value"]),
    ],
)
def test_config_errors_are_one_clear_line(overrides: list[str], error: type, fragments: list[str]) -> None:
    with pytest.raises(error) as info:
        load_config(SMOKE, overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: {num_rounds: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "overrides",
    [["roundz=1"], ["rounds.clients_per_round=500"], ["selector.name=heuristic.rnadom"],
     ["data.partition.params.alpha=-1"]],
)
def test_cli_user_errors_exit_2_with_one_line(overrides: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    code = main(["run", str(SMOKE), f"logging.dir={runs}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("csfl-fabric: error:")
    assert "Traceback" not in err
    assert not runs.exists(), "a rejected config must leave no run directory"


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "csfl_fabric", "run", str(SMOKE), "rounds.clients_per_round=99",
                           f"logging.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "`rounds.clients_per_round`" in proc.stderr
