"""Seeded, procedural microscope pictures of foraminifera and sediment grains on a tray.

The renderer is the common fixture of the project: tests, the demo's simulated microscope
(which scans one big synthetic tray), napari's sample data and the training set of the small
demo model all come from here. It imitates the study's setup (Johansen & Sorensen 2020,
Fig. 2): specimens of the 100-1000 um fraction lying on a dark tray, lit from one side by a
stereo microscope's lamp, with the tray's metallic border along some frame edges.

How a specimen is made
----------------------
Each specimen is built in its own small patch (never full-frame work per specimen):

1. a *shape* gives a signed distance to the outline (px, positive inside), a height field
   (px), an albedo (colour) map and a groove map (sutures between chambers). Chambered tests
   are unions of ellipsoids placed along the class's growth plan (trochospiral, planispiral,
   biserial, triserial, uniserial, milioline); tubes are swept circles; grains are faceted
   polygons whose height is the minimum of tilted planes;
2. class textures perturb height and albedo: pores (planktic), fine perforation and ribs
   (calcareous), agglutinated grains with a rough outline, mineral specks (sediment);
3. the height field is shaded with one directional lamp plus fill light (Lambert diffuse,
   Blinn-Phong specular), translucency lets the dark tray show through thin shells and
   lights their rims, and over-exposed specimens are pushed into clipping;
4. a slight per-specimen blur imitates the depth of field, a soft shadow falls away from
   the lamp, and the patch is alpha-composited onto the frame.

The tray frame then gets vignetting, a white-balance cast and camera noise
(read + shot noise). Everything is drawn from `numpy.random.Generator`s spawned from one
`SeedSequence`, so the same seed gives the same pixels.

Ground truth is recomputed from the final label image (area, centroid, bounding box,
touching, clipped), so it always agrees with `TrayRender.labels`.
"""

from __future__ import annotations

# The "x as x" imports keep the pieces `synthetic_ood` draws with importable from here
# (not public API, so not in __all__).
from napari_foram.synthetic._common import (
    CLASSES,
    DEFAULT_PIXEL_SIZE_UM,
    DEFAULT_SHAPE,
    GROUP_KINDS,
    Lighting,
    SpecimenTruth,
    TrayRender,
)
from napari_foram.synthetic._common import _colour as _colour
from napari_foram.synthetic._common import _Shape as _Shape
from napari_foram.synthetic._common import _unit_noise as _unit_noise
from napari_foram.synthetic._common import check_seed as check_seed
from napari_foram.synthetic._crops import centred_crop as centred_crop
from napari_foram.synthetic._crops import render_crop, write_synth
from napari_foram.synthetic._shapes import _polygon_sd as _polygon_sd
from napari_foram.synthetic._specimen import render_specimen
from napari_foram.synthetic._tray import render_tray

__all__ = [
    "CLASSES",
    "DEFAULT_PIXEL_SIZE_UM",
    "DEFAULT_SHAPE",
    "GROUP_KINDS",
    "Lighting",
    "SpecimenTruth",
    "TrayRender",
    "render_crop",
    "render_specimen",
    "render_tray",
    "write_synth",
]
