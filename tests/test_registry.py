from __future__ import annotations

import pytest

from csfl_fabric.errors import InvalidParamsError, UnknownNameError
from csfl_fabric.registry import Registry


def _registry() -> Registry:
    reg = Registry("widget", provided=("size",))

    @reg.register("family.alpha")
    def alpha(size: int, scale: float = 1.0) -> float:
        """Alpha widget."""
        return size * scale

    @reg.register("family.beta")
    class Beta:
        """Beta widget."""

    return reg


def test_build_passes_params_and_provided_args() -> None:
    assert _registry().build("family.alpha", {"scale": 2.0}, size=3) == 6.0


def test_names_and_descriptions() -> None:
    reg = _registry()
    assert reg.names() == ["family.alpha", "family.beta"]
    assert reg.describe("family.alpha") == "Alpha widget."
    assert reg.param_names("family.alpha") == ["scale"]


def test_unknown_name_lists_closest_first() -> None:
    with pytest.raises(UnknownNameError) as info:
        _registry().get("family.betta")
    assert str(info.value) == "Unknown widget `family.betta`. Valid choices (closest first): family.beta, family.alpha."


def test_unknown_and_provided_params_are_rejected() -> None:
    with pytest.raises(InvalidParamsError, match="`scal`.*Valid params: scale"):
        _registry().build("family.alpha", {"scal": 2.0}, size=1)
    with pytest.raises(InvalidParamsError, match="`size`"):
        _registry().check_params("family.alpha", {"size": 2})


def test_duplicate_registration_raises() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("family.alpha")(lambda: None)
