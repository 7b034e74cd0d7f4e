"""Loss terms shared by more than one method: Neural Congealing (Chapter 4) and 3-D congealing's
coordinate maps (Chapter 6) both average under masks and keep their sampling grids rigid; every
trained method stops with the same kind of message when its loss diverges (:func:`check_finite`).

>>> g = warps.identity_grid((8, 8))
>>> round(rigidity_loss(g, torch.ones(1, 8, 8)).item(), 3)
2.827
"""
from __future__ import annotations

import torch

from . import warps

__all__ = ["masked_mean", "rigidity_loss", "check_finite"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * values) / sum(mask)`` over everything (the batch-wide normalisation of the paper).

    One mean over the whole batch, not a mean of per-image means, so images with larger masks weigh
    more. An all-zero mask gives 0 (the denominator is clamped at 1e-8). Every Neural Congealing loss
    is averaged this way (Chapter 4, "The losses, one line of reason each"); so are 3-D congealing's
    coordinate-map losses (:mod:`congealing.congeal3d`).

    Args:
        values: per-pixel values, any shape (e.g. ``(B, 1, H, W)``).
        mask: weights broadcastable with ``values``, typically in ``[0, 1]``.

    Returns:
        the weighted mean, a 0-d tensor.

    Example:
        >>> masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]))
        tensor(1.)
    """
    return (mask * values).sum() / mask.sum().clamp_min(1e-8)


def rigidity_loss(grid: torch.Tensor, mask: torch.Tensor, delta: int = 1) -> torch.Tensor:
    """Rigidity of sampling grids ``(B, A, A, 2)``, averaged under ``mask`` ``(B, A, A)``.

    Per pixel ``|J^T J|_F + |(J^T J + 1e-3 I)^-1|_F``, where ``J`` is the finite-difference Jacobian
    over ``delta`` atlas pixels, in pixel units (so the identity has ``J = I``). The value is about
    ``2 sqrt(2) = 2.83`` for any rotation or translation and larger for shears, stretches and folds.
    Taught in Chapter 4, "The losses, one line of reason each".

    Args:
        grid: sampling grids ``(B, H, W, 2)`` (usually square, ``H = W = A``), normalised units.
        mask: weights ``(B, H, W)`` in ``[0, 1]``; its last ``delta`` rows and columns are unused.
        delta: the finite-difference step, in grid pixels.

    Returns:
        the masked mean (:func:`masked_mean`) of the per-pixel rigidity, a 0-d tensor.

    Example:
        >>> g = warps.identity_grid((8, 8))
        >>> round(rigidity_loss(g, torch.ones(1, 8, 8)).item(), 3)
        2.827
    """
    B, H, W, _ = grid.shape
    scale = torch.tensor([W / 2.0, H / 2.0], dtype=grid.dtype, device=grid.device) / delta
    d_dx = (grid[:, :-delta, delta:] - grid[:, :-delta, :-delta]) * scale  # columns of J
    d_dy = (grid[:, delta:, :-delta] - grid[:, :-delta, :-delta]) * scale
    J = torch.stack([d_dx, d_dy], dim=-1)  # (B, H-d, W-d, 2, 2)
    JtJ = J.transpose(-1, -2) @ J
    a, b = JtJ[..., 0, 0] + 1e-3, JtJ[..., 0, 1]
    c, d = JtJ[..., 1, 0], JtJ[..., 1, 1] + 1e-3
    det = a * d - b * c
    inverse_norm = torch.sqrt(a**2 + b**2 + c**2 + d**2) / det.abs().clamp_min(1e-12)
    per_pixel = JtJ.pow(2).sum(dim=(-1, -2)).sqrt() + inverse_norm
    return masked_mean(per_pixel, mask[:, :-delta, :-delta])


def check_finite(value: torch.Tensor, where: str, terms: dict | None = None, advice: str = "") -> None:
    """Raise :class:`FloatingPointError` if ``value`` (a loss, or an update) holds NaN or infinity.

    The message names ``where`` it happened (method, phase, epoch, step), every term of ``terms``
    (each summarised as itself if scalar, else its largest magnitude) and what to try (``advice``),
    so a diverged run says more than "nan". No chapter calls it; the training loops of classical
    congealing (:mod:`congealing.classical`), Neural Congealing, SpaceJAM and the diffusion prior do.

    Args:
        value: the tensor to check, any shape.
        where: the place, e.g. ``"SpaceJAM diverged in joint training, epoch 3, step 1"``.
        terms: ``{name: tensor or number}`` to report (default: ``{"value": value}``).
        advice: what to try, appended after a semicolon (default: nothing).

    Returns:
        None when every element of ``value`` is finite.

    Raises:
        FloatingPointError: ``value`` holds NaN or infinity.

    Example:
        >>> check_finite(torch.tensor(0.5), "epoch 0")
        >>> check_finite(torch.tensor(float("nan")), "SpaceJAM diverged in joint training, epoch 3, step 1", {"ic loss": torch.tensor(float("nan"))}, "lower the learning rate")
        Traceback (most recent call last):
        ...
        FloatingPointError: SpaceJAM diverged in joint training, epoch 3, step 1: ic loss = nan; lower the learning rate
    """
    if bool(torch.isfinite(value).all()):
        return
    terms = terms if terms is not None else {"value": value}
    described = ", ".join(f"{name} = {_summary(term):.4g}" for name, term in terms.items())
    raise FloatingPointError(f"{where}: {described}{'; ' + advice if advice else ''}")


def _summary(term) -> float:
    """A term as one number: itself if it is a scalar, else its largest magnitude."""
    term = torch.as_tensor(term).detach().float()
    return float(term) if term.numel() == 1 else float(term.abs().max())
