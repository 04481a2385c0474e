"""Reusable callbacks: hooks named ``on_<run|round|client>_<start|end>``, dispatched by `fabric.call`."""

from csfl_fabric.callbacks.base import HOOKS, Callback
from csfl_fabric.callbacks.checkpoint import Checkpoint

__all__ = ["HOOKS", "Callback", "Checkpoint"]
