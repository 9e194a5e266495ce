"""transforms.check_image (what ``random`` runs instead of a decode) refuses exactly the images
load_image refuses, with the same reason, on real JPEG and PNG files cut and damaged."""
import io

import numpy as np
import pytest
from PIL import Image

from raydal.errors import BadImage
from raydal.transforms import InputSpec, check_image, decode_rows, load_image, verify_rows

SPEC = InputSpec(3, 64)


def _encoded(fmt: str, seed: int = 0, size: tuple[int, int] = (120, 90), mode: str = "RGB"
             ) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.BICUBIC).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _outcome(fn, data: bytes, spec: InputSpec) -> str | None:
    try:
        fn(data, None, spec)
        return None
    except BadImage as e:
        return str(e)


def _damaged(data: bytes, seed: int) -> list[bytes]:
    """Cut at many points (headers, scan, the last bytes), bytes flipped, a run zeroed."""
    rng = np.random.default_rng(seed)
    n = len(data)
    out = [data[:k] for k in range(0, n, max(1, n // 60))] + [data[:n - k] for k in range(1, 12)]
    for _ in range(60):
        x = bytearray(data)
        x[rng.integers(0, n)] = rng.integers(0, 256)
        out.append(bytes(x))
    for _ in range(20):
        x = bytearray(data)
        i = int(rng.integers(0, n - 64))
        x[i:i + 64] = bytes(64)
        out.append(bytes(x))
    return out


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"),
                                       ("PNG", "L")])
def test_check_image_fails_exactly_where_a_full_decode_fails(fmt, mode):
    good = [_encoded(fmt, seed, mode=mode) for seed in range(3)]
    cases = [c for k, g in enumerate(good) for c in [g, *_damaged(g, k)]]
    outcomes = [(_outcome(load_image, c, SPEC), _outcome(check_image, c, SPEC)) for c in cases]
    assert [full for full, _ in outcomes] == [cheap for _, cheap in outcomes]
    failed = sum(full is not None for full, _ in outcomes)
    assert 0 < failed < len(cases)  # both kinds are exercised
    assert all(full is None for full, _ in outcomes[:1])  # the intact image passes


def test_check_image_applies_load_images_header_checks():
    rgb = _encoded("PNG", 1)
    assert _outcome(check_image, b"", SPEC) == _outcome(load_image, b"", SPEC) == \
        "zero-byte image"
    assert _outcome(check_image, b"not an image", SPEC) == \
        _outcome(load_image, b"not an image", SPEC)
    small = InputSpec(3, 64, max_pixels=100)
    assert "over the limit of 100" in _outcome(check_image, rgb, small)
    strict = InputSpec(1, 64, channel_mismatch="skip")
    assert _outcome(check_image, rgb, strict) == _outcome(load_image, rgb, strict)
    assert "channels" in _outcome(check_image, rgb, strict)
    assert _outcome(check_image, None, SPEC) == "row has neither image bytes nor a path"


def test_verify_rows_gives_the_rows_and_reasons_of_decode_rows(tmp_path):
    jpeg = _encoded("JPEG", 2)
    missing = str(tmp_path / "gone.png")
    path = tmp_path / "there.jpg"
    path.write_bytes(jpeg)
    images = [jpeg, jpeg[: len(jpeg) // 2], b"", _encoded("PNG", 3), b"\x89PNG cut"]
    arr, ok, bad = decode_rows(images, None, SPEC)
    assert verify_rows(images, None, SPEC) == (ok, bad)
    assert ok == [0, 3] and arr.shape == (2, 3, 64, 64)
    paths = [str(path), missing]
    assert verify_rows(None, paths, SPEC) == decode_rows(None, paths, SPEC)[1:]
