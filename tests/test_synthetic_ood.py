"""Synthetic out-of-distribution objects: determinism, shapes, detectability, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.detect import detect
from napari_foram.synthetic import CLASSES, render_crop
from napari_foram.synthetic_ood import OOD_KINDS, render_ood_crop, render_ood_set

LUMA = np.array([0.299, 0.587, 0.114])


def test_kinds_are_not_classes():
    assert len(OOD_KINDS) >= 4
    assert len(set(OOD_KINDS)) == len(OOD_KINDS)
    assert not set(OOD_KINDS) & set(CLASSES)


def test_same_seed_same_pixels():
    for kind in OOD_KINDS:
        a = render_ood_crop(kind, 3)
        assert np.array_equal(a, render_ood_crop(kind, 3)), kind
        assert not np.array_equal(a, render_ood_crop(kind, 4)), kind


@pytest.mark.parametrize("kind", OOD_KINDS)
def test_each_kind_is_one_centred_object_the_detector_finds(kind):
    for seed in (0, 1):
        crop = render_ood_crop(kind, seed)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        grey = crop @ LUMA
        centre, corners = grey[92:132, 92:132].max(), np.median(grey[:20, :20])
        assert centre > corners + 30, (kind, seed)
        det = detect(crop, crops=False)
        assert len(det) == 1, (kind, seed, len(det))
        assert bool(det.whole[0]), (kind, seed, det.to_records())
        assert np.hypot(*(det.centroid[0] - 111.5)) < 30, (kind, seed)
        # The study's size range: 150-550 um at 2.5 um/px is 60-220 px; at least 2000 px.
        assert det.area_px[0] >= 1500, (kind, seed)


def test_other_sizes():
    crop = render_ood_crop("radiolarian", 5, size=128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    assert render_ood_crop("ostracod", 5, pixel_size_um=4.0).shape == (224, 224, 3)


def test_kinds_differ_from_each_other_and_from_classes():
    crops = {kind: render_ood_crop(kind, 7) for kind in OOD_KINDS}
    for i, a in enumerate(OOD_KINDS):
        for b in OOD_KINDS[i + 1 :]:
            assert not np.array_equal(crops[a], crops[b]), (a, b)
    for kind, crop in crops.items():
        assert not np.array_equal(crop, render_crop("planktic", 7)), kind


def test_set_is_interleaved_and_deterministic():
    crops, kinds = render_ood_set(2, seed=1)
    assert crops.shape == (2 * len(OOD_KINDS), 224, 224, 3) and crops.dtype == np.uint8
    assert kinds == list(OOD_KINDS) * 2
    again, _ = render_ood_set(2, seed=1)
    assert np.array_equal(crops, again)
    assert not np.array_equal(crops[0], crops[len(OOD_KINDS)])  # two different ostracods
    empty, none = render_ood_set(0)
    assert empty.shape == (0, 224, 224, 3) and none == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: render_ood_crop("planktic", 0), "unknown OOD kind"),
        (lambda: render_ood_crop("ostracod", -1), "seed"),
        (lambda: render_ood_crop("ostracod", 1.5), "seed"),
        (lambda: render_ood_crop("ostracod", True), "seed"),
        (lambda: render_ood_crop("ostracod", 0, size=16), "size"),
        (lambda: render_ood_crop("ostracod", 0, pixel_size_um=0.0), "pixel_size_um"),
        (lambda: render_ood_set(-1), "n_per_kind"),
        (lambda: render_ood_set(1, seed=-2), "seed"),
    ],
)
def test_bad_arguments_say_why_in_one_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
