"""One synthetic subject's slices: its drawn geometry, contrast, bias field, resolution and noise."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxmed.data.artefacts import gaussian_blur, rician_noise
from jaxmed.data.synth.config import FAMILIES, SynthConfig
from jaxmed.data.synth.deformation import integrate_velocity, last_axis, sample_field, sample_velocity
from jaxmed.data.synth.template import QUANTILE, SynthTemplate

__all__ = ["synth_slices", "synth_subject"]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class _Spatial(NamedTuple):
    linear: Array  # [3, 3], scanner -> template: S^-1 R^T
    forward: Array  # [3, 3], template -> scanner: R S
    shift: Array  # [3], mm
    displacement: Array | None  # [*G, 3], mm, the pull-back's nonlinear part (exp(v))
    inverse: Array | None  # [*G, 3], mm, exp(-v)
    scale: Array  # [3]
    degrees: Array  # [3]


def _grid_shape(template: SynthTemplate, config: SynthConfig) -> tuple[int, ...]:
    extent = [(n - 1) * s for n, s in zip(template.shape, template.spacing, strict=True)]
    return tuple(int(math.ceil(e / config.svf_grid_mm)) + 1 for e in extent)


def _rotation(radians: Array) -> Array:
    """``R_0 R_1 R_2``, ``R_a`` the rotation by ``radians[a]`` about axis ``a``."""
    out = jnp.eye(3, dtype=radians.dtype)
    for axis in range(3):
        i, j = (k for k in range(3) if k != axis)
        c, s = jnp.cos(radians[axis]), jnp.sin(radians[axis])
        r = jnp.eye(3, dtype=radians.dtype).at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)
        out = out @ r
    return out


def _draw_spatial(keys, template: SynthTemplate, config: SynthConfig) -> _Spatial:
    dtype = template.volume.dtype
    k_scale, k_angle, k_shift = jax.random.split(keys["affine"], 3)
    scale = jax.random.uniform(k_scale, (3,), dtype, *config.scale_range)
    degrees = jax.random.uniform(k_angle, (3,), dtype, -config.rotation_degrees, config.rotation_degrees)
    shift = jax.random.uniform(k_shift, (3,), dtype, -config.translation_mm, config.translation_mm)
    rotation = _rotation(jnp.deg2rad(degrees))
    linear = (rotation / last_axis(scale, 2)).T  # S^-1 R^T
    forward = rotation * last_axis(scale, 2)  # R S
    displacement = inverse = None
    if "deformation" in config.enabled:
        g = config.svf_grid_mm
        velocity = sample_velocity(
            keys["deformation"],
            _grid_shape(template, config),
            std=config.svf_std_mm / g,
            smoothness=config.svf_smoothness_mm / g,
            dtype=dtype,
        )
        displacement = integrate_velocity(velocity, steps=config.svf_steps) * g
        inverse = integrate_velocity(-velocity, steps=config.svf_steps) * g
    return _Spatial(linear, forward, shift, displacement, inverse, scale, degrees)


def _pull_back(x: Array, spatial: _Spatial, template: SynthTemplate, config: SynthConfig) -> Array:
    """Scanner point ``x [..., 3]`` (mm) -> template point: ``phi(c + S^-1 R^T (x - c - t))``."""
    centre = last_axis(jnp.asarray(template.rotation_centre, x.dtype), x.ndim)
    y = centre + jnp.einsum("...j,ij->...i", x - centre - last_axis(spatial.shift, x.ndim), spatial.linear)
    if spatial.displacement is not None:
        y = y + sample_field(spatial.displacement, y / config.svf_grid_mm, mode="nearest")
    return y


def _push_forward(y: Array, spatial: _Spatial, template: SynthTemplate, config: SynthConfig) -> Array:
    """Template point ``y [..., 3]`` (mm) -> scanner point (the inverse of `_pull_back`)."""
    if spatial.inverse is not None:
        y = y + sample_field(spatial.inverse, y / config.svf_grid_mm, mode="nearest")
    centre = last_axis(jnp.asarray(template.rotation_centre, y.dtype), y.ndim)
    return centre + last_axis(spatial.shift, y.ndim) + jnp.einsum("...j,ij->...i", y - centre, spatial.forward)


def _window(spatial: _Spatial | None, template: SynthTemplate, config: SynthConfig):
    """The subject's square field of view: (side / template side, centre ``[2]`` in mm)."""
    _, h, w = template.shape
    _, s_r, s_c = template.spacing
    dtype = template.volume.dtype
    centre = jnp.asarray([(h - 1) / 2 * s_r, (w - 1) / 2 * s_c], dtype)
    if spatial is None or not config.recentre:
        return jnp.ones((), dtype), centre
    # As load_brain_mri: the brain's in-plane bounding box over the whole
    # volume, its larger side plus the margin, centred.
    points = _push_forward(template.boundary_points, spatial, template, config)[:, 1:]
    lo, hi = points.min(axis=0), points.max(axis=0)
    side_offset, *centre_offset = template.window_offset
    side = jnp.max(hi - lo) + side_offset
    return side / (h * s_r), (lo + hi) / 2 + jnp.asarray(centre_offset, dtype)


class _Contrast(NamedTuple):
    weights: Array  # [3], GM, WM, CSF
    mix: Array
    gamma: Array


def _draw_contrast(key: Array, template: SynthTemplate, config: SynthConfig) -> _Contrast:
    dtype = template.volume.dtype
    keys = jax.random.split(key, 5)
    weights = []
    for i, name in enumerate(("gm_intensity", "wm_intensity", "csf_intensity")):
        bounds = getattr(config, name)
        weights.append(template.tissue_means[i] if bounds is None else jax.random.uniform(keys[i], (), dtype, *bounds))
    mix = jax.random.uniform(keys[3], (), dtype, *config.template_mix)
    # Log-uniform: gamma and 1 / gamma equally likely.
    lo, hi = config.gamma_range
    gamma = jnp.exp(jax.random.uniform(keys[4], (), dtype, math.log(lo), math.log(hi)))
    return _Contrast(jnp.stack(weights), mix, gamma)


def _intensity(values: Array, contrast: _Contrast, template: SynthTemplate, config: SynthConfig) -> Array:
    """Template channels ``[..., 4]`` (t1, gm, wm, brain) -> the subject's intensity ``[...]``."""
    t1 = values[..., 0]
    if "contrast" not in config.enabled:
        return t1
    x = t1
    if config._tissue_on:
        gm, wm, brain = values[..., 1], values[..., 2], values[..., 3]
        csf = jnp.clip(brain - gm - wm, 0.0, None)
        w, w0 = contrast.weights, template.tissue_means
        model = gm * w[0] + wm * w[1] + csf * w[2]
        reference = gm * w0[0] + wm * w0[1] + csf * w0[2]
        # Inside the brain reference >= min(w0) ~ 0.3; outside, t1 is 0.
        ratio = jnp.where(reference > 1e-3, model / jnp.maximum(reference, 1e-3), 1.0)
        x = contrast.mix * t1 * ratio + (1.0 - contrast.mix) * model
    if config.gamma_range != (1.0, 1.0):
        x = jnp.maximum(x, 0.0) ** contrast.gamma
    return x


def _bspline_basis(x: Array, extent: float, n: int) -> Array:
    """Uniform cubic B-splines on ``[0, extent]`` (``n`` of them, knots beyond both ends): ``[..., n]``.

    Non-negative and summing to 1 at every point of ``[0, extent]``
    (points outside are clamped to it).
    """
    h = max(extent, 1e-6) / (n - 3)
    # Control point i sits at (i - 1) h.
    t = jnp.clip(x, 0.0, extent)[..., None] / h + 1.0 - last_axis(jnp.arange(n, dtype=x.dtype), x.ndim + 1)
    a = jnp.abs(t)
    return jnp.where(a < 1.0, 2.0 / 3.0 - a**2 + a**3 / 2.0, jnp.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


# ----------------------------------------------------------------------------
# Synthesis


def synth_slices(
    key: Array,
    template: SynthTemplate,
    slice_positions: ArrayLike,
    *,
    config: SynthConfig = SynthConfig(),
) -> dict[str, Any]:
    """Slices of one synthetic subject, drop-in replacements for template slices.

    Pure and jittable (``config`` static); vmap over keys and positions for
    a batch of subjects: ``jax.vmap(lambda k, p: synth_slices(k, template, p,
    config=config))(keys, positions)``. One key is one subject: its slices
    share one deformation, contrast, bias field and acquisition.

    Steps, for each output pixel (scanner frame, mm): the subject's field of
    view (recentred on its brain, see `SynthConfig`) gives its position; the
    spatial transform gives the template point it shows, where the template
    and tissue maps are interpolated (linear; zero outside), averaged over
    the slab (slice thickness) and turned into the subject's intensity
    (contrast); the image is multiplied by the bias field, blurred in-plane,
    scaled so that the subject brain's 99.5th percentile (estimated over
    `SynthTemplate.reference_points`, pushed into the scanner frame for the
    bias field) lands where the template's does, given Rician noise and
    clipped to ``[0, 1]``.

    Args:
        key: PRNG key, one subject.
        template: from `load_synth_template`.
        slice_positions: ``[N]`` slice indices in the template frame (module
            docstring), fractional allowed.
        config: what varies (static).

    Returns:
        A dict of

        * ``"image"``: float32 ``[N, H, W, 1]`` in ``[0, 1]``;
        * ``"brain_mask"``: bool ``[N, H, W]``;
        * ``"gm"``, ``"wm"``, ``"csf"``: float32 ``[N, H, W]``, the deformed
          tissue probabilities (slab-averaged);
        * ``"bias_field"``: float32 ``[N, H, W]``, the multiplicative field
          (ones when off);
        * ``"params"``: the subject's drawn parameters (scalars or ``[3]``):
          ``scale``, ``rotation_degrees``, ``translation_mm`` (per axis),
          ``field_of_view_mm``, ``tissue_intensity`` (GM, WM, CSF),
          ``template_mix``, ``gamma``, ``bias_amplitude``,
          ``slice_thickness_mm``, ``inplane_fwhm_mm``, ``noise_std``,
          ``intensity_scale`` (the factor of the final scaling).
    """
    positions = jnp.asarray(slice_positions)
    if positions.ndim != 1:
        raise ValueError(f"slice_positions must be 1D [N] (vmap for a batch of subjects), got {positions.shape}")
    dtype = template.volume.dtype
    positions = positions.astype(dtype)
    enabled = config.enabled
    keys = dict(zip(FAMILIES, jax.random.split(key, len(FAMILIES)), strict=True))
    nz, h, w = template.shape
    s_z, s_r, s_c = template.spacing
    n = positions.shape[0]

    # Acquisition parameters (drawn whatever is on, so streams stay fixed).
    k_thick, k_fwhm = jax.random.split(keys["resolution"])
    thickness = jax.random.uniform(k_thick, (), dtype, *config.slice_thickness_mm)
    fwhm = jax.random.uniform(k_fwhm, (), dtype, *config.inplane_fwhm_mm)

    # Geometry: the template index each output pixel shows.
    spatial = _draw_spatial(keys, template, config) if {"deformation", "affine"} & set(enabled) else None
    scale, centre = _window(spatial, template, config)
    rows_mm = centre[0] + (jnp.arange(h, dtype=dtype) - (h - 1) / 2) * (s_r * scale)
    cols_mm = centre[1] + (jnp.arange(w, dtype=dtype) - (w - 1) / 2) * (s_c * scale)
    shape = (n, h, w)
    if spatial is None:
        # Exact template indices: every family off returns template pixels.
        index = jnp.stack(
            [
                jnp.broadcast_to(positions[:, None, None], shape),
                jnp.broadcast_to(jnp.arange(h, dtype=dtype)[None, :, None], shape),
                jnp.broadcast_to(jnp.arange(w, dtype=dtype)[None, None, :], shape),
            ],
            axis=-1,
        )
    else:
        x = jnp.stack(
            [
                jnp.broadcast_to((positions * s_z)[:, None, None], shape),
                jnp.broadcast_to(rows_mm[None, :, None], shape),
                jnp.broadcast_to(cols_mm[None, None, :], shape),
            ],
            axis=-1,
        )
        index = _pull_back(x, spatial, template, config) / last_axis(jnp.asarray(template.spacing, dtype), 4)
    if config.slice_thickness_mm[1] > 0:
        # Slab average = (integral to its top - integral to its bottom) / thickness;
        # cumulative entry k sits at slice coordinate k - 1/2, constant beyond the ends.
        half = 0.5 * jnp.maximum(thickness, s_z) / s_z  # slices
        ends = []
        for sign in (1.0, -1.0):
            z = jnp.clip(index[..., 0] + 0.5 + sign * half, 0.0, float(nz))
            at = jnp.stack([z, index[..., 1], index[..., 2]], axis=-1)
            ends.append(sample_field(template.cumulative, at, mode="constant"))
        values = (ends[0] - ends[1]) / (2.0 * half * s_z)
    else:
        values = sample_field(template.volume, index, mode="constant")  # [N, H, W, 4]

    contrast = _draw_contrast(keys["contrast"], template, config)
    image = _intensity(values, contrast, template, config)

    # Bias field, in the scanner frame over the template's box.
    k_coef, k_amp = jax.random.split(keys["bias"])
    amplitude = jax.random.uniform(k_amp, (), dtype, *config.bias_amplitude)
    nc = config.bias_control_points
    coefficients = jax.random.uniform(k_coef, (nc, nc, nc), dtype, -1.0, 1.0)
    coefficients = coefficients / jnp.max(jnp.abs(coefficients))
    extent = [(m - 1) * s for m, s in zip(template.shape, template.spacing, strict=True)]
    bias_on = "bias" in enabled
    if bias_on:
        # The field's peak over the brain (the reference points, in the
        # scanner frame) is scaled to 1, as the bias_field anomaly scales its
        # own over the object; clipping keeps it in [-1, 1] elsewhere.
        p = template.reference_points
        if spatial is not None:
            p = _push_forward(p, spatial, template, config)
        g_reference = jnp.einsum(
            "ijk,mi,mj,mk->m", coefficients, *(_bspline_basis(p[:, a], extent[a], nc) for a in range(3))
        )
        peak = jnp.maximum(jnp.max(jnp.abs(g_reference)), 1e-6)
        g = jnp.einsum(
            "ijk,ni,hj,wk->nhw",
            coefficients,
            _bspline_basis(positions * s_z, extent[0], nc),
            _bspline_basis(rows_mm, extent[1], nc),
            _bspline_basis(cols_mm, extent[2], nc),
        )
        bias = 1.0 + amplitude * jnp.clip(g / peak, -1.0, 1.0)
        image = image * bias
    else:
        bias = jnp.ones((n, h, w), dtype)

    if config.inplane_fwhm_mm[1] > 0:
        sigma = fwhm / _FWHM_PER_SIGMA / (0.5 * (s_r + s_c) * scale)  # pixels
        image = jax.vmap(lambda im: gaussian_blur(im, sigma=sigma))(image)

    # Scale as brain_mri does: the brain's 99.5th percentile to the template's.
    intensity_scale = jnp.ones((), dtype)
    if "contrast" in enabled or bias_on:
        reference = _intensity(template.reference_values, contrast, template, config)
        if bias_on:
            reference = reference * (1.0 + amplitude * g_reference / peak)
        intensity_scale = template.reference_quantile / jnp.maximum(jnp.quantile(reference, QUANTILE), 1e-6)
        image = image * intensity_scale

    k_sigma, k_noise = jax.random.split(keys["noise"])
    sigma_noise = jax.random.uniform(k_sigma, (), dtype, *config.noise_std)
    if "noise" in enabled:
        # One draw for the stack: rician_noise is per pixel, the slices can be rows of one image.
        image = rician_noise(k_noise, image.reshape(n * h, w), sigma=sigma_noise).reshape(n, h, w)

    identity3 = jnp.ones((3,), dtype)
    params = {
        "scale": identity3 if spatial is None else spatial.scale,
        "rotation_degrees": 0 * identity3 if spatial is None else spatial.degrees,
        "translation_mm": 0 * identity3 if spatial is None else spatial.shift,
        "field_of_view_mm": h * s_r * scale,
        "tissue_intensity": contrast.weights if config._tissue_on else template.tissue_means,
        "template_mix": contrast.mix if config._tissue_on else jnp.ones((), dtype),
        "gamma": contrast.gamma if config.gamma_range != (1.0, 1.0) else jnp.ones((), dtype),
        "bias_amplitude": amplitude if bias_on else jnp.zeros((), dtype),
        "slice_thickness_mm": thickness,
        "inplane_fwhm_mm": fwhm,
        "noise_std": sigma_noise,
        "intensity_scale": intensity_scale,
    }
    gm, wm, brain = values[..., 1], values[..., 2], values[..., 3]
    return {
        "image": jnp.clip(image, 0.0, 1.0)[..., None].astype(jnp.float32),
        "brain_mask": brain >= 0.5,
        "gm": gm,
        "wm": wm,
        "csf": jnp.clip(brain - gm - wm, 0.0, None),
        "bias_field": bias,
        "params": params,
    }


def synth_subject(key: Array, template: SynthTemplate, *, config: SynthConfig = SynthConfig()) -> dict[str, Any]:
    """Every slice of one synthetic subject: `synth_slices` at ``0, ..., Z - 1``.

    Returns:
        As `synth_slices` with ``N = Z``: a ``[Z, H, W, 1]`` display-oriented
        volume (slices at the template's spacing) and its maps.
    """
    return synth_slices(key, template, jnp.arange(template.shape[0]), config=config)
