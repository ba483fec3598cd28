"""Image normalisation and reading: every odd input is either handled or refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.frames import Frame, read_image, to_rgb_uint8, to_uint8


def test_uint8_passes_through_unchanged():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert to_uint8(img) is img


@pytest.mark.parametrize(("bits", "value"), [(12, 4095), (16, 65535), (14, 16383)])
def test_camera_bit_depths_scale_full_range_to_255(bits, value):
    img = np.array([[0, value // 2, value]], dtype=np.uint16)
    out = to_uint8(img)
    assert out.dtype == np.uint8
    assert out[0, 0] == 0 and out[0, 2] == 255
    assert abs(int(out[0, 1]) - 127) <= 1


def test_dim_16bit_frame_stays_dim():
    # A 12-bit camera delivering values up to 1000 must not be stretched to white.
    img = np.full((8, 8), 1000, dtype=np.uint16)
    img[0, 0] = 0
    assert to_uint8(img).max() < 100


def test_float_unit_range_and_nan():
    img = np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)
    out = to_uint8(img)
    assert out.tolist() == [[0, 128, 255, 0]]


def test_rgba_drops_alpha_and_grey_becomes_rgb():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., 0] = 10
    rgb = to_rgb_uint8(rgba)
    assert rgb.shape == (4, 5, 3) and rgb[0, 0].tolist() == [10, 0, 0]
    grey = to_rgb_uint8(np.full((3, 3), 7, np.uint8))
    assert grey.shape == (3, 3, 3) and (grey == 7).all()


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros(10, np.uint8), "1-D"),
        (np.zeros((2, 3, 4, 5), np.uint8), "4-D"),
        (np.full((4, 4), np.nan), "no finite values"),
        (np.zeros((4, 4, 7), np.uint8), "channels"),
        (np.zeros((4, 4), bool), "pixel type"),
    ],
)
def test_unusable_images_refused_with_one_line(array, reason):
    with pytest.raises(ValueError, match=reason) as info:
        to_uint8(array)
    assert "\n" not in str(info.value)


def test_read_image_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="cannot read image") as info:
        read_image(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="folder"):
        read_image(tmp_path)


def test_read_image_round_trip_16bit_tiff(tmp_path):
    import tifffile

    data = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    tifffile.imwrite(tmp_path / "f.tif", data)
    assert np.array_equal(read_image(tmp_path / "f.tif"), data)


def test_pixel_to_stage_uses_field_centre():
    f = Frame(np.zeros((11, 21)), stage_xy_um=(100.0, 50.0), pixel_size_um=2.0)
    assert f.pixel_to_stage_um(5, 10) == (100.0, 50.0)
    assert f.pixel_to_stage_um(0, 0) == (80.0, 40.0)
    assert Frame(np.zeros((3, 3))).pixel_to_stage_um(1, 1) is None
