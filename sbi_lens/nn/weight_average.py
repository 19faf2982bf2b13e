"""An exponential moving average of a module's weights, evaluated in place of them.

sbi's ``NPE.train()`` runs Adam at a fixed rate and keeps the epoch with the best
validation loss. With a fixed rate the weights keep jittering around the optimum, and
a BatchNorm network turns that jitter into validation losses that jump from epoch to
epoch: the kept epoch is partly luck and early stopping comes too soon
(``docs/estimator.md``). ``sbi-lens train`` anneals the rate with a cosine schedule;
sbi's loop cannot, but it does switch the network to eval mode for validation. A
module that owns a :class:`WeightAverage` therefore:

* averages its live weights after every optimiser step (seen as a change of the
  weights' version counters at the next training-mode loss, or at the switch to
  eval mode), and
* evaluates with the average: ``eval()`` swaps the averaged values into the
  parameters and ``train()`` swaps the live ones back, so sbi's validation, its
  best-epoch ``state_dict()`` and the posterior it returns all use the average,
  while the optimiser only ever steps the live weights.

The horizon is given in epochs, not steps, so it means the same at 2,000 and 200,000
training simulations: an epoch is the run of training steps between two switches to
eval mode, and the per-step decay is ``1 − 1 / (steps per epoch × epochs)``. Floating
buffers (BatchNorm's running statistics) are averaged alongside the parameters, as in
Polyak averaging of whole models (timm's ``ModelEmaV2``), so the running statistics
belong to weights like the averaged ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sbi_lens.compat import tensor_version

__all__ = ["WeightAverage"]


class WeightAverage(nn.Module):
    """Exponential moving average of another module's floating parameters and buffers.

    The averaged values live in non-persistent buffers: they move with ``.to()``, are
    not trained and are not part of ``state_dict()`` (in eval mode the owner's
    parameters hold them, so its state dict is the averaged model).

    Args:
        epochs: Averaging horizon in epochs (the e-folding length of the average).
        warmup: The decay is at most ``(1 + t) / (warmup + t)`` after ``t`` updates,
            so the first, fast-changing weights are forgotten quickly.
    """

    def __init__(self, epochs: float, warmup: float = 10.0) -> None:
        super().__init__()
        if not epochs > 0:
            raise ValueError(f"the averaging horizon must be > 0 epochs, got {epochs}.")
        self.epochs = float(epochs)
        self.warmup = float(warmup)
        self.updates = 0
        self._count = 0  # tensors averaged, stored as buffers avg_0 … avg_{count-1}
        self._steps_in_phase = 0
        self._steps_per_epoch: int | None = None
        self._seen: tuple[int, ...] | None = None
        self._live: list[Tensor] | None = None  # live values while the average is in place

    # ---- which tensors --------------------------------------------------------------

    def _tracked(self, owner: nn.Module) -> list[Tensor]:
        """The owner's floating parameters and buffers, this module's own excluded."""
        own = {id(t) for t in self.buffers()}
        tensors = list(owner.parameters())
        tensors += [b for b in owner.buffers() if b.is_floating_point() and id(b) not in own]
        return tensors

    def _averages(self) -> list[Tensor]:
        return [getattr(self, f"avg_{i}") for i in range(self._count)]

    def _store(self, values: list[Tensor]) -> None:
        """Make ``values`` the averages (non-persistent buffers avg_0 … avg_{n-1})."""
        for i, value in enumerate(values):
            self.register_buffer(f"avg_{i}", value, persistent=False)
        self._count = len(values)

    @property
    def is_swapped_in(self) -> bool:
        """Whether the owner's tensors currently hold the averaged values."""
        return self._live is not None

    # ---- averaging ------------------------------------------------------------------

    def decay(self) -> float:
        """The weight of the old average in the next update."""
        decay = (1.0 + self.updates) / (self.warmup + self.updates)
        if self._steps_per_epoch:
            decay = min(decay, 1.0 - 1.0 / max(self._steps_per_epoch * self.epochs, 1.0))
        return min(decay, 1.0)

    @torch.no_grad()
    def update(self, owner: nn.Module) -> None:
        """Average in the owner's live tensors if they changed since the last update."""
        if self.is_swapped_in:
            return
        tensors = self._tracked(owner)
        versions = tuple(tensor_version(t) for t in tensors)
        if versions == self._seen:
            return
        if self.updates == 0:
            self._store([t.detach().clone() for t in tensors])
        else:
            weight = 1.0 - self.decay()
            for average, t in zip(self._averages(), tensors, strict=True):
                average.lerp_(t.detach(), weight)
        self.updates += 1
        self._steps_in_phase += 1
        self._seen = versions

    # ---- swapping -------------------------------------------------------------------

    @torch.no_grad()
    def swap_in(self, owner: nn.Module) -> None:
        """Put the averaged values into the owner's tensors (entering eval mode)."""
        self.update(owner)
        if self.is_swapped_in or self.updates == 0:
            return
        if self._steps_in_phase:
            self._steps_per_epoch = self._steps_in_phase
            self._steps_in_phase = 0
        tensors = self._tracked(owner)
        self._live = [t.detach().clone() for t in tensors]
        _copy(tensors, self._averages())

    @torch.no_grad()
    def swap_out(self, owner: nn.Module) -> None:
        """Put the live values back into the owner's tensors (entering training mode)."""
        if not self.is_swapped_in:
            return
        tensors = self._tracked(owner)
        _copy(tensors, self._live)
        self._live = None
        self._seen = tuple(tensor_version(t) for t in tensors)  # already averaged in

    @torch.no_grad()
    def reset(self, owner: nn.Module) -> None:
        """Restart the average at the owner's current values (after ``load_state_dict``).

        Loaded weights are the truth: they become both the live weights and the
        average, and the epoch length learnt so far is kept.
        """
        self._live = None
        if self.updates == 0:
            return
        tensors = self._tracked(owner)
        _copy(self._averages(), tensors)
        self._seen = tuple(tensor_version(t) for t in tensors)

    # ---- checkpoints ----------------------------------------------------------------

    def state(self) -> dict:
        """What a training checkpoint needs to continue the average exactly.

        Take it at an epoch's end, with the live weights in place (training mode):
        they count as averaged in already, as they do after ``swap_out``.
        """
        return {
            "averages": [a.detach().clone() for a in self._averages()],
            "updates": self.updates,
            "steps_per_epoch": self._steps_per_epoch,
        }

    @torch.no_grad()
    def load_state(self, owner: nn.Module, state: dict) -> None:
        """Continue from :meth:`state`; the owner already holds the checkpoint's live weights."""
        tensors = self._tracked(owner)
        averages = state["averages"]
        if len(averages) != len(tensors):
            raise ValueError(
                f"the checkpoint's weight average has {len(averages)} tensors, the model "
                f"{len(tensors)}: it was saved from another architecture"
            )
        self._store([average.to(t) for average, t in zip(averages, tensors, strict=True)])
        self.updates = int(state["updates"])
        self._steps_per_epoch = state["steps_per_epoch"]
        self._steps_in_phase = 0
        self._live = None
        self._seen = tuple(tensor_version(t) for t in tensors)

    def extra_repr(self) -> str:
        return f"epochs={self.epochs:g}, updates={self.updates}"


def _copy(targets: list[Tensor], sources: list[Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
