"""Fault isolation at client boundaries: a failing or diverging client never ends the run, a signal stops it cleanly."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from csfl_callbacks.memory import emergency_cleanup

from csfl_fabric.data.store import ClientData
from csfl_fabric.errors import RunFailed, RunInterrupted
from csfl_fabric.state import ClientResult, Params
from csfl_fabric.training.flat import FlatParams, l2_norm
from csfl_fabric.training.sequential import ClientTrainer


def all_finite(params: Params) -> bool:
    """True when every floating-point entry of ``params`` is finite (one host sync, not one per tensor).

    >>> all_finite({"w": torch.ones(2)}), all_finite({"w": torch.tensor([1.0, float("nan")])})
    (True, False)
    """
    # A norm is NaN or inf iff some entry is (or the finite entries are astronomically large: diverged too).
    if isinstance(params, FlatParams):
        return math.isfinite(l2_norm(params.flat).item())
    floats = [t for t in params.values() if t.is_floating_point()]
    return not floats or math.isfinite(torch.stack(torch._foreach_norm(floats)).sum().item())


class ClientGuard:
    """Runs one client's training at a time and keeps a failing or diverging client out of the aggregate.

    A client whose loss or params are NaN/inf is left out with one warning (``train/diverged_clients``),
    or ends the run when ``on_divergence="abort"``. A client whose training raises is logged with its id,
    ``cleanup`` releases memory, and the round goes on without it (``train/failed_clients``). A round
    without a single usable client raises `RunFailed`. A stop request (SIGINT/SIGTERM) is honoured at
    the next client boundary by raising `RunInterrupted`.

    Args:
        on_divergence: ``"skip"`` (leave the client out) or ``"abort"`` (raise `RunFailed`).
        cleanup: called after a client raised; releases caches so that the next client has memory.
    """

    def __init__(self, on_divergence: str = "skip", cleanup: Callable[[], object] = emergency_cleanup) -> None:
        if on_divergence not in ("skip", "abort"):
            raise ValueError(f"Expected `on_divergence` to be 'skip' or 'abort' but got {on_divergence!r}.")
        self.on_divergence = on_divergence
        self.cleanup = cleanup
        self.stop_signal: int | None = None
        self.failed = self.diverged = 0

    def request_stop(self, signum: int) -> None:
        """Ask the run to stop at the next client boundary (called from a signal handler)."""
        self.stop_signal = signum

    def check_stop(self) -> None:
        """Raise `RunInterrupted` if a stop was requested; called between clients and between rounds."""
        if self.stop_signal is not None:
            raise RunInterrupted(self.stop_signal)

    def fit(
        self, trainer: ClientTrainer, global_params: Params, client: ClientData, round_idx: int
    ) -> tuple[Params, ClientResult] | None:
        """``trainer.fit`` of one client, or None when the client failed or diverged (counted, warned)."""
        try:
            params, result = trainer.fit(global_params, client)
        except Exception as e:  # noqa: BLE001 - one client's failure (e.g. CUDA out of memory) must not end the run
            self.failed += 1
            self.cleanup()
            warnings.warn(f"Client {client.client_id} in round {round_idx} failed ({type(e).__name__}: {e}); left "
                          "out of the round.", RuntimeWarning, stacklevel=2)
            return None
        if result.diverged or (result.param_norm is None and not all_finite(params)):
            message = f"Client {client.client_id} in round {round_idx} diverged (loss {result.loss}, or NaN/inf params)"
            if self.on_divergence == "abort":
                raise RunFailed(f"{message} and `train.on_divergence` is 'abort'. Lower `train.lr`, set "
                                "`train.clip_grad_norm`, or set `train.on_divergence=skip`.")
            self.diverged += 1
            warnings.warn(f"{message}; left out of the aggregate.", RuntimeWarning, stacklevel=2)
            return None
        return params, result

    def end_round(self, round_idx: int, num_selected: int, num_usable: int) -> dict[str, float]:
        """The round's fault counts (this process's clients) as metrics; resets them.

        Raises:
            RunFailed: clients were trained but none of them (on any process) was usable.
        """
        failed, diverged = self.failed, self.diverged
        self.failed = self.diverged = 0
        if num_selected and not num_usable:
            raise RunFailed(f"Every client of round {round_idx} failed ({failed}) or diverged ({diverged}); "
                            "see the warnings above for the causes.")
        return {"train/failed_clients": float(failed), "train/diverged_clients": float(diverged)}
