"""An exam of the mpMRI phantom as a user's files and as a truth record (`write_exam`, `exam_truth`).

`write_exam` saves an exam as the files a user would have: one DICOM series
per modality and the lesion labels as NIfTI on the T2 grid, with a JSON truth
record (`exam_truth`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from jaxmed.data.phantoms.patient import (
    ADC_POINTS,
    DWI_POINTS,
    GRADE_SCORES,
    REFERENCE_B,
    SIGNIFICANT_GRADE,
    VOLUME_POINTS_MM3,
)
from jaxmed.data.phantoms.sites import SITES, SiteProfile
from jaxmed.data.phantoms.tissues import EXAM_TISSUES

__all__ = ["exam_truth", "write_exam"]


_ZONE_NAMES = {t.label: name for name, t in EXAM_TISSUES.items()}
_MODALITIES = ("t2", "adc", "dwi")


def _round(values, digits=3):
    return [round(float(v), digits) for v in np.ravel(values)]


def exam_truth(exam: Mapping[str, np.ndarray], site: SiteProfile | str | None = None) -> dict:
    """The truth of one exam as a JSON-ready record (host side; no patient data: it is a phantom).

    Args:
        exam: one exam's arrays, as `sample_exam` returns them (no batch axis).
        site: the site it was acquired at (recorded when given).

    Returns:
        ``{"phantom", "site", "grade_rule", "max_grade", "significant",
        "num_lesions", "lesions": [{"label", "grade", "significant",
        "zone", "volume_mm3", "voxels", "centre_mm", "semi_axes_mm", "adc",
        "dwi_contrast", "kurtosis", "t2_s0"}, ...], "mimics": [{"kind",
        "centre_mm", "volume_mm3"}], "misregistration": {"matrix",
        "rotation_deg", "translation_mm"}, "acquisition": {...},
        "geometry": {modality: {"shape", "spacing_mm", "affine"}}}``.
        ``label`` is the lesion's value in ``lesion_labels`` and in the NIfTI
        mask; positions are LPS mm.
    """
    exam = {k: np.asarray(v) for k, v in exam.items()}
    if isinstance(site, str):
        site = SITES[site]
    lesions = []
    for i in np.flatnonzero(exam["lesion_valid"]):
        lesions.append(
            {
                "label": int(i) + 1,
                "grade": int(exam["lesion_grade"][i]),
                "significant": bool(exam["lesion_significant"][i]),
                "zone": _ZONE_NAMES[int(exam["lesion_zone"][i])],
                "volume_mm3": round(float(exam["lesion_volume_mm3"][i]), 1),
                "voxels": int(exam["lesion_voxels"][i]),
                "centre_mm": _round(exam["lesion_centre_mm"][i]),
                "semi_axes_mm": _round(exam["lesion_semi_axes_mm"][i]),
                "adc": round(float(exam["lesion_adc"][i]), 4),
                "dwi_contrast": round(float(exam["lesion_dwi_contrast"][i]), 4),
                "kurtosis": round(float(exam["lesion_kurtosis"][i]), 4),
                "t2_s0": round(float(exam["lesion_s0"][i]), 4),
            }
        )
    mimics = [
        {"kind": "bph_nodule", "centre_mm": _round(exam["nodule_centre_mm"][i]),
         "volume_mm3": round(float(exam["nodule_volume_mm3"][i]), 1)}
        for i in np.flatnonzero(exam["nodule_valid"])
    ]  # fmt: skip
    geometry = {}
    for m in _MODALITIES:
        affine = exam[f"{m}_affine"].astype(np.float64)
        geometry[m] = {
            "shape": [int(n) for n in exam[m].shape],
            "spacing_mm": _round(np.linalg.norm(affine[:3, :3], axis=0), 4),
            "affine": [_round(row, 5) for row in affine],
        }
    return {
        "phantom": "jaxmed.data.phantoms.exams (synthetic; no patient data)",
        "site": None if site is None else site.as_dict(),
        "grade_rule": {
            "adc_points_below": ADC_POINTS,
            "volume_points_mm3_at_least": VOLUME_POINTS_MM3,
            "dwi_contrast_points_at_least": DWI_POINTS,
            "grade_is_1_plus_scores_reached": GRADE_SCORES,
            "significant_from_grade": SIGNIFICANT_GRADE,
            "dwi_contrast_reference_b": REFERENCE_B,
        },
        "max_grade": int(exam["max_grade"]),
        "significant": bool(exam["significant"]),
        "num_lesions": int(exam["num_lesions"]),
        "lesions": lesions,
        "mimics": mimics,
        "misregistration": {
            "matrix": [_round(row, 5) for row in exam["misregistration"]],
            "rotation_deg": _round(exam["misregistration_rotation_deg"]),
            "translation_mm": _round(exam["misregistration_translation_mm"]),
            "meaning": "LPS mm: a point at p in the T2 series appears at M p in the ADC and DWI series",
        },
        "acquisition": {k: round(float(exam[k]), 4) for k in ("t2_gain", "dwi_gain", "t2_noise_std", "dwi_noise_std")},
        "geometry": geometry,
    }


def write_exam(
    folder,
    exam: Mapping[str, np.ndarray],
    site: SiteProfile | str | None = None,
    *,
    uid_seed: str | None = None,
    patient_id: str = "PHANTOM-0000",
    overwrite: bool = False,
) -> dict[str, str]:
    """Saves one exam as a user's files: a DICOM series per modality, the lesion labels as NIfTI, the truth as JSON.

    Layout: ``folder/T2/*.dcm``, ``folder/ADC/*.dcm``, ``folder/DWI/*.dcm``
    (`jaxmed.io.write_dicom_series`: each series with its own grid and
    geometry; one study and one FrameOfReferenceUID, since all were
    acquired in one session: the misregistration is patient motion, which
    DICOM does not record), ``folder/lesion_mask.nii.gz`` (`jaxmed.io.write_nifti`:
    ``lesion_labels`` on the T2 grid, uint8; 0 background, ``k`` the lesion
    with ``"label": k`` in the truth; ``> 0`` is the lesion mask) and
    ``folder/truth.json`` (`exam_truth`, plus the file names and UIDs).
    Patient attributes are synthetic placeholders.

    Args:
        folder: created if missing.
        exam: one exam (no batch axis), jax or numpy arrays.
        site: the site (its TE, TR, b-value, field strength and vendor go
            into the DICOM headers and the truth); None leaves them out.
        uid_seed: makes every UID a deterministic function of it (the same
            call writes the same files); None: new random UIDs.
        patient_id: the placeholder PatientID.
        overwrite: replace existing files (raises `FileExistsError` otherwise,
            before anything is written).

    Returns:
        ``{"T2", "ADC", "DWI": series folder, "lesion_mask", "truth": file}``.
    """
    from pydicom.uid import generate_uid

    from jaxmed.io import write_dicom_series, write_nifti

    def uid(part: str) -> str:
        return str(generate_uid() if uid_seed is None else generate_uid(entropy_srcs=[uid_seed, part]))

    folder = os.fspath(folder)
    exam = {k: np.asarray(v) for k, v in exam.items()}
    if isinstance(site, str):
        site = SITES[site]
    paths = {
        "T2": os.path.join(folder, "T2"),
        "ADC": os.path.join(folder, "ADC"),
        "DWI": os.path.join(folder, "DWI"),
        "lesion_mask": os.path.join(folder, "lesion_mask.nii.gz"),
        "truth": os.path.join(folder, "truth.json"),
    }
    planned = [paths["lesion_mask"], paths["truth"]]
    for name in ("T2", "ADC", "DWI"):
        n = exam[name.lower()].shape[0]
        planned += [os.path.join(paths[name], f"IM_{k + 1:04d}.dcm") for k in range(n)]
    if not overwrite:
        for path in planned:
            if os.path.lexists(path):
                raise FileExistsError(f"{path}: file exists; pass overwrite=True to replace it")

    study_uid = uid("study")
    frame_uid = uid("frame_of_reference")
    patient = {"PatientName": "PHANTOM^SYNTHETIC", "PatientID": patient_id}
    common = {"BodyPartExamined": "PROSTATE"}
    series = {
        "T2": (1, "t2_tse_tra", "t2", {}),
        "ADC": (2, "ep2d_diff_ADC", "adc", {"ImageType": ["DERIVED", "PRIMARY", "ADC"]}),
        "DWI": (3, "ep2d_diff_b{b}", "dwi", {}),
    }
    uids = {}
    for name, (number, description, key, extra) in series.items():
        attributes = {**common, **extra}
        if site is not None:
            b_high = int(site.b_values[1])
            description = description.format(b=b_high)
            t2 = name == "T2"
            attributes.update(
                Manufacturer=site.manufacturer,
                InstitutionName=f"jaxmed phantom site {site.name}",
                MagneticFieldStrength=site.field_strength_t,
                EchoTime=site.t2_te_ms if t2 else site.dwi_te_ms,
                RepetitionTime=site.t2_tr_ms if t2 else site.dwi_tr_ms,
                ScanningSequence="SE" if t2 else "EP",
                SequenceVariant="SK" if t2 else "SP",
            )
            if name == "DWI":
                attributes["DiffusionBValue"] = float(b_high)
        else:
            description = description.format(b="high")
        seed = None if uid_seed is None else f"{uid_seed}/{name}"
        write_dicom_series(
            paths[name],
            exam[key],
            exam[f"{key}_affine"],
            modality="MR",
            series_description=description,
            series_number=number,
            study_uid=study_uid,
            frame_of_reference_uid=frame_uid,
            uid_seed=seed,
            patient=patient,
            study_description="mpMRI prostate (synthetic phantom)",
            attributes=attributes,
            overwrite=overwrite,
        )
        uids[name] = {"series_number": number, "series_description": description}
    write_nifti(paths["lesion_mask"], exam["lesion_labels"].astype(np.uint8), exam["t2_affine"], overwrite=overwrite)
    truth = exam_truth(exam, site)
    truth["files"] = {k: os.path.relpath(v, folder) for k, v in paths.items()}
    truth["dicom"] = {"study_uid": study_uid, "frame_of_reference_uid": frame_uid, "series": uids}
    with open(paths["truth"], "w") as f:
        json.dump(truth, f, indent=1)
    return paths
