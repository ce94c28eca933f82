"""Warnings in the training log for a run that looks broken while it runs: sample grids that are
blank or all alike, a loss that stopped falling, a collapsed codebook. Each returns the message (or
None), so the loop decides where it goes."""
import numpy as np

CODEBOOK_USAGE_FLOOR = 0.05  # a VQ tokenizer hitting less than this fraction of its codes has collapsed


def grid_warning(images: np.ndarray, step: int) -> str | None:
    """images (N, H, W, C) uint8 of a sample grid -> a warning when every image is one flat colour or
    all N are the same image."""
    images = np.asarray(images)
    if np.all(images.max(axis=(1, 2, 3)) == images.min(axis=(1, 2, 3))):
        return f"the sample grid at step {step} is blank: every image is one flat colour"
    if len(images) > 1 and np.all(images == images[:1]):
        return f"the sample grid at step {step} shows one image {len(images)} times: samples ignore their noise and class"
    return None


class LossPlateau:
    """`update(step, loss)` with each logged mean loss: a warning when the loss has not fallen below
    its best for `patience` log lines in a row (once per plateau; a new best starts a new watch)."""

    def __init__(self, patience: int = 5):
        self.patience = patience
        self.best, self.best_step, self.stalled = float("inf"), 0, 0

    def update(self, step: int, loss: float) -> str | None:
        if loss < self.best:
            self.best, self.best_step, self.stalled = loss, step, 0
            return None
        self.stalled += 1
        if self.stalled != self.patience:
            return None
        return (f"the loss has not fallen for {self.patience} log lines (best {self.best:.4g} at step {self.best_step}, "
                f"now {loss:.4g} at step {step}): a too high or too low learning rate, or a finished run")


def codebook_warning(means: dict[str, float], step: int) -> str | None:
    """A warning when a logged `codebook_usage` (the fraction of the codebook a step hit) is below
    `CODEBOOK_USAGE_FLOOR`."""
    usage = means.get("codebook_usage")
    if usage is None or usage >= CODEBOOK_USAGE_FLOOR:
        return None
    return (f"codebook collapse at step {step}: {100 * usage:.1f}% of the codes in use (below "
            f"{100 * CODEBOOK_USAGE_FLOOR:.0f}%); see tokenizer.dead_code_every")
