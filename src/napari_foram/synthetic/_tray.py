"""A whole tray frame with its ground truth (`render_tray`)."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.synthetic._common import (
    _EDGES,
    _PALE,
    CLASSES,
    DEFAULT_PIXEL_SIZE_UM,
    DEFAULT_SHAPE,
    GROUP_KINDS,
    MAX_SPECIMEN_UM,
    MIN_FRAME_SIDE,
    SPECIMEN_GAP_UM,
    Lighting,
    SpecimenTruth,
    TrayRender,
    _check_class,
    _Layer,
    _Shape,
    check_seed,
)
from napari_foram.synthetic._frame import (
    BORDER_STYLES,
    _background,
    _composite,
    _draw_border,
    _draw_dust,
    _draw_lint,
    _finish,
    _parse_border,
)
from napari_foram.synthetic._placement import (
    _group,
    _Item,
    _measure,
    _single,
    _touching_pair,
    _try_place,
)
from napari_foram.synthetic._shapes import _SIZE_UM, _shape_planktic
from napari_foram.synthetic._specimen import _render_layer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _check_classes(
    classes: Sequence[str], class_weights: Sequence[float] | None
) -> tuple[tuple[str, ...], np.ndarray]:
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes is empty")
    for c in classes:
        _check_class(c)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {classes}")
    if class_weights is None:
        weights = np.full(len(classes), 1.0 / len(classes))
    else:
        weights = np.asarray(class_weights, dtype=float)
        if weights.shape != (len(classes),):
            raise ValueError(f"class_weights needs {len(classes)} values, got {weights.size}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("class_weights must be non-negative with a positive sum")
        weights = weights / weights.sum()
    return classes, weights


def render_tray(
    seed: int,
    *,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    n_specimens: int = 60,
    classes: Sequence[str] = CLASSES,
    class_weights: Sequence[float] | None = None,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    border: bool | str = True,
    border_style: str = "metal",
    border_width: tuple[float, float] | None = None,
    touching_pairs: int = 3,
    touching_groups: int = 0,
    group_kinds: Sequence[str] = GROUP_KINDS,
    clipped: bool = True,
    lint: int = 4,
    overexposed_fraction: float = 0.08,
) -> TrayRender:
    """Render a tray frame with specimens, lint, dust and a metallic border.

    Parameters
    ----------
    seed
        Same seed (and arguments), same pixels.
    shape
        (rows, columns) of the frame, each at least 128.
    n_specimens
        Specimens to place. All are placed unless they do not fit (a small frame, a huge
        count): a specimen that finds no free spot in 250 random tries is drawn afresh
        (another shape and size) and tried once more, else dropped. The bulkiest are
        placed first. ``meta["placed"]`` and ``meta["unplaced"]`` say how many.
        Specimens are never shrunk below their class's size range to make them fit.
    classes, class_weights
        Which of `CLASSES` to draw and their relative frequencies (default: equal).
    pixel_size_um
        Micrometres per pixel; specimens are 150-500 um whatever the pixel size.
    border
        True: the metallic wall along a random choice of edges (one edge, a corner, three
        or all four); False or "none": no wall; or edge names ``"top,left"``, ``"all"``.
    border_style
        How the wall looks (`BORDER_STYLES`): "metal" (the study's brushed metal, default),
        "bright" (polished, near saturation), "dim" (dull, a few tens of grey levels above
        the floor) or "dark" (black, darker than the floor, with a bright rim).
    border_width
        (low, high): each wall's width drawn in this range, as a fraction of the frame's
        shorter side (default 0.05-0.12).
    touching_pairs
        Pairs of specimens whose masks touch (one resting on the other's edge).
    touching_groups
        Further groups, of the kinds in `GROUP_KINDS` in turn (triplets, chains, small on
        large, pale on pale, overlapping pairs, deep-sutured planktics); their specimens
        count in `n_specimens`. ``meta["groups"]`` lists each group's kind and ids.
    group_kinds
        The kinds drawn in turn (default all of `GROUP_KINDS`).
    clipped
        Place a few specimens (~6 %, at least one) across frame edges that have no wall.
        Impossible when all four edges have one.
    lint
        Number of fibres (thin curved threads, label 0). Dust specks are added as well.
    overexposed_fraction
        Fraction of specimens rendered over-exposed (texture lost), 0-1.

    Returns
    -------
    TrayRender
        Image, labels and ground truth measured on the labels.
    """
    seed = check_seed(seed)
    h, w, group_kinds, border_width = _check_tray_args(
        shape,
        n_specimens,
        touching_pairs,
        touching_groups,
        group_kinds,
        lint,
        overexposed_fraction,
        pixel_size_um,
        border_style,
        border_width,
    )
    classes, weights = _check_classes(classes, class_weights)

    ss = np.random.SeedSequence(seed)
    rng_bg, rng_border, rng_plan, rng_place, rng_lint, rng_noise, rng_dust, spec_ss = _spawn(ss)
    light = Lighting.random(rng_bg)
    frame = _background((h, w), rng_bg)
    interior = np.ones((h, w), dtype=bool)
    edges = _parse_border(border, rng_border)
    if edges:
        _draw_border(
            frame,
            interior,
            edges,
            rng_border,
            light,
            margin=6.0,
            style=border_style,
            width_fraction=border_width,
        )
    _draw_lint(frame, rng_lint, lint, pixel_size_um)
    _draw_dust(frame, rng_dust, int(h * w / 120_000) + 1)

    plan = _plan_specimens(
        ss,
        rng_plan,
        int(n_specimens),
        classes,
        weights,
        overexposed_fraction,
        touching_pairs,
        touching_groups,
        group_kinds,
        free=[e for e in _EDGES if e not in edges] if clipped else [],
    )
    max_d = _largest_diameter(interior, pixel_size_um)
    _size_groups(plan, classes, pixel_size_um, max_d)
    spec_rngs = [np.random.default_rng(s) for s in spec_ss.spawn(plan.n)]

    def layer_for(i: int) -> _Layer:
        return _render_layer(
            classes[int(plan.class_of[i])],
            spec_rngs[i],
            diameter_px=plan.diameter_of.get(i),
            pixel_size_um=pixel_size_um,
            light=light,
            overexposed=bool(plan.over[i]),
            max_diameter_px=max_d,
            builder=plan.builder_of.get(i),
        )

    gap = max(round(SPECIMEN_GAP_UM / pixel_size_um), 4)
    placed, n_unplaced = _place_items(plan, layer_for, interior, rng_place, gap)
    labels = np.zeros((h, w), dtype=np.int32)
    painted, group_ids = _paint(frame, labels, placed, plan, classes)
    image = _finish(
        frame,
        rng_noise,
        vignette=rng_noise.uniform(0.12, 0.3),
        exposure=rng_noise.uniform(0.92, 1.08),
    )
    labels, truth = _truth(labels, image, painted, group_ids, classes)
    meta = {
        "seed": seed,
        "shape": [h, w],
        "pixel_size_um": float(pixel_size_um),
        "classes": list(classes),
        "border_edges": list(edges),
        "border_style": border_style,
        "light": asdict(light),
        "lint": int(lint),
        "requested": plan.n,
        "placed": len(truth),
        "unplaced": n_unplaced,
        "touching_pairs": plan.n_pairs,
        "clipped_planned": plan.n_clip,
        "groups": group_ids,
    }
    return TrayRender(
        image=image,
        labels=labels,
        specimens=truth,
        pixel_size_um=float(pixel_size_um),
        classes=classes,
        seed=seed,
        meta=meta,
    )


def _check_tray_args(
    shape: tuple[int, int],
    n_specimens: int,
    touching_pairs: int,
    touching_groups: int,
    group_kinds: Sequence[str],
    lint: int,
    overexposed_fraction: float,
    pixel_size_um: float,
    border_style: str,
    border_width: tuple[float, float] | None,
) -> tuple[int, int, tuple[str, ...], tuple[float, float] | None]:
    """`render_tray`'s arguments checked (one-line ValueError): (rows, columns, group
    kinds, border width).
    """
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, columns), got {shape!r}") from None
    if min(h, w) < MIN_FRAME_SIDE:
        raise ValueError(f"shape {shape} too small: each side needs >= {MIN_FRAME_SIDE} px")
    if n_specimens < 0:
        raise ValueError(f"n_specimens must be >= 0, got {n_specimens}")
    if touching_pairs < 0:
        raise ValueError(f"touching_pairs must be >= 0, got {touching_pairs}")
    if touching_groups < 0:
        raise ValueError(f"touching_groups must be >= 0, got {touching_groups}")
    group_kinds = tuple(group_kinds)
    if touching_groups and (not group_kinds or set(group_kinds) - set(GROUP_KINDS)):
        raise ValueError(f"group_kinds must be some of {', '.join(GROUP_KINDS)}")
    if lint < 0:
        raise ValueError(f"lint must be >= 0, got {lint}")
    if not 0.0 <= overexposed_fraction <= 1.0:
        raise ValueError(f"overexposed_fraction must be in [0, 1], got {overexposed_fraction}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    if border_style not in BORDER_STYLES:
        raise ValueError(f"border_style must be one of {', '.join(BORDER_STYLES)}")
    if border_width is not None:
        lo, hi = (float(v) for v in border_width)
        if not 0.0 < lo <= hi < 0.45:
            raise ValueError(
                f"border_width must be (low, high) within (0, 0.45), got {border_width}"
            )
        border_width = (lo, hi)
    return h, w, group_kinds, border_width


@dataclass
class _SpecimenPlan:
    """What each of a tray's specimens 0..n-1 will be, before any is drawn.

    Specimens 0..2 n_pairs-1 form the touching pairs, then come the groups' members,
    then the `n_clip` placed across a free frame edge, then the rest.
    """

    n: int
    class_of: np.ndarray  # (n,) index into the classes
    over: np.ndarray  # (n,) bool, over-exposed
    n_pairs: int
    groups: list[tuple[str, list[int]]]  # (kind, members)
    n_grouped: int  # specimens in pairs and groups
    free: list[str]  # frame edges without a wall, for clipped specimens
    n_clip: int
    rng_group: np.random.Generator | None
    kind_of: dict[int, str] = field(default_factory=dict)  # first member -> group kind
    diameter_of: dict[int, float] = field(default_factory=dict)  # px, overrides
    builder_of: dict[int, Callable[..., _Shape]] = field(default_factory=dict)


def _plan_specimens(
    ss: np.random.SeedSequence,
    rng_plan: np.random.Generator,
    n: int,
    classes: tuple[str, ...],
    weights: np.ndarray,
    overexposed_fraction: float,
    touching_pairs: int,
    touching_groups: int,
    group_kinds: tuple[str, ...],
    free: list[str],
) -> _SpecimenPlan:
    """Classes, pairs, groups, clipped ones and over-exposure of the specimens."""
    class_of = rng_plan.choice(len(classes), size=n, p=weights) if n else np.zeros(0, int)
    over = rng_plan.random(n) < overexposed_fraction
    n_pairs = min(int(touching_pairs), n // 2)
    # Groups: their own generator (a ninth child of the seed), so a render without them
    # draws exactly what it drew before groups existed.
    rng_group = np.random.default_rng(ss.spawn(9)[8]) if touching_groups else None
    groups: list[tuple[str, list[int]]] = []
    next_free = 2 * n_pairs
    for g in range(int(touching_groups)):
        assert rng_group is not None
        kind = group_kinds[g % len(group_kinds)]
        k = {"triplet": 3, "chain": 3 + int(rng_group.integers(2)), "deep_planktic": 1}.get(
            kind, 2
        )
        if next_free + k > n:
            break
        groups.append((kind, list(range(next_free, next_free + k))))
        next_free += k
    n_grouped = next_free
    n_clip = 0
    if free and n - n_grouped > 0:
        n_clip = min(max(1, round(0.06 * n)), n - n_grouped)
    return _SpecimenPlan(n, class_of, over, n_pairs, groups, n_grouped, free, n_clip, rng_group)


def _largest_diameter(interior: np.ndarray, pixel_size_um: float) -> float:
    """Largest specimen (px) that still fits comfortably inside the tray floor."""
    rows_in = np.flatnonzero(interior.any(1))
    cols_in = np.flatnonzero(interior.any(0))
    floor = min(rows_in.size, cols_in.size) if rows_in.size and cols_in.size else 0
    return min(MAX_SPECIMEN_UM / pixel_size_um, 0.6 * floor)


def _size_groups(
    plan: _SpecimenPlan, classes: tuple[str, ...], pixel_size_um: float, max_d: float
) -> None:
    """The groups' overrides of their members' class, exposure, size and shape builder."""
    rng_group = plan.rng_group
    for kind, members in plan.groups:
        plan.kind_of[members[0]] = kind
        assert rng_group is not None
        if kind == "pale_pair":
            pale = [c for c in _PALE if c in classes] or [classes[int(plan.class_of[members[0]])]]
            cls = classes.index(pale[int(rng_group.integers(len(pale)))])
            plan.class_of[members] = cls
            plan.over[members] = False
        elif kind == "deep_planktic" and "planktic" in classes:
            plan.class_of[members[0]] = classes.index("planktic")
            plan.builder_of[members[0]] = functools.partial(_shape_planktic, deep=True)
        elif kind == "small_large":
            big, small = (_SIZE_UM[classes[int(plan.class_of[i])]] for i in members)
            plan.diameter_of[members[0]] = min(
                big[1] * rng_group.uniform(0.85, 1.0) / pixel_size_um, max_d
            )
            plan.diameter_of[members[1]] = small[0] * rng_group.uniform(1.0, 1.15) / pixel_size_um


def _place_items(
    plan: _SpecimenPlan,
    layer_for: Callable[[int], _Layer],
    interior: np.ndarray,
    rng_place: np.random.Generator,
    gap: int,
) -> tuple[list[tuple[_Item, int, int]], int]:
    """Render every item (a pair, a group, a clipped or a free specimen) and place it:
    ((item, row, column) of those placed, in placement order; specimens left out).
    """
    jobs: list[tuple[list[int], str | None]] = []
    for p in range(plan.n_pairs):
        jobs.append(([2 * p, 2 * p + 1], None))
    for _, members in plan.groups:
        jobs.append((members, None))
    for c in range(plan.n_clip):
        jobs.append(([plan.n_grouped + c], plan.free[int(rng_place.integers(len(plan.free)))]))
    for i in range(plan.n_grouped + plan.n_clip, plan.n):
        jobs.append(([i], None))

    def make_item(members: list[int]) -> _Item:
        layers = [layer_for(i) for i in members]
        if members[0] in plan.kind_of:
            assert plan.rng_group is not None
            return _group(plan.kind_of[members[0]], members, layers, plan.rng_group, gap)
        if len(members) == 2:
            return _touching_pair(members[0], layers[0], members[1], layers[1], rng_place, gap)
        return _single(members[0], layers[0], gap)

    # Render first, then place the bulkiest items first: rejection sampling packs better.
    items = [make_item(members) for members, _ in jobs]
    order = sorted(
        range(len(jobs)), key=lambda k: (jobs[k][1] is not None, -int(items[k].mask.sum()))
    )
    occupied = np.zeros(interior.shape, dtype=bool)
    placed: list[tuple[_Item, int, int]] = []
    n_unplaced = 0
    for k in order:
        members, edge = jobs[k]
        pos = None
        for attempt in range(2):  # no room: draw a fresh specimen (often a smaller one)
            item = items[k] if attempt == 0 else make_item(members)
            pos = _try_place(item, occupied, interior, rng_place, 250, edge, gap)
            if pos is not None:
                placed.append((item, *pos))
                break
        if pos is None:
            n_unplaced += len(members)
    return placed, n_unplaced


def _paint(
    frame: np.ndarray,
    labels: np.ndarray,
    placed: list[tuple[_Item, int, int]],
    plan: _SpecimenPlan,
    classes: tuple[str, ...],
) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Composite the placed items onto `frame` and `labels`, ids 1..n in placement
    order: (what each id is, the groups' kinds and ids).
    """
    painted: dict[int, dict[str, Any]] = {}
    next_id = 1
    group_ids: list[dict[str, Any]] = []
    for item, y, x in placed:
        first = item.members[0][0]
        if first in plan.kind_of:
            group_ids.append(
                {
                    "kind": plan.kind_of[first],
                    "ids": list(range(next_id, next_id + len(item.members))),
                }
            )
        for i, layer, dy, dx in item.members:
            _composite(frame, labels, layer, y + dy, x + dx, next_id)
            painted[next_id] = {
                "class_name": classes[int(plan.class_of[i])],
                "diameter_um": layer.diameter_um,
                "overexposed": layer.overexposed,
                "morph": layer.morph,
            }
            next_id += 1
    return painted, group_ids


def _truth(
    labels: np.ndarray,
    image: np.ndarray,
    painted: dict[int, dict[str, Any]],
    group_ids: list[dict[str, Any]],
    classes: tuple[str, ...],
) -> tuple[np.ndarray, list[SpecimenTruth]]:
    """Ground truth measured on the labels; specimens hidden entirely (never seen) are
    dropped and the rest renumbered 1..n (`group_ids` follow). (labels, truth).
    """
    n_painted = len(painted)
    truth = _measure(labels, image, painted, classes)
    if len(truth) != n_painted:
        remap = np.zeros(n_painted + 1, dtype=np.int32)
        for new, t in enumerate(truth, start=1):
            remap[t.id] = new
            painted[new] = painted[t.id] if new != t.id else painted[new]
        labels = remap[labels]
        for grp in group_ids:
            grp["ids"] = [int(remap[k]) for k in grp["ids"] if remap[k]]
        truth = _measure(labels, image, {k: painted[k] for k in range(1, len(truth) + 1)}, classes)
    return labels, truth


def _spawn(ss: np.random.SeedSequence) -> tuple[Any, ...]:
    """Independent generators for each stage, so that e.g. adding lint never changes the
    specimens. The last item is a SeedSequence for the per-specimen generators.
    """
    kids = ss.spawn(8)
    return (*(np.random.default_rng(k) for k in kids[:7]), kids[7])
