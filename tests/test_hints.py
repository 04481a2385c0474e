"""Hints that work: one line when fabric.devices > 1 would start CPU processes."""

from __future__ import annotations

import pytest
import torch

from csfl_fabric import cli
from csfl_fabric.config import load_config
from tests.conftest import SMOKE


def test_several_devices_without_a_gpu_say_they_start_cpu_processes(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cli._say_cpu_processes(load_config(SMOKE, ["fabric.devices=4"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "fabric.devices=4 without a GPU starts 4 CPU processes" in err[0]
    # Nothing for one device, nor in the processes the launcher starts (they have a LOCAL_RANK).
    cli._say_cpu_processes(load_config(SMOKE))
    monkeypatch.setenv("LOCAL_RANK", "1")
    cli._say_cpu_processes(load_config(SMOKE, ["fabric.devices=4"]))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("accelerator", ["cuda", "gpu"])
def test_a_gpu_accelerator_says_nothing(monkeypatch, capsys, accelerator: str) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cli._say_cpu_processes(load_config(SMOKE, ["fabric.devices=2", f"fabric.accelerator={accelerator}"]))
    assert capsys.readouterr().err == ""


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys, tmp_path) -> None:
    import importlib.util

    from csfl_fabric import extras
    from csfl_fabric.errors import MissingExtraError
    from csfl_fabric.registry import DATASETS

    real = importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("matplotlib", "torchvision") else real(name, *a))
    assert cli.main(["compare", str(SMOKE), f"logging.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "needs matplotlib" in err[0]
    assert 'pip install -e ".[report]"' in err[0]
    assert not any(tmp_path.iterdir())  # refused before any run
    with pytest.raises(MissingExtraError, match=r"Dataset `mnist` needs torchvision.*\[vision\]"):
        DATASETS.build("mnist", {}, root=str(tmp_path), download=False, num_clients=2, rng=None)
