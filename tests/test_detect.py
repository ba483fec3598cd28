"""The two-pass detector on drawn frames with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.detect import DetectionParams, cut_crops, detect


def disc_frame(centres, radius=30, shape=(600, 800), value=200, background=20):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, np.uint8)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return img


def test_finds_discs_with_accurate_centroids():
    centres = [(150, 200), (300, 500), (450, 650)]
    det = detect(disc_frame(centres), mask_border=False)
    assert len(det) == 3 and not det.clipped.any()
    found = sorted(map(tuple, det.centroid.round()))
    for (ty, tx), (fy, fx) in zip(sorted(centres), found, strict=True):
        assert abs(ty - fy) <= 3 and abs(tx - fx) <= 3
    assert np.allclose(det.area_px, np.pi * 30**2, rtol=0.15)
    assert det.crops.shape == (3, 224, 224, 3) and det.crops.dtype == np.uint8


def test_min_area_discards_small_objects_and_follows_magnification():
    img = disc_frame([(150, 200)], radius=30)
    img[400:410, 400:410] = 220  # 100 px: lint-sized
    assert len(detect(img, mask_border=False)) == 1
    # 1024 px at 1 um/px is 1024 um^2; at 0.5 um/px the same limit is 4096 px.
    big_limit = DetectionParams(min_area_um2=4096.0, mask_border=False)
    assert len(detect(img, big_limit, pixel_size_um=0.5)) == 0
    assert len(detect(img, big_limit, pixel_size_um=2.0)) == 1


def test_edge_objects_are_flagged_clipped_and_crops_padded_not_shifted():
    img = disc_frame([(0, 400), (300, 400)], radius=40)
    det = detect(img, mask_border=False, masks=True)
    assert sorted(det.clipped.tolist()) == [False, True]
    edge = int(np.flatnonzero(det.clipped)[0])
    crop = det.crops[edge]
    # The object's centre stays at the crop centre: the top half of the crop is padding.
    assert (crop[:80] == crop[0, 0]).all()
    assert det.masks.shape == (2, 224, 224)
    assert det.masks[edge][112 + 5, 112]  # its own mask at the centre
    assert det.whole.sum() == 1


def test_invert_finds_dark_objects_on_bright():
    img = 255 - disc_frame([(200, 300)], radius=35)
    assert len(detect(img, mask_border=False)) == 0
    assert len(detect(img, mask_border=False, invert=True)) == 1


def test_metallic_border_is_masked_not_reported():
    img = disc_frame([(300, 400)], radius=35)
    img[:, :90] = 180  # a broad bright band along the left edge: the tray border
    det = detect(img)
    assert len(det) == 1 and det.border_mask[:, :5].all()
    assert len(detect(img, mask_border=False)) == 2


def test_manual_threshold_overrides_otsu():
    img = disc_frame([(200, 300)], radius=35, value=90)
    assert len(detect(img, mask_border=False, threshold=100)) == 0
    assert len(detect(img, mask_border=False, threshold=60)) == 1


def test_split_touching_separates_a_pair():
    img = disc_frame([(300, 370), (300, 430)], radius=32)
    merged = detect(img, mask_border=False, work_scale=1)
    split = detect(img, mask_border=False, work_scale=1, split_touching=True)
    assert len(merged) == 1 and len(split) == 2


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_other_dtypes_and_rgba(dtype):
    img = disc_frame([(200, 300)], radius=35).astype(dtype)
    if dtype == np.uint16:
        img *= 256
    else:
        img /= 255.0
    assert len(detect(img, mask_border=False)) == 1
    rgba = np.dstack([disc_frame([(200, 300)], radius=35)] * 3 + [np.full((600, 800), 255)])
    assert len(detect(rgba.astype(np.uint8), mask_border=False)) == 1


def test_empty_frame_and_tiny_frame():
    assert len(detect(np.zeros((480, 640), np.uint8))) == 0
    det = detect(np.zeros((5, 7), np.uint8))
    assert len(det) == 0 and det.crops.shape == (0, 224, 224, 3)


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 0)), np.zeros(5), np.zeros((2, 2, 2, 2)), np.full((9, 9), np.nan)]
)
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        detect(bad)


def test_cut_crops_pads_with_fill_colour():
    img = np.full((50, 50, 3), 100, np.uint8)
    crops = cut_crops(img, np.array([[0.0, 0.0]]), size=20, fill=np.array([1, 2, 3]))
    assert crops.shape == (1, 20, 20, 3)
    assert crops[0, 0, 0].tolist() == [1, 2, 3] and crops[0, 15, 15].tolist() == [100] * 3
