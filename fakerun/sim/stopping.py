"""Early stopping on the validation loss (--fake-early-stopping): the rule of HF's and Lightning's."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Patience:
    """Counts validations in a row that do not beat the best loss so far; `patience` of them stop the run."""

    patience: int
    best: float = math.inf
    best_step: int = 0
    strikes: int = 0

    def improves(self, val_loss: float) -> bool:
        """Whether `val_loss` beats the best so far (a NaN never does)."""
        return val_loss < self.best

    def would_stop(self, val_loss: float) -> bool:
        """Whether this validation would use up the patience (nothing is recorded)."""
        return not self.improves(val_loss) and self.strikes + 1 >= self.patience

    def observe(self, step: int, val_loss: float) -> bool:
        """Records the validation after `step`; True when the run must stop."""
        if self.improves(val_loss):
            self.best, self.best_step, self.strikes = val_loss, step, 0
            return False
        self.strikes += 1
        return self.strikes >= self.patience
