"""Images of more than 8 bits reach the model scaled to 8 bits by their value range, never
clipped (PIL's own convert("L") clips a 16-bit mid-grey to white)."""
import numpy as np
import pytest
from PIL import Image

from raydal.transforms import InputSpec, load_image

MID_GREY = 31884  # of 65535: 124.06 of 255


def _grey_16(seed: int = 0) -> np.ndarray:
    """(32, 32) uint16 around MID_GREY, mean exactly MID_GREY, using most of the 16-bit range."""
    noise = np.random.default_rng(seed).integers(-20000, 20001, (32, 32))
    noise -= int(round(noise.mean()))
    return (MID_GREY + noise).astype(np.uint16)


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    x = _grey_16()
    assert x.mean() == pytest.approx(MID_GREY, abs=1)
    Image.fromarray(x).save(tmp_path / "grey16.png")
    opened = Image.open(tmp_path / "grey16.png")
    assert opened.mode in ("I;16", "I") and np.asarray(opened).max() > 255  # really 16-bit
    for spec in (InputSpec(1, 32), InputSpec(3, 32)):
        got = load_image(None, str(tmp_path / "grey16.png"), spec)
        assert got.dtype == np.uint8 and got.shape == (spec.in_chans, 32, 32)
        assert got.mean() == pytest.approx(MID_GREY / 257, abs=0.6)  # not 253.9
        np.testing.assert_allclose(got[0], x / 257, atol=0.51)  # pixel for pixel
    data = (tmp_path / "grey16.png").read_bytes()  # bytes as a pool holds them: the same
    assert np.array_equal(load_image(data, None, InputSpec(1, 32)),
                          load_image(None, str(tmp_path / "grey16.png"), InputSpec(1, 32)))


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16B", _grey_16().astype(">u2"), _grey_16() / 257),  # big-endian 16-bit (TIFF)
    ("I", _grey_16().astype(np.int32), _grey_16() / 257),  # 16-bit data in 32-bit ints
    ("F", _grey_16().astype(np.float32) / 65535, _grey_16() / 65535 * 255),  # floats in 0..1
])
def test_other_wide_modes_are_scaled_by_their_range(tmp_path, mode, values, expected):
    im = Image.fromarray(values) if mode != "I;16B" else Image.frombytes(
        "I;16B", (32, 32), values.tobytes())
    assert im.mode == mode
    im.save(tmp_path / "wide.tiff")
    assert Image.open(tmp_path / "wide.tiff").mode == mode
    got = load_image(None, str(tmp_path / "wide.tiff"), InputSpec(1, 32))
    np.testing.assert_allclose(got[0], expected, atol=0.51)
    assert got.mean() == pytest.approx(124.06, abs=0.6)


@pytest.mark.parametrize("mode, values", [
    ("I", np.linspace(-70000, 200000, 32 * 32).reshape(32, 32).astype(np.int32)),
    ("F", np.linspace(-3.0, 900.0, 32 * 32).reshape(32, 32).astype(np.float32)),
])
def test_wide_images_of_no_known_range_use_their_own_min_and_max(tmp_path, mode, values):
    Image.fromarray(values).save(tmp_path / "wide.tiff")
    got = load_image(None, str(tmp_path / "wide.tiff"), InputSpec(1, 32))[0]
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_allclose(got, (values - values.min()) / np.ptp(values) * 255, atol=0.51)


def test_a_constant_wide_image_is_black_not_a_division_by_zero(tmp_path):
    Image.fromarray(np.full((8, 8), -5.0, np.float32)).save(tmp_path / "flat.tiff")
    assert not load_image(None, str(tmp_path / "flat.tiff"), InputSpec(1, 8)).any()
