"""Mirror choices that make a set's keys agree left to right (:func:`consensus_flips`).

The ``"consensus"`` flip initialisation of Neural Congealing (Chapter 4, "Quick mode on whole
classes") and SpaceJAM (Chapter 5, "Reflections").
"""
from __future__ import annotations

import torch

__all__ = ["consensus_flips"]


def consensus_flips(keys: torch.Tensor, sweeps: int = 20) -> torch.Tensor:
    """Mirror choices ``(N,)`` bool that make the set's keys ``(N, K, S, S)`` agree left-to-right.

    Each image is summarised by its column profile (the keys averaged over rows, ``(K, S)``), which
    says what lies on the left and on the right of the object whatever its height in the frame.
    Starting from no flips, every image in turn takes the orientation (as it is or mirrored) whose
    profile is closest, in summed squared distance, to the others' current profiles, until no choice
    changes (at most ``sweeps`` passes). The result is defined up to mirroring the whole set; the
    first image is kept as it is. The ``"consensus"`` flip initialisation of Neural Congealing
    (Chapter 4, "Quick mode on whole classes") and SpaceJAM (Chapter 5, "Reflections").

    Args:
        keys: ``(N, K, S, S)`` per-image key maps (e.g. box-masked descriptors).
        sweeps: the most passes over the set.

    Returns:
        ``(N,)`` bool, true for the images to mirror; ``False`` for image 0.

    Example:
        >>> keys = torch.zeros(4, 2, 4, 4); keys[:, 0, :, 0] = 1.0   # every "head" on the left...
        >>> keys[2] = keys[2].flip(-1)                                # ...but image 2 faces the other way
        >>> consensus_flips(keys).tolist()
        [False, False, True, False]
    """
    N = keys.shape[0]
    profiles = keys.float().mean(dim=2).flatten(1)  # (N, K*S)
    mirrored = keys.float().flip(-1).mean(dim=2).flatten(1)
    both = torch.stack([profiles, mirrored])  # (2, N, F)
    # cost[a, n, b, m]: squared distance between image n in orientation a and image m in orientation b
    cost = torch.cdist(both.reshape(2 * N, -1), both.reshape(2 * N, -1)).pow(2).reshape(2, N, 2, N)
    choice = torch.zeros(N, dtype=torch.long)
    for _ in range(sweeps):
        changed = False
        for n in range(N):
            others = torch.arange(N) != n
            totals = cost[:, n, choice[others], others.nonzero()[:, 0]].sum(dim=1)  # (2,)
            best = int(totals.argmin())
            if best != int(choice[n]):
                choice[n], changed = best, True
        if not changed:
            break
    if choice[0] == 1:  # the set's orientation is arbitrary: keep the first image as it is
        choice = 1 - choice
    return choice.bool()
