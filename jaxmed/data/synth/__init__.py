"""Synthetic brain subjects from the MNI152 2009 template and its tissue maps.

The MNI152 T1 template (:mod:`jaxmed.data.brain_mri`) is one brain; a model of
its slices is a model of that brain. This module makes new subjects from what
ships in nilearn's wheel (the T1 template and its grey- and white-matter
probability maps), by domain randomisation in the spirit of SynthSeg: a
random diffeomorphic deformation and an affine placement (spatial), new
grey/white-matter/CSF intensities and a gamma (contrast), a smooth
multiplicative bias field, slice thickness and in-plane resolution, and Rician
noise. Every family can be switched off on its own (:class:`SynthConfig`,
:data:`FAMILIES`), and each family draws from its own stream of the key, so
ablating one family leaves the others' draws unchanged.

Design:

* **One 3D subject per key, evaluated only where the output needs it.** The
  deformation is 3D, so the slices drawn with one key are slices of one
  consistent brain (anatomy varies smoothly through the slices). The
  stationary velocity field lives on a coarse grid (``svf_grid_mm``, 20 x 20
  x 20 nodes by default) where scaling and squaring is cheap; the pull-back
  map is then evaluated only at the ``N x H x W`` output pixels and the
  template is sampled there. No full-resolution volume is ever warped. A
  thick slice is the difference of two samples of the template's cumulative
  integral along the slice axis, so it costs the same whatever its
  thickness.
* **The template is pre-sampled on the output grid.** `load_synth_template`
  cuts *every* slice of the template exactly as
  :func:`~jaxmed.data.brain_mri.load_brain_mri` cuts the kept ones (display
  orientation, 99.5th-percentile scaling, brain-centred square window,
  anti-aliased resize to ``size``), and the tissue maps the same way, into one
  ``[Z, H, W, 4]`` array. With every family off, `synth_slices` at the
  template's slice indices returns exactly ``load_brain_mri``'s slices.
* **Outputs end like the training slices.** The subject's field of view is
  recomputed as ``load_brain_mri`` would compute it for that subject (the
  brain's in-plane bounding box over the whole volume plus the margin,
  square, centred), and its intensities are scaled so that its brain's 99.5th
  percentile lands where the template's does, then clipped to ``[0, 1]``.
* **Fresh subjects every step.** Measured on 2 vCPUs (AVX-512 Xeon, jax
  0.10.2) shared with other jobs (load 1.6-5.3, so figures spread 2-4x),
  default config, one jitted call for 32 slices of 64 x 64: 8 subjects x 4
  slices in 33-160 ms (200-960 slices/s), 32 subjects x 1 slice in
  100-320 ms (each subject costs a few ms of its own: two velocity
  integrations, its field of view, its percentile), 1 subject x 32 slices
  in 60-170 ms; every family off, 1 ms. A whole 189-slice subject
  (`synth_subject`) takes ~0.34 s, so a pool of K subjects costs about
  K / 3 s where per-step generation is too slow. Compiling one config takes
  5-15 s.

Conventions. Arrays of the template and of the outputs are in the display
orientation of :mod:`jaxmed.data.brain_mri` (for axial slices: slice index
from inferior, rows anterior -> posterior, columns patient right -> left).
Spatial quantities are in millimetres in the *template frame*: a point
``(z, r, c)`` in mm is the template volume's voxel ``(z / s_z, r / s_r,
c / s_c)`` (index of voxel centres, ``SynthTemplate.spacing = (s_z, s_r,
s_c)``); the scanner frame of a synthetic subject coincides with it before the
subject's field of view is recentred. A slice position is a (possibly
fractional) slice index in that frame, so the template's own slice indices
(``load_brain_mri(...).train["slice_index"]``) can be passed directly.
Intensities before the final scaling are in the template's scaled units
(1 = the template brain's 99.5th percentile): the template's own tissue means
(least squares over the partial-volume model) are about 0.72 (GM), 0.96 (WM)
and 0.32 (CSF).

CSF is not shipped as a map: inside the skull-stripped brain it is what grey
and white matter leave, ``csf = brain - gm - wm`` (clipped at 0).

References:
    Billot B. et al. SynthSeg: segmentation of brain MRI scans of any
    contrast and resolution without retraining. Medical Image Analysis 86,
    102789 (2023) (domain randomisation: deformations, GMM contrast, gamma,
    bias field, resolution).

    Arsigny V., Commowick O., Pennec X., Ayache N. A Log-Euclidean framework
    for statistics on diffeomorphisms. MICCAI 2006, LNCS 4190:924-931
    (stationary velocity fields, scaling and squaring).

    Ashburner J. A fast diffeomorphic image registration algorithm.
    NeuroImage 38(1):95-113 (2007) (DARTEL: scaling and squaring on a grid).

    Gudbjartsson H., Patz S. The Rician distribution of noisy MRI data.
    Magnetic Resonance in Medicine 34(6):910-914 (1995).
"""

from jaxmed.data.synth.config import FAMILIES, SynthConfig, off_fields
from jaxmed.data.synth.deformation import integrate_velocity, jacobian_determinant, sample_velocity
from jaxmed.data.synth.pool import SynthSource, synth_pool
from jaxmed.data.synth.render import synth_slices, synth_subject
from jaxmed.data.synth.template import GM_FILE, WM_FILE, SynthTemplate, load_synth_template, tissue_paths

__all__ = [
    "FAMILIES",
    "GM_FILE",
    "WM_FILE",
    "SynthConfig",
    "SynthSource",
    "SynthTemplate",
    "integrate_velocity",
    "jacobian_determinant",
    "load_synth_template",
    "off_fields",
    "sample_velocity",
    "synth_pool",
    "synth_slices",
    "synth_subject",
    "tissue_paths",
]
