"""Rigid registration by gradient descent, and co-registration of an exam onto one grid.

Transforms are :mod:`jaxmed.data.rigid`, similarity metrics :mod:`jaxmed.data.similarity`.

Geometry as in :class:`jaxmed.io.Volume`: an image is an array of shape
``(z, y, x)`` (or ``(y, x)`` for a 2D image) with a ``[d + 1, d + 1]`` affine
from voxel index to world position in millimetres (LPS for volumes).

A rigid transform acts in **world (mm) space**, so anisotropic voxels (e.g.
0.5 x 0.5 x 3 mm) are handled correctly. It maps a point ``p`` of the fixed
image's space to the point of the moving image that should be seen there::

    T(p) = R (p - c) + c + t

with ``c`` the world position of the fixed grid's centre voxel, ``R`` a
rotation and ``t`` a translation in mm. The moving image resampled on the
fixed grid is ``moving(inv(A_moving) @ T @ A_fixed @ j)`` for fixed voxel
``j`` (`apply_rigid`); with ``T`` the identity this is resampling from the
header geometry alone.

`register_rigid` finds ``T`` by Adam (Optax) on a similarity metric (`ncc`
for images of the same contrast, `mutual_information` between contrasts),
coarse to fine over a pyramid, each level a ``jax.lax.scan`` over steps, all
in one ``jax.jit``; a batch of exams (a leading axis on the arrays and
affines) is ``jax.vmap``-ed. `co_register` brings every modality of an exam
onto a reference grid, registered and normalised.

Parameter scaling: Adam moves every coordinate by about the learning rate per
step whatever the size of its gradient, so radians and millimetres must be
made commensurate. The optimiser works on ``u = (r * angles, translation)``,
with ``r`` the RMS distance (mm) of the fixed field of view's points from its
centre: one unit of a rotation coordinate then moves the volume by about 1 mm
on average, as one unit of a translation does. ``learning_rate`` is thus in
millimetres per step (at the finest level; a level that downsamples by ``f``
uses ``f`` times it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike

from jaxmed.data.intensity import clip_percentiles, minmax, zscore
from jaxmed.data.rigid import (
    RigidParams,
    RigidResult,
    apply_rigid,
    grid_center,
    identity_params,
    rigid_matrix,
    rotation_matrix,
)
from jaxmed.data.similarity import (
    DEFAULT_BINS,
    METRICS,
    PARZEN_PAD,
    mi_from_parzen,
    mutual_information,
    ncc,
    parzen_window,
)
from jaxmed.data.spatial import resample_to, scaled_grid

__all__ = [
    "METRICS",
    "RigidParams",
    "RigidResult",
    "apply_rigid",
    "co_register",
    "grid_center",
    "identity_params",
    "mutual_information",
    "ncc",
    "register_rigid",
    "rigid_matrix",
    "rotation_matrix",
]

# Defaults, chosen by measurement on 16x48x48 phantoms (tests/test_registration.py,
# 1x1x2 and 0.5x0.5x3 mm voxels): levels (4, 2, 1) with 60 steps each recover
# 3 degrees about each axis plus 3 mm to < 0.06 voxel and < 0.1 degree with
# either metric, and (10, -8, 12) degrees plus 11 mm to < 0.12 voxel, where a
# single level ends 4-12 voxels off and (2, 1) up to 6 voxels off on 1x1x2 mm
# voxels. 30 steps per level leave 2-3x the error; learning rates 0.1-0.5 and
# 32 or 48 bins do equally well (16 bins: twice the error on the large motion).
DEFAULT_LEVELS = (4, 2, 1)
DEFAULT_NUM_STEPS = 60
DEFAULT_LEARNING_RATE = 0.2  # mm per step at the finest level
# Cosine decay to this fraction of the level's learning rate: Adam at a
# constant rate jitters around the optimum by about one step.
_FINAL_LR_FRACTION = 0.05
# A pyramid level never shrinks an axis below this many voxels.
_MIN_LEVEL_SIZE = 4
_NORMALIZATIONS = ("zscore", "minmax", None)
# Full float32 products: at default precision some accelerators multiply in
# bf16/TF32 (~1e-3 relative), a tenth of a millimetre on positions of ~100 mm.
_matmul = partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass(frozen=True)
class _Level:
    factor: float
    fixed_shape: tuple[int, ...]
    moving_shape: tuple[int, ...]
    fixed_sigma: tuple[float, ...]
    moving_sigma: tuple[float, ...]
    num_steps: int
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about a registration (a `jax.jit` static argument, so hashable)."""

    metric: str
    bins: int
    levels: tuple[_Level, ...]


def _level_grid(shape, spacing, target) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape of a level whose voxels are at least ``target`` mm, and the blur (voxels) before it."""
    new_shape, sigma = [], []
    for n, s in zip(shape, spacing, strict=True):
        m = n if s >= target else max(min(n, _MIN_LEVEL_SIZE), round(n * s / target))
        new_shape.append(int(m))
        shrink = n / m
        # Gaussian anti-aliasing of about half the shrink factor.
        sigma.append(0.5 * shrink if shrink > 1.0 else 0.0)
    return tuple(new_shape), tuple(sigma)


def _spacing(affine: np.ndarray) -> np.ndarray:
    ndim = affine.shape[-1] - 1
    return np.linalg.norm(affine[..., :ndim, :ndim], axis=-2)


def _make_plan(fixed_shape, moving_shape, fixed_spacing, moving_spacing, *, metric, bins, levels, num_steps, lr):
    # Level factor f gives voxels of at least f times the fixed image's finest
    # spacing on both grids: coarser axes (thick slices, a coarse ADC grid)
    # are only shrunk once the others have caught up with them.
    base = float(np.min(fixed_spacing))
    plan_levels = []
    for factor, steps in zip(levels, num_steps, strict=True):
        f_shape, f_sigma = _level_grid(fixed_shape, fixed_spacing, factor * base)
        m_shape, m_sigma = _level_grid(moving_shape, moving_spacing, factor * base)
        plan_levels.append(_Level(float(factor), f_shape, m_shape, f_sigma, m_sigma, int(steps), float(lr * factor)))
    return _Plan(metric, int(bins), tuple(plan_levels))


def _blur(image: Array, sigma: Sequence[float]) -> Array:
    """Separable Gaussian blur (sigma in voxels per axis), edge values repeated."""
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        radius = max(1, math.ceil(3.0 * s))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        taps = taps / taps.sum()
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(float(t) * jax.lax.slice_in_dim(padded, k, k + n, axis=axis) for k, t in enumerate(taps))
    return image


def _level_image(image, affine, shape, sigma):
    """The image blurred and resampled on a coarser grid with the same field of view, and its affine."""
    if tuple(shape) == image.shape:
        return image, affine
    new_to_old, _ = scaled_grid(np.eye(image.ndim + 1), image.shape, new_shape=shape)
    level_affine = _matmul(affine, jnp.asarray(new_to_old, affine.dtype))
    resampled = resample_to(_blur(image, sigma), affine, level_affine, shape, mode="nearest")
    return resampled, level_affine


def _from_u(u: Array, radius: Array, ndim: int) -> RigidParams:
    num_angles = 1 if ndim == 2 else 3
    return RigidParams(angles=u[:num_angles] / radius, translation=u[num_angles:])


def _similarity(plan: _Plan, fixed: Array, moving: Array, mask: Array | None):
    """``(prepare, score)``: the fixed image's side of the metric, done once per level, and the metric."""
    if plan.metric == "ncc":
        return (lambda f: f), (lambda f, m, w: ncc(f, m, weights=w))
    # Fixed bins for the whole run, from robust ranges of the full images.
    q = jnp.asarray([0.5, 99.5], fixed.dtype)
    f_range = tuple(jnp.nanpercentile(fixed if mask is None else jnp.where(mask, fixed, jnp.nan), q))
    m_range = tuple(jnp.percentile(moving, q))
    bins = plan.bins
    return (
        lambda f: parzen_window(f, f_range, bins),
        lambda f_parzen, m, w: mi_from_parzen(f_parzen, parzen_window(m, m_range, bins), w),
    )


def _level_loss(level: _Level, fixed, moving, fixed_affine, moving_affine, mask, *, center, radius, prepare, score):
    """``loss(u)``, minus the metric on one pyramid level."""
    ndim = fixed.ndim
    dtype = fixed.dtype
    f_img, f_aff = _level_image(fixed, fixed_affine, level.fixed_shape, level.fixed_sigma)
    m_img, m_aff = _level_image(moving, moving_affine, level.moving_shape, level.moving_sigma)
    if mask is None:
        f_weight = jnp.ones(level.fixed_shape, dtype)
    else:  # soft weights on coarse levels
        f_weight = _level_image(mask.astype(dtype), fixed_affine, level.fixed_shape, level.fixed_sigma)[0]
    f_weight = f_weight.ravel()
    f_side = prepare(f_img.ravel())
    index = jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=dtype) for n in level.fixed_shape), indexing="ij"))
    # World points of the fixed level grid relative to the centre: small
    # numbers, so float32 keeps them to ~1e-6 mm.
    rel = _matmul(f_aff[:ndim, :ndim], index.reshape(ndim, -1)) + (f_aff[:ndim, ndim] - center)[:, None]
    m_inv = jnp.linalg.inv(m_aff)
    upper = jnp.asarray(level.moving_shape, dtype)[:, None] - 1.0

    def loss(u):
        params = _from_u(u, radius, ndim)
        world = _matmul(rotation_matrix(params.angles), rel) + (center + params.translation)[:, None]
        coords = _matmul(m_inv[:ndim, :ndim], world) + m_inv[:ndim, ndim][:, None]
        # Voxels that map outside the moving image do not count (the
        # indicator has no gradient; it changes only as the overlap does).
        inside = jnp.all((coords >= 0.0) & (coords <= upper), axis=0)
        m_values = map_coordinates(m_img, list(coords), order=1, mode="nearest")
        return -score(f_side, m_values, f_weight * inside)

    return loss


def _descend(loss: Callable[[Array], Array], u: Array, level: _Level) -> tuple[Array, Array]:
    """``level.num_steps`` Adam steps in a scan: the final ``u`` and the metric before each step."""
    schedule = optax.cosine_decay_schedule(level.learning_rate, level.num_steps, alpha=_FINAL_LR_FRACTION)
    optimizer = optax.adam(schedule)

    def step(carry, _):
        u, opt_state = carry
        value, grad = jax.value_and_grad(loss)(u)
        updates, opt_state = optimizer.update(grad, opt_state, u)
        return (optax.apply_updates(u, updates), opt_state), -value

    (u, _), metric = jax.lax.scan(step, (u, optimizer.init(u)), length=level.num_steps)
    return u, metric


def _register_one(fixed, moving, fixed_affine, moving_affine, mask, *, plan: _Plan) -> RigidResult:
    ndim = fixed.ndim
    fixed_affine = fixed_affine.astype(fixed.dtype)
    moving_affine = moving_affine.astype(fixed.dtype)
    center = grid_center(fixed_affine, fixed.shape)
    extent = jnp.linalg.norm(fixed_affine[:ndim, :ndim], axis=0) * jnp.asarray(fixed.shape, fixed.dtype)
    radius = jnp.sqrt(jnp.sum(extent**2) / 12.0)  # RMS distance from the centre of a box
    prepare, score = _similarity(plan, fixed, moving, mask)
    u = jnp.zeros(ndim + (1 if ndim == 2 else 3), fixed.dtype)
    history = []
    for level in plan.levels:  # a few static levels, coarse to fine
        loss = _level_loss(
            level, fixed, moving, fixed_affine, moving_affine, mask,
            center=center, radius=radius, prepare=prepare, score=score,
        )
        u, metric = _descend(loss, u, level)
        history.append(metric)
    params = _from_u(u, radius, ndim)
    return RigidResult(params, rigid_matrix(params, center), center, jnp.concatenate(history))


@partial(jax.jit, static_argnames=("plan", "batched"))
def _register(fixed, moving, fixed_affine, moving_affine, mask, *, plan: _Plan, batched: bool) -> RigidResult:
    one = partial(_register_one, plan=plan)
    if batched:
        one = jax.vmap(one)
    return one(fixed, moving, fixed_affine, moving_affine, mask)


# --------------------------------------------------------------------------
# Input checks (concrete values: the pyramid's shapes are planned from them)


def _concrete_affine(affine, name: str) -> np.ndarray:
    try:
        affine = np.asarray(affine, dtype=np.float64)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            f"{name} must be concrete (the pyramid is planned from the voxel spacing): call this outside "
            "jax.jit/jax.vmap and batch exams with a leading axis instead"
        ) from None
    if affine.ndim not in (2, 3) or affine.shape[-1] != affine.shape[-2] or affine.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be [3, 3] (2D) or [4, 4] (3D), with an optional batch axis; got {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise ValueError(f"{name} has non-finite entries")
    ndim = affine.shape[-1] - 1
    linear = affine[..., :ndim, :ndim]
    # Relative to the voxel size: a 0.1 mm grid is fine, a collapsed axis is not.
    scale = np.prod(np.linalg.norm(linear, axis=-2), axis=-1)
    if np.any(np.abs(np.linalg.det(linear)) <= 1e-9 * scale) or np.any(scale == 0):
        raise ValueError(f"{name} is not invertible (collapsed or parallel voxel axes): {affine.tolist()}")
    return affine


def _check_pair(fixed, moving, fixed_affine, moving_affine, mask):
    f_aff = _concrete_affine(fixed_affine, "fixed_affine")
    m_aff = _concrete_affine(moving_affine, "moving_affine")
    ndim = f_aff.shape[-1] - 1
    if m_aff.shape[-1] - 1 != ndim:
        raise ValueError(f"fixed is {ndim}D but moving_affine is {m_aff.shape[-1] - 1}D")
    batched = f_aff.ndim == 3
    if (m_aff.ndim == 3) != batched:
        raise ValueError(
            f"fixed_affine {f_aff.shape} and moving_affine {m_aff.shape}: give both one affine, or both a batch"
        )
    extra = 1 if batched else 0
    for name, array in (("fixed", fixed), ("moving", moving)):
        if array.ndim != ndim + extra:
            raise ValueError(
                f"{name} must have {ndim + extra} axes ({'[batch] + ' if batched else ''}{ndim}D image, as its "
                f"affine says), got shape {array.shape}"
            )
    if mask is not None and mask.shape != fixed.shape:
        raise ValueError(f"mask shape {mask.shape} differs from fixed shape {fixed.shape}")
    if batched:
        sizes = {
            "fixed": fixed.shape[0],
            "moving": moving.shape[0],
            "fixed_affine": f_aff.shape[0],
            "moving_affine": m_aff.shape[0],
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batch sizes differ: {sizes}; every exam needs a fixed and a moving image and affines")
    return f_aff, m_aff, batched


def _as_image(array, what: str) -> Array:
    try:
        array = jnp.asarray(array)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be an array (a batch must share one shape): {err}") from None
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.float32)
    return array


def _steps_per_level(num_steps, levels) -> tuple[int, ...]:
    steps = (num_steps,) * len(levels) if isinstance(num_steps, int) else tuple(num_steps)
    if len(steps) != len(levels) or any(int(s) < 1 for s in steps):
        raise ValueError(f"num_steps must be a positive int or one per level ({len(levels)}), got {num_steps}")
    return tuple(int(s) for s in steps)


def register_rigid(
    fixed: ArrayLike,
    moving: ArrayLike,
    *,
    fixed_affine: ArrayLike,
    moving_affine: ArrayLike,
    metric: str = "mi",
    num_steps: int | Sequence[int] = DEFAULT_NUM_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    levels: Sequence[float] = DEFAULT_LEVELS,
    bins: int = DEFAULT_BINS,
    mask: ArrayLike | None = None,
) -> RigidResult:
    """Rigid registration of ``moving`` to ``fixed`` by gradient descent on a similarity metric.

    Finds the world transform ``T`` (fixed -> moving space, about the fixed
    grid's centre) that maximises ``metric(fixed, moving ∘ T)`` over the
    fixed grid, starting from the header geometry (``T`` = identity). Each
    pyramid level runs ``num_steps`` Adam steps with a cosine-decayed rate in
    a ``jax.lax.scan``; the whole registration is one jitted function,
    compiled once per shape and setting.

    A batch of exams is given by a leading axis on ``fixed``, ``moving``, both
    affines and ``mask`` (fixed images of one shape, moving images of one
    shape; affines may differ) and is registered under ``jax.vmap``. The
    pyramid's grid sizes are planned from the median voxel spacing of the batch.

    .. note:: The metric is maximised over the voxels of the fixed grid that
       map inside the moving image (times ``mask``). ``learning_rate`` is in
       mm per step: rotations are optimised as arc lengths (angle times the
       RMS radius of the fixed field of view), so one step of either kind
       moves the volume by about the same distance (see the module docstring).

    Args:
        fixed: ``[*S]`` (or ``[B, *S]``) the reference image, ``S`` 2D or 3D.
        moving: ``[*S_m]`` (or ``[B, *S_m]``) the image to align, on its own grid.
        fixed_affine: ``[d + 1, d + 1]`` (or ``[B, ...]``) fixed voxel -> world (mm).
        moving_affine: ``[d + 1, d + 1]`` (or ``[B, ...]``) moving voxel -> world (mm).
        metric: ``"mi"`` (Mattes mutual information; any pair of contrasts) or
            ``"ncc"`` (normalised cross-correlation; same contrast, faster).
        num_steps: Adam steps per level (one int, or one per level).
        learning_rate: peak step in mm at the finest level (a level of factor
            ``f`` uses ``f`` times it).
        levels: pyramid factors, coarse to fine: a level of factor ``f`` has
            voxels of at least ``f`` times the fixed image's smallest spacing
            (axes already that coarse are kept), blurred before downsampling.
        bins: histogram bins for ``"mi"``.
        mask: optional boolean ``[*S]`` (or ``[B, *S]``) on the fixed grid:
            the voxels the metric is computed over (e.g. the organ and margin).

    Returns:
        A `RigidResult` (leading batch axis on every field for a batch).

    Raises:
        ValueError: unknown metric, shapes that do not match their affines or
            each other, a non-invertible or traced affine, bad settings.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    levels = tuple(float(f) for f in levels)
    if not levels or any(f < 1 for f in levels):
        raise ValueError(f"levels must be factors >= 1, coarse to fine, got {levels}")
    steps = _steps_per_level(num_steps, levels)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0 (mm per step), got {learning_rate}")
    if metric == "mi" and bins < 4 * PARZEN_PAD:
        raise ValueError(f"bins must be >= {4 * PARZEN_PAD}, got {bins}")
    fixed = _as_image(fixed, "fixed")
    moving = _as_image(moving, "moving")
    mask = None if mask is None else jnp.asarray(mask).astype(bool)
    f_aff, m_aff, batched = _check_pair(fixed, moving, fixed_affine, moving_affine, mask)
    f_spacing, m_spacing = _spacing(f_aff), _spacing(m_aff)
    if batched:
        f_spacing, m_spacing = np.median(f_spacing, axis=0), np.median(m_spacing, axis=0)
    shape_at = slice(1, None) if batched else slice(None)
    plan = _make_plan(
        fixed.shape[shape_at],
        moving.shape[shape_at],
        f_spacing,
        m_spacing,
        metric=metric,
        bins=bins,
        levels=levels,
        num_steps=steps,
        lr=float(learning_rate),
    )
    dtype = fixed.dtype
    f_aff, m_aff = jnp.asarray(f_aff, dtype), jnp.asarray(m_aff, dtype)
    return _register(fixed, moving.astype(dtype), f_aff, m_aff, mask, plan=plan, batched=batched)


# --------------------------------------------------------------------------
# An exam onto one grid


def _normalise(image, covered, mask, *, method, percentiles):
    """Robust per-modality normalisation: statistics over covered (and masked) voxels; 0 outside the coverage."""
    stats = covered if mask is None else covered & mask
    if method is None:
        return jnp.where(covered, image, 0.0)
    clipped = clip_percentiles(image, lower=percentiles[0], upper=percentiles[1], mask=stats)
    out = zscore(clipped, mask=stats) if method == "zscore" else minmax(clipped, mask=stats)
    return jnp.where(covered, out, 0.0)


@partial(jax.jit, static_argnames=("shape", "method", "percentiles"))
def _finish(moving, matrix, moving_affine, fixed_affine, mask, *, shape, method, percentiles):
    resampled = apply_rigid(moving, matrix, moving_affine=moving_affine, fixed_affine=fixed_affine, fixed_shape=shape)
    # Fixed voxels whose source point lies inside the moving grid.
    ones = jnp.ones(moving.shape, moving.dtype)
    coverage = apply_rigid(ones, matrix, moving_affine=moving_affine, fixed_affine=fixed_affine, fixed_shape=shape)
    return _normalise(resampled, coverage > 0.999, mask, method=method, percentiles=percentiles)


def _array_and_affine(name, item):
    if hasattr(item, "array") and hasattr(item, "affine"):
        return item.array, item.affine
    try:
        array, affine = item
    except (TypeError, ValueError):
        raise ValueError(f"volumes[{name!r}] must be a Volume or an (array, affine) pair") from None
    return array, affine


def co_register(
    volumes: Mapping[str, object],
    *,
    reference: str,
    mask: ArrayLike | None = None,
    metric: str = "mi",
    num_steps: int | Sequence[int] = DEFAULT_NUM_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    levels: Sequence[float] = DEFAULT_LEVELS,
    bins: int = DEFAULT_BINS,
    normalize: str | None = "zscore",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> tuple[Array, dict[str, RigidResult]]:
    """Every modality of an exam on the reference grid: resampled, rigidly registered, normalised.

    Each non-reference image is registered to the reference with
    `register_rigid` (starting from the header geometry), then resampled onto
    the reference grid once, through header geometry and motion together.
    Each channel is then normalised on its own: clipped to its
    ``percentiles`` and z-scored (or mapped to [0, 1]), statistics over the
    voxels its image covers (and ``mask``); voxels it does not cover are 0.

    Args:
        volumes: modality name -> `jaxmed.io.Volume` or ``(array, affine)``
            (greyscale; for a batch of exams, arrays ``[B, *S]`` and affines
            ``[B, d + 1, d + 1]``, every modality batched alike).
        reference: the key of the modality whose grid the others go to.
        mask: optional boolean on the reference grid (``[*S]`` or
            ``[B, *S]``): the voxels the registration metric and the
            normalisation statistics use.
        metric, num_steps, learning_rate, levels, bins: as `register_rigid`;
            ``"mi"`` because modalities differ in contrast.
        normalize: ``"zscore"``, ``"minmax"`` (to [0, 1]) or None.
        percentiles: ``(lower, upper)`` clip before normalising.

    Returns:
        ``(stacked, results)``: ``stacked`` is float ``[*S, M]`` (or
        ``[B, *S, M]``), channels in the order of ``volumes``; ``results``
        maps each non-reference modality to its `RigidResult`.
    """
    if reference not in volumes:
        raise ValueError(f"reference {reference!r} is not among the modalities {list(volumes)}")
    if normalize not in _NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}")
    lower, upper = (float(p) for p in percentiles)
    if not 0.0 <= lower <= upper <= 100.0:
        raise ValueError(f"need 0 <= lower <= upper <= 100 percentiles, got {percentiles}")
    pairs = {name: _array_and_affine(name, item) for name, item in volumes.items()}
    ref_array, ref_affine = pairs[reference]
    ref_array = _as_image(ref_array, f"volumes[{reference!r}]")
    ref_aff = _concrete_affine(ref_affine, f"the affine of {reference!r}")
    batched = ref_aff.ndim == 3
    shape = tuple(ref_array.shape[1:] if batched else ref_array.shape)
    mask = None if mask is None else jnp.asarray(mask).astype(bool)
    if mask is not None and mask.shape != ref_array.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the reference's {ref_array.shape}")
    eye = jnp.eye(ref_aff.shape[-1], dtype=ref_array.dtype)
    finish = partial(_finish, shape=shape, method=normalize, percentiles=(lower, upper))
    if batched:
        finish = jax.vmap(finish, in_axes=(0, 0, 0, 0, 0 if mask is not None else None))
    channels, results = [], {}
    for name, (array, affine) in pairs.items():
        array = _as_image(array, f"volumes[{name!r}]").astype(ref_array.dtype)
        if name == reference:
            matrix = jnp.broadcast_to(eye, ref_aff.shape)
        else:
            result = register_rigid(
                ref_array,
                array,
                fixed_affine=ref_aff,
                moving_affine=affine,
                metric=metric,
                num_steps=num_steps,
                learning_rate=learning_rate,
                levels=levels,
                bins=bins,
                mask=mask,
            )
            results[name] = result
            matrix = result.matrix
        aff = jnp.asarray(_concrete_affine(affine, f"the affine of {name!r}"), ref_array.dtype)
        channels.append(finish(array, matrix, aff, jnp.asarray(ref_aff, ref_array.dtype), mask))
    return jnp.stack(channels, axis=-1), results
