"""The class labels a generation run asks for."""
import numpy as np


def sample_labels(num_images: int, num_classes: int, classes: str = "") -> np.ndarray:
    """(num_images,) int32 labels cycling over `classes` ("3,5,7") or all classes, sorted so each
    class is contiguous. An unconditional model (num_classes 0) gets zeros, which every model reads
    as its null class. Raises ValueError for a class outside [0, num_classes)."""
    if num_classes == 0:
        if str(classes).strip():
            raise ValueError(f"sample.classes={classes!r}: data.num_classes=0 is an unconditional model, which "
                             f"takes no classes; leave sample.classes empty")
        return np.zeros((num_images,), np.int32)
    wanted = f"sample.classes={classes!r} must list class ids in [0, {num_classes}), e.g. '3,5,7'"
    try:
        chosen = np.arange(num_classes) if not classes else np.asarray(
            [int(c) for c in str(classes).split(",") if c.strip()], np.int64)
    except ValueError as e:
        raise ValueError(wanted) from e
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= num_classes:
        raise ValueError(wanted)
    order = np.argsort(np.arange(num_images) % chosen.size, kind="stable")
    return chosen[np.arange(num_images) % chosen.size][order].astype(np.int32)


def reported_labels(labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """The labels that sample files and scores report for generated `labels` (N,): None for an
    unconditional model (num_classes 0), whose zeros only select its null class."""
    return labels if num_classes else None
