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
