"""One free-text instruction about one radiograph (``jaxmed vlm ask``): the answer, and its mask or point as files.

The instruction is read by :func:`~jaxmed.tasks.vlm.queries.parse_user_instruction`
for its family (an unknown structure is an error that lists the known ones,
not a guess), encoded with that family's task token, and answered by the
model (:func:`~jaxmed.tasks.vlm.evaluate.answer_batch`). The radiograph is a
DICOM or NIfTI file read, checked and normalised by
:func:`jaxmed.io.radiograph.prepare_radiograph`, or a ``.npy`` array
``[H, W]`` (a phantom's image, already in [0, 1]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.io import ImageReadError
from jaxmed.io.radiograph import normalise_radiograph, prepare_radiograph
from jaxmed.tasks.vlm.data import HEADS, encode_prompt
from jaxmed.tasks.vlm.evaluate import answer_batch
from jaxmed.tasks.vlm.queries import parse_user_instruction
from jaxmed.tasks.vlm.train import VLMModel

__all__ = ["Answer", "ask", "load_radiograph", "write_answer"]


class Answer(NamedTuple):
    """The model's answer: the instruction's family, the text, and for masks/landmarks the array/point."""

    family: str
    text: str
    mask: np.ndarray | None
    probability: np.ndarray | None
    landmark: tuple[float, float] | None


def load_radiograph(path: str | os.PathLike, *, size: int) -> np.ndarray:
    """A radiograph file as the model's input ``[size, size, 1]`` in [0, 1] (module docstring).

    Raises:
      ImageReadError: naming the file and the problem (unreadable, not one
        greyscale frontal radiograph, constant, the wrong shape).
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ImageReadError(path, f"not a readable .npy array ({e})") from e
        array = np.squeeze(np.asarray(array, np.float32))
        if array.ndim != 2:
            raise ImageReadError(path, f"an array of shape {array.shape}; a radiograph is one 2-D image")
        image = np.asarray(normalise_radiograph(jnp.asarray(array)))
        if image.shape[0] != size or image.shape[1] != size:
            image = np.asarray(jax.image.resize(jnp.asarray(image), (size, size, 1), "linear", antialias=True))
    else:
        image = prepare_radiograph(path, grid=size)[0].image
    if not np.all(np.isfinite(image)) or float(np.ptp(image)) == 0.0:
        raise ImageReadError(path, "a constant (or empty) image: nothing to read")
    return image.astype(np.float32)


def ask(model: VLMModel, image: np.ndarray, instruction: str) -> Answer:
    """Answers ``instruction`` about ``image`` (``[S, S, 1]`` in [0, 1], S the model's ``image_size``).

    Raises:
      ValueError: an unknown structure or an unreadable instruction (the
        message lists what the model knows), an instruction longer than the
        model's context, or an image of the wrong shape.
    """
    size = model.config.image_size
    if image.shape != (size, size, 1):
        raise ValueError(f"the image is {image.shape}; this model reads ({size}, {size}, 1) radiographs")
    n = len(model.tokenizer.encode(instruction)) + 1
    if n > model.config.prompt_len:
        raise ValueError(f"the instruction is {n} tokens with its task token; the model's context takes at most "
                         f"{model.config.prompt_len}")
    query = parse_user_instruction(instruction, domain="chest")
    prompt, prompt_mask = encode_prompt(model.tokenizer, query.family, instruction, model.config.prompt_len)
    head = np.asarray([HEADS.get(query.target_kind, HEADS["text"])], np.int32)
    max_new = (model.config.report_len if query.family == "report" else model.config.answer_len) - 1
    out = answer_batch(model, image[None], prompt[None], prompt_mask[None], head, max_new_tokens=max_new)
    return Answer(query.family, out["text"][0], out["mask"][0], out["probability"][0], out["landmark"][0])


def write_answer(answer: Answer, image: np.ndarray, out_dir: str | os.PathLike, stem: str, *,
                 force: bool = False) -> list[Path]:
    """Writes a mask as ``STEM_mask.png`` (overlay), ``.nii.gz`` and ``.npy``; a landmark as ``STEM_point.png``.

    Raises:
      FileExistsError: an output exists and ``force`` is False (nothing is written).
    """
    import nibabel as nib

    from jaxmed.tasks.vlm.figures import plot_answer

    out = Path(out_dir)
    if answer.mask is not None:
        paths = [out / f"{stem}_mask.png", out / f"{stem}_mask.nii.gz", out / f"{stem}_mask.npy"]
    elif answer.landmark is not None:
        paths = [out / f"{stem}_point.png"]
    else:
        return []
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: exists; refusing to overwrite (pass --force)")
    out.mkdir(parents=True, exist_ok=True)
    plot_answer(paths[0], image[..., 0], answer.text, mask=answer.mask, landmark=answer.landmark)
    if answer.mask is not None:
        # NIfTI axes (column, row): i runs along the image's columns as a viewer shows them.
        nib.save(nib.Nifti1Image(answer.mask.T.astype(np.uint8)[..., None], np.eye(4)), paths[1])
        np.save(paths[2], answer.mask)
    return paths
