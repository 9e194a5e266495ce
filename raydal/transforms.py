"""The one input transform, shared by training, evaluation and scoring.

Images arrive as encoded bytes (PNG/JPEG/...) or as local paths or URIs (``s3://...``, read
through pyarrow.fs, one filesystem a process); ``load_image`` decodes one into a
(C, S, S) uint8 array in the model's channel count and size, and ``to_model_input`` turns a uint8
batch into the normalised float tensor the model sees. Decoding happens where the data is used
(scoring actors, training workers), never on the driver.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from raydal.config import ModelConfig
from raydal.errors import BadImage
from raydal.fs import read_bytes, redact
from raydal.specs import runtime_spec

#: Refuse images larger than this many pixels before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000


class _InputSpecMethods:
    """What the model expects: channels, square size in pixels, per-channel mean/std in [0, 1],
    what to do with images of another channel count (the ``model`` config section's fields,
    declared there) and the largest image decoded, in pixels."""


InputSpec = runtime_spec(
    "InputSpec", ModelConfig, _InputSpecMethods, module=__name__,
    only=("in_chans", "img_size", "mean", "std", "channel_mismatch"),
    required=("in_chans", "img_size"), insert=(("std", "max_pixels", int, DEFAULT_MAX_PIXELS),))

_MODES = {1: "L", 3: "RGB"}
#: Greyscale modes of more than 8 bits: scaled to 8 bits by ``_to_8_bit``, never clipped.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ACCEPTED_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr"} | _WIDE_MODES


def load_image(data: bytes | None, path: str | None, spec: InputSpec) -> np.ndarray:
    """Decode bytes (or read ``path``: local or a URI) into a (C, S, S) uint8 array; BadImage on
    failure (a missing or unreadable file included)."""
    return _load_into(data, path, spec, None)


def _load_into(data: bytes | None, path: str | None, spec: InputSpec, out: np.ndarray | None
               ) -> np.ndarray:
    """``load_image``, written into ``out`` ((C, S, S) uint8) when given: one copy of the
    pixels fewer, and no array of its own."""
    im = _open_checked(data, path, spec, draft=False)
    if im.mode in _WIDE_MODES:
        im = _to_8_bit(im)
    im = im.convert(_MODES.get(spec.in_chans, "RGB"))
    im = _resize_center_crop(im, spec.img_size)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if spec.in_chans not in _MODES:  # e.g. 2 or 4 channels: repeat/trim RGB
        arr = np.resize(arr, (spec.in_chans, *arr.shape[1:]))
    if out is None:
        return np.ascontiguousarray(arr)
    out[...] = arr
    return out


def check_image(data: bytes | None, path: str | None, spec: InputSpec) -> None:
    """BadImage for exactly the images ``load_image`` refuses, without making the model's input:
    the same header checks (size limit, mode, channels) and the whole compressed stream decoded
    -- a JPEG at 1/8 scale (libjpeg still entropy-decodes every block, so truncated or corrupt
    data fails as in a full decode; only the inverse DCT is cheaper), other formats in full. No
    colour conversion, resize or array. For strategies whose score does not depend on the
    pixels (``random``): about 0.5 ms for a 400x300 JPEG against 1.7 ms for ``load_image``."""
    _open_checked(data, path, spec, draft=True)


def _open_checked(data: bytes | None, path: str | None, spec: InputSpec, draft: bool
                  ) -> Image.Image:
    """The decoded image (``draft``: a JPEG at reduced scale) after the checks of
    ``load_image``; BadImage on failure."""
    try:
        if data is None:
            if path is None:
                raise BadImage("row has neither image bytes nor a path")
            try:
                data = read_bytes(path)
            except Exception as e:  # missing, unreadable, or a store that refuses
                raise BadImage(redact(f"cannot read {path}: {type(e).__name__}: {e}")) from None
        if len(data) == 0:
            raise BadImage("zero-byte image")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > spec.max_pixels:
                raise BadImage(f"image is {w}x{h} = {w * h} pixels, over the limit of "
                               f"{spec.max_pixels} (possible decompression bomb)")
            if im.mode not in _ACCEPTED_MODES:
                raise BadImage(f"unsupported image mode {im.mode!r}")
            bands = len(im.getbands())
            if spec.channel_mismatch == "skip" and bands != spec.in_chans:
                raise BadImage(f"image has {bands} channels ({im.mode}), the model expects "
                               f"{spec.in_chans}")
            if draft and im.format == "JPEG":
                im.draft(None, (1, 1))  # the smallest scale libjpeg decodes to (1/8)
            im.load()
    except BadImage:
        raise
    except Exception as e:  # PIL raises many types for corrupt input
        why = ("not a format PIL reads" if isinstance(e, Image.UnidentifiedImageError)
               else e)  # PIL's own text names an in-memory buffer's address, not the file
        raise BadImage(f"cannot decode image: {type(e).__name__}: {why}") from None
    return im


def _to_8_bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image as mode "L", scaled by its value range
    (PIL's own ``convert("L")`` clips: a 16-bit mid-grey of 31884 would become 255).

    I;16*: 0..65535 -> 0..255 (divide by 257). I (16-bit PNGs open as I in some Pillow
    versions): values within 0..65535 the same. F: values within 0..1 times 255, within 0..255
    as they are. Any other I or F image has no known range: its own min..max becomes 0..255.
    """
    x = np.asarray(im, dtype=np.float32)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        x = x / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        x = x * 255.0
    elif im.mode == "F" and lo >= 0 and hi <= 255:
        pass
    else:
        x = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "L")


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def to_model_input(images: np.ndarray | torch.Tensor, spec: InputSpec,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, C, S, S) uint8 -> normalised (B, C, S, S) float tensor."""
    return normalise(torch.as_tensor(images), spec, dtype)


def normalise(images: torch.Tensor, spec: InputSpec, dtype: torch.dtype = torch.float32,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, S, S) uint8 tensor -> normalised float tensor on the same device (a scorer copies
    uint8 to its GPU, 4x fewer bytes than float, and normalises there). ``(x / 255 - mean) /
    std``, computed in place in the one float tensor it allocates, or in ``out`` when that is a
    tensor of the result's shape, dtype and device (a scorer's buffer, reused batch after batch:
    on a CPU, allocating the batch's floats and their page faults cost more than the
    arithmetic); the same values as the out-of-place expression."""
    if (out is not None and out.shape == images.shape and out.dtype == dtype
            and out.device == images.device):
        x = out.copy_(images)
    else:
        x = images.to(dtype)
        if x is images:  # already of dtype: never change the caller's tensor
            x = x.clone()
    mean = torch.tensor(_per_channel(spec.mean, spec.in_chans), dtype=dtype,
                        device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(_per_channel(spec.std, spec.in_chans), dtype=dtype,
                       device=x.device).view(1, -1, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)[:channels]


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, C) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_rows(images: list, paths: list, spec: InputSpec
                ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode a batch. Returns (N_ok, C, S, S) uint8, indices of good rows, (index, reason) of bad.
    Each image is decoded straight into its row of the result."""
    n = len(images) if images is not None else len(paths)
    arr = np.empty((n, spec.in_chans, spec.img_size, spec.img_size), np.uint8)
    ok_idx, bad = [], []
    for i in range(n):
        try:
            _load_into(images[i] if images is not None else None,
                       paths[i] if paths is not None else None, spec, arr[len(ok_idx)])
            ok_idx.append(i)
        except BadImage as e:
            bad.append((i, str(e)))
    return arr[:len(ok_idx)], ok_idx, bad


def verify_rows(images: list | None, paths: list | None, spec: InputSpec
                ) -> tuple[list[int], list[tuple[int, str]]]:
    """``decode_rows`` without the pixels: indices of the rows ``load_image`` would decode and
    (index, reason) of the rest, from ``check_image``."""
    ok_idx, bad = [], []
    for i in range(len(images) if images is not None else len(paths)):
        try:
            check_image(images[i] if images is not None else None,
                        paths[i] if paths is not None else None, spec)
            ok_idx.append(i)
        except BadImage as e:
            bad.append((i, str(e)))
    return ok_idx, bad
