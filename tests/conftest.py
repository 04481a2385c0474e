from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never touch the network or a W&B account.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def smoke(tmp_path: Path) -> list[str]:
    """Overrides that point the smoke config's run directory into tmp_path."""
    return [f"logging.dir={tmp_path / 'runs'}"]
