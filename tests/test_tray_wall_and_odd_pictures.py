"""Issue 26, nothing silently wrong: the tray wall, frame-sized objects, CMYK and EXIF.

- A tray wall the study's fixed grey level misses (dull, shadowed, black with a lit rim)
  once became one object all round the frame (1 of 60 specimens counted) or, along one
  side, a "scale bar" whose neighbours were flagged as its label (30 of 56 counted).
- An object the size of the frame was returned (or hidden as the floor) without a word.
- A CMYK JPEG was read as RGB + alpha (0 specimens instead of 13); EXIF orientation was
  ignored (coordinates in the stored, not the displayed orientation).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from napari_foram.detect import detect
from napari_foram.frames import read_image, upright
from napari_foram.point_matching import match_points
from napari_foram.synthetic import render_tray

# ------------------------------------------------------------------------- tray walls


def _score(render, det) -> tuple[int, int, int, int]:
    """(specimens seen whole, counted, counted that match one of them, detections that
    match one of them but were flagged as artifacts).
    """
    truth = [s for s in render.specimens if not s.clipped]
    centres = np.array([s.centroid_yx for s in truth]).reshape(-1, 2)
    radius = np.array([max(10.0, np.sqrt(s.area_px / np.pi)) for s in truth])
    whole = np.flatnonzero(det.whole)
    match = match_points(det.centroid[whole], centres, radius)
    every = match_points(det.centroid, centres, radius)
    flagged = int(((every.truth_of_found >= 0) & det.artifact).sum())
    return len(truth), len(whole), int((match.truth_of_found >= 0).sum()), flagged


# Walls the study's level (~70 grey) misses: "dim" sits a few tens of grey levels above
# the floor, mottled; "dark" is black with a lit rim. Widths up to a fifth of the frame.
@pytest.mark.parametrize(
    ("style", "edges", "seed"),
    [
        ("dim", "all", 0),
        ("dim", "left", 2),
        ("dim", "top,right", 1),
        ("dark", "all", 3),
        ("dark", "left", 2),
        ("bright", "all", 1),
    ],
)
def test_tray_wall_is_masked_and_specimens_are_counted(style, edges, seed):
    r = render_tray(
        seed, n_specimens=58, border=edges, border_style=style, border_width=(0.06, 0.22)
    )
    det = detect(r.image, pixel_size_um=r.pixel_size_um, crops=False)
    n_truth, n_counted, n_matched, n_flagged = _score(r, det)
    assert abs(n_counted - n_truth) <= 3, (n_truth, n_counted)
    assert n_matched >= n_truth - 3
    # Not one object the size of the frame, no specimens taken for a scale bar's label
    # (pieces of a black wall's lit rim may be flagged: they are no specimens).
    assert det.area_px.max() < 0.05 * r.image.shape[0] * r.image.shape[1]
    assert n_flagged <= 1
    assert det.warnings == []
    if style != "bright":  # the study's own pass finds a bright wall
        assert det.border_mask.any()


def _dim_wall_frame(gaps: list[int], rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """A 1500 x 2000 frame: dark floor (~16), a dull textured wall along the left edge
    (grey ~45, under the study's 70), and discs of radius 50 at `gaps` px from the wall,
    plus three discs far from it. Returns the frame and the discs' centres.
    """
    h, w, wall = 1500, 2000, 320
    from scipy import ndimage as ndi

    img = 16 + 2.5 * rng.standard_normal((h, w))
    texture = ndi.gaussian_filter(rng.standard_normal((h, wall)), 6)
    img[:, :wall] = 45 + 8 * texture / texture.std()
    yy, xx = np.mgrid[:h, :w]
    centres = []
    for k, gap in enumerate(gaps):
        cy, cx = 200 + 250 * k, wall + gap + 50
        centres.append((cy, cx))
    centres += [(300, 1200), (800, 1500), (1250, 1000)]
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 50**2] = 170
    return np.clip(img, 0, 255).astype(np.uint8), centres


def test_specimens_beside_a_dull_wall_count_and_those_touching_it_do_not():
    rng = np.random.default_rng(3)
    img, _ = _dim_wall_frame([12, 30, 60, 0, -20], rng)  # 0 and -20: against / on it
    det = detect(img, crops=False, min_area_px=1000)
    assert det.border_mask[:, : 300 // det.work_scale].mean() > 0.95  # the wall
    assert int(det.whole.sum()) == 3 + 3  # three beside the wall, three far away
    near = det.centroid[:, 1] < 500
    assert int((near & det.clipped).sum()) == 2  # touching the wall: cut by the mask
    # Without the wall pass the wall is an object of its own, the frame's height long.
    bare = detect(img, crops=False, min_area_px=1000, mask_border=False)
    assert not bare.border_mask.any() and bare.area_px.max() > 0.1 * img.size


def test_a_ring_left_unmasked_does_not_swallow_the_floor():
    """Without a wall pass (--no-border) a ring all round a camera frame stays one
    object, flagged and warned about, and its hole -- the tray floor -- is not filled.
    """
    rng = np.random.default_rng(1)
    h, w = 1500, 2000
    img = 16 + 2.0 * rng.standard_normal((h, w))
    img[:200], img[-200:], img[:, :200], img[:, -200:] = 60, 60, 60, 60
    centres = [(500, 600), (500, 1400), (1000, 600), (1000, 1400), (750, 1000)]
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 60**2] = 180
    img = np.clip(img, 0, 255).astype(np.uint8)
    det = detect(img, crops=False, mask_border=False, min_area_px=1000)
    assert int(det.whole.sum()) == 5
    ring = np.argmax(det.area_px)
    assert det.artifact[ring] and not det.whole[ring]
    assert any("covers" in line for line in det.warnings)
    # With the wall pass the ring is masked and nothing needs saying.
    masked = detect(img, crops=False, min_area_px=1000)
    assert int(masked.whole.sum()) == 5 and masked.warnings == []


def test_a_wall_streak_is_no_scale_bar_but_a_scale_bar_keeps_its_label():
    rng = np.random.default_rng(2)
    h, w = 1500, 2000
    img = 16 + 2.0 * rng.standard_normal((h, w))
    img[:, 300:318] = 150  # a lit rim running the frame's height
    yy, xx = np.mgrid[:h, :w]
    for cy in (200, 500, 800, 1100, 1400):
        img[(yy - cy) ** 2 + (xx - 420) ** 2 <= 45**2] = 170
    img[1300:1318, 1500:1800] = 220  # a scale bar ...
    img[1250:1280, 1620:1660] = 220  # ... and its label
    img = np.clip(img, 0, 255).astype(np.uint8)
    det = detect(img, crops=False, mask_border=False, min_area_px=500)
    discs = (det.centroid[:, 1] > 370) & (det.centroid[:, 1] < 470)
    assert int(discs.sum()) == 5 and not det.artifact[discs].any()
    label = (det.centroid[:, 0] < 1290) & (det.centroid[:, 1] > 1600)
    assert int(label.sum()) == 1 and det.artifact[label].all()


# ------------------------------------------------------------------ frame-sized objects


def _disc_frame(shape: tuple[int, int], fraction: float) -> np.ndarray:
    h, w = shape
    img = np.full(shape, 12, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    radius = np.sqrt(fraction * h * w / np.pi)
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= radius**2] = 190
    return img


def test_an_object_filling_a_tray_frame_is_not_a_specimen_and_is_reported():
    det = detect(_disc_frame((1500, 2000), 0.45), crops=False)
    assert len(det) == 1 and det.artifact[0] and int(det.whole.sum()) == 0
    assert len(det.warnings) == 1 and "not counted" in det.warnings[0]


def test_an_object_taken_for_the_floor_is_reported():
    """Over half the frame: its grey becomes the "floor", nothing is found -- and the
    warning says why the frame came out empty.
    """
    for shape in ((1500, 2000), (400, 400)):
        det = detect(_disc_frame(shape, 0.7), crops=False)
        assert int(det.whole.sum()) == 0
        assert any("taken for the tray floor" in line for line in det.warnings), shape


def test_a_picture_of_one_specimen_keeps_it_and_says_so():
    det = detect(_disc_frame((400, 400), 0.45), crops=False)
    assert int(det.whole.sum()) == 1
    assert len(det.warnings) == 1 and "counted as one specimen" in det.warnings[0]
    # A specimen of ordinary size: nothing to say.
    assert detect(_disc_frame((400, 400), 0.1), crops=False).warnings == []


def test_synthetic_wall_styles_are_checked():
    with pytest.raises(ValueError, match="border_style"):
        render_tray(0, shape=(256, 256), n_specimens=1, border_style="chrome")
    with pytest.raises(ValueError, match="border_width"):
        render_tray(0, shape=(256, 256), n_specimens=1, border_width=(0.3, 0.1))
    r = render_tray(0, shape=(400, 500), n_specimens=2, border="left", border_style="dark")
    assert r.meta["border_style"] == "dark"
    # The default wall draws what it always drew.
    a = render_tray(4, shape=(300, 400), n_specimens=3, border="all")
    b = render_tray(4, shape=(300, 400), n_specimens=3, border="all", border_style="metal")
    assert np.array_equal(a.image, b.image)


# ----------------------------------------------------------------- real tray frames


#: Whole specimens per real frame, measured before the wall pass and the warnings existed
#: (issue 26): the new passes must leave them as they were.
REAL_COUNTS = {
    "rcos_trays/sediment_gravel/DSC_0049.png": 25,
    "rcos_trays/sediment_gravel/DSC_0050.png": 26,
    "rcos_trays/other_bone_fragments/DSC_0049.png": 23,
    "rcos_trays/other_bone_fragments/DSC_0050.png": 24,
    "forimage/calcareous_benthic/Ammonia_parkinsoniana/foram.tif": 2,
}


def test_real_tray_frames_count_as_before(realdata: Path):
    for name, expected in REAL_COUNTS.items():
        det = detect(read_image(realdata / name), crops=False)
        assert int(det.whole.sum()) == expected, name
        assert det.warnings == [], name


# ------------------------------------------------------------------- CMYK and EXIF


@pytest.fixture
def tray_rgb() -> np.ndarray:
    """A real tray frame when the shared images are there (as `conftest.realdata`
    finds them), else a synthetic one: these tests run on a user's checkout too.
    """
    env = os.environ.get("NAPARI_FORAM_REALDATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
    path = root / "rcos_trays" / "sediment_gravel" / "DSC_0049.png"
    if path.is_file():
        return read_image(path)
    return render_tray(5, shape=(900, 1200), n_specimens=14, border=False).image


def test_cmyk_jpeg_counts_like_rgb(tmp_path: Path, tray_rgb: np.ndarray):
    from PIL import Image

    Image.fromarray(tray_rgb).save(tmp_path / "rgb.jpg", quality=92)
    # Pillow writes Adobe's inverted CMYK, as Photoshop does.
    Image.fromarray(tray_rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=92)
    rgb, cmyk = read_image(tmp_path / "rgb.jpg"), read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == rgb.shape and cmyk.shape[2] == 3
    n_rgb = int(detect(rgb, crops=False).whole.sum())
    n_cmyk = int(detect(cmyk, crops=False).whole.sum())
    assert n_rgb > 5 and abs(n_cmyk - n_rgb) <= 1


def test_ycck_jpeg_and_cmyk_tiff_read_as_rgb(tmp_path: Path):
    import imagecodecs
    import tifffile
    from PIL import Image

    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[...] = (200, 40, 10)
    rgb[16:48, 24:72] = (30, 180, 90)
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK"))
    # YCCK: Adobe's transform 2, inks stored inverted as Photoshop stores them.
    (tmp_path / "ycck.jpg").write_bytes(
        imagecodecs.jpeg8_encode(255 - cmyk, level=95, colorspace="CMYK", outcolorspace="YCCK")
    )
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    for name, tolerance in (("ycck.jpg", 12), ("cmyk.tif", 1)):
        got = read_image(tmp_path / name)
        assert got.shape == rgb.shape, name
        assert np.abs(got[32, 48].astype(int) - (30, 180, 90)).max() <= tolerance, name
        assert np.abs(got[2, 2].astype(int) - (200, 40, 10)).max() <= tolerance, name


def _with_orientation(data: np.ndarray, orientation: int, path: Path) -> None:
    from PIL import Image

    img = Image.fromarray(data)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))


def test_every_exif_orientation_reads_as_displayed(tmp_path: Path):
    from PIL import Image, ImageOps

    stored = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        _with_orientation(stored, orientation, path)
        with Image.open(path) as img:
            shown = np.asarray(ImageOps.exif_transpose(img))
        assert np.array_equal(read_image(path), shown), orientation
        assert np.array_equal(upright(stored, orientation), shown), orientation


def test_exif_orientation_6_gives_displayed_coordinates(tmp_path: Path, tray_rgb: np.ndarray):
    """A picture stored sideways with orientation 6 (shown turned 90 degrees clockwise)
    detects as the same picture physically turned and saved without EXIF.
    """
    from PIL import Image

    shown = np.ascontiguousarray(np.rot90(tray_rgb, -1))
    Image.fromarray(shown).save(tmp_path / "turned.jpg", quality=95)
    _with_orientation(tray_rgb, 6, tmp_path / "exif6.jpg")
    a, b = read_image(tmp_path / "exif6.jpg"), read_image(tmp_path / "turned.jpg")
    assert a.shape == b.shape == shown.shape
    da, db = detect(a, crops=False), detect(b, crops=False)
    assert len(da) == len(db) > 5
    match = match_points(da.centroid, db.centroid, 5.0)
    assert (match.truth_of_found >= 0).all()


def test_tiff_orientation_tag_is_honoured(tmp_path: Path):
    import tifffile

    stored = np.arange(6 * 10, dtype=np.uint16).reshape(6, 10)
    tifffile.imwrite(tmp_path / "o8.tif", stored, extratags=[(274, "H", 1, 8, False)])
    assert np.array_equal(read_image(tmp_path / "o8.tif"), np.rot90(stored, 1))
    tifffile.imwrite(tmp_path / "o1.tif", stored)
    assert np.array_equal(read_image(tmp_path / "o1.tif"), stored)


def test_cmyk_is_not_taken_for_rgb_plus_alpha(tmp_path: Path):
    """What the bug did: imageio hands a CMYK JPEG over as four channels."""
    from PIL import Image

    rgb = np.full((40, 40, 3), (20, 20, 20), np.uint8)
    rgb[10:30, 10:30] = 230
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    (tmp_path / "c.jpg").write_bytes(buf.getvalue())
    got = read_image(tmp_path / "c.jpg")
    assert got.shape == (40, 40, 3)
    assert abs(int(got[20, 20, 0]) - 230) <= 6 and abs(int(got[2, 2, 0]) - 20) <= 6
