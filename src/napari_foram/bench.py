"""`napari-foram bench`: the project's speed figures as one JSON object.

Our machines are noisy, so variants are compared as ratios measured in the same run, and
each figure is the median of several repeats after a warm-up. Keys (docs/benchmarks.md
records what we saw, with the machine):

- ``detect_s_per_frame_5mp_rgb``: detection + 224 px crops on a 1944 x 2592 RGB synthetic
  tray with ~100 specimens.
- ``synth_render_s_5mp``: rendering that tray.
- ``count_error_pct``, ``count_false_pct``, ``count_merged_pct``, ``planktic_cut_pct``:
  counting at default settings on a fixed set of synthetic trays with touching pairs and
  groups (`bench_counting`): (counted - true) / true whole specimens; detections that are no
  specimen or a second piece of one; specimens merged into a neighbour; planktics cut
  into two or more detections.
- ``vgg16_bare_crops_per_s``: a bare torchvision VGG16 forward in fp32, channels-last
  (15.5 GFLOP per crop); ``vgg16_bare_channels_last_over_nchw_ratio`` its layout gain.
- ``classify_crops_per_s_{fp32,bf16,int8}``: the predictor with MC dropout N=100 per
  compute path (`napari_foram.classify.precision`), interleaved batch by batch on the
  same held-out synthetic crops (the demo model; ``--quick``: a random model), medians;
  ``{path}_top1_agreement``, ``{path}_mean_abs_prob_diff``, ``{path}_max_abs_prob_diff``
  against fp32 on the MC mean probabilities.
- ``classify_precision_auto``: the path "auto" chose on this machine (the cached
  per-machine decision); ``classify_crops_per_s_auto`` (= ``classify_crops_per_s``),
  ``auto_over_fp32_ratio`` and ``auto_top1_agreement`` / ``auto_mean_abs_prob_diff``.
  The pipeline, batch and soak parts classify with that path.
- ``mc_overhead_ratio``: time of N=100 over a deterministic pass on the same crops.
- ``store_specimens_per_s``: appending specimens with crops to a Zarr tally store.
- ``pipeline_frames_per_s``, ``pipeline_s_per_new_specimen``: a simulated 5 MP camera
  through the whole pipeline (MDA scan, queue, detection, de-duplication, classification
  with MC dropout N = 100, store), every field bringing new specimens (100 per field on a
  GPU, 20 on a CPU).
- ``soak_*`` (``--soak N``): N simulated frames in scan mode; frames dropped (must be 0)
  and resident memory after the first 1,000 frames and at the end.
- ``store_rss_growth_ratio``: resident memory after the whole store run (10,000 specimens)
  over that after its first 1,000: flat memory is ~1.0.
- ``batch_images_per_s_1_worker``, ``batch_images_per_s_2_workers``: `run_batch` over a
  small synthetic folder on a Dask LocalCluster of 1 and 2 worker processes.
- ``teach_recount_s_1000``: a sample of 1,000 specimens with kept features, 10 labels
  per class: the head retrained on the labels, saved, and every specimen classified again
  (what a label costs before the counts show it; target <= 5 s on 2 cores);
  ``teach_fit_s`` the fit alone; ``reclassify_s_per_specimen``: `napari-foram
  reclassify`'s path with the saved model (target <= 20 ms); ``reclassify_from_crops_
  s_per_specimen`` the same without kept features, and the ratio of the two.
- ``train_phase1_s`` (``train_features_s``, ``train_head_and_rest_s``): `napari-foram
  train`'s default recipe on 400 synthetic crops written as files, end to end (budget:
  3 min on 2 cores).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from napari_foram._progress import ProgressCallback


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info(device: str) -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    resolved = device
    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    info: dict[str, Any] = {
        "device": resolved,
        "device_name": torch.cuda.get_device_name(0) if resolved == "cuda" else cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    return info


def bench_detection(repeats: int = 5) -> dict[str, float]:
    """Detection with crops on a 5 MP RGB tray with ~100 specimens."""
    from napari_foram.detect import detect
    from napari_foram.synthetic import render_tray

    t0 = time.perf_counter()
    tray = render_tray(3, shape=(1944, 2592), n_specimens=100)
    render_s = time.perf_counter() - t0
    # Variants timed in the same run, so their ratio means something on a noisy machine.
    det_s = _median_time(lambda: detect(tray.image), repeats)
    no_crops_s = _median_time(lambda: detect(tray.image, crops=False), repeats)
    scale4_s = _median_time(lambda: detect(tray.image, work_scale=4), repeats)
    nosplit_s = _median_time(lambda: detect(tray.image, split_touching=False), repeats)
    det = detect(tray.image)
    return {
        "detect_s_per_frame_5mp_rgb": round(det_s, 4),
        "detect_work_scale_5mp": det.work_scale,
        "detect_objects_found_5mp": len(det),
        "detect_s_5mp_rgb_without_crops": round(no_crops_s, 4),
        "detect_scale4_over_auto_ratio": round(scale4_s / det_s, 3),
        # The touching-specimen splitter's cost (on by default): the default over
        # detection without it.
        "detect_split_over_nosplit_ratio": round(det_s / nosplit_s, 3),
        "synth_render_s_5mp": round(render_s, 3),
    }


def score_counting(tray: Any, det: Any) -> dict[str, int]:
    """Compare a detection with a synthetic tray's truth, object by object.

    Each whole detection is matched to the specimen covering most of its pixels (none: a
    false detection); a specimen claimed by k > 1 detections was cut (k - 1 false); a whole
    specimen claimed by none was merged into a neighbour (or missed).
    """
    s = det.work_scale
    truth = tray.labels[::s, ::s][: det.labels.shape[0], : det.labels.shape[1]]
    n_truth = int(tray.labels.max()) + 1
    inside = det.labels > 0
    key = det.labels[inside].astype(np.int64) * n_truth + truth[inside]
    keys, counts = np.unique(key, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
        d, t = divmod(k, n_truth)
        if t and c > best.get(d, (0, 0))[0]:
            best[d] = (c, t)
    claims: dict[int, int] = {}
    false = 0
    for i in np.flatnonzero(det.whole):
        hit = best.get(int(det.label[i]))
        if hit is None:
            false += 1
        else:
            claims[hit[1]] = claims.get(hit[1], 0) + 1
    whole = {t.id for t in tray.specimens if not t.clipped}
    planktic = {t.id for t in tray.specimens if not t.clipped and t.class_name == "planktic"}
    return {
        "truth": len(whole),
        "found": int(det.whole.sum()),
        "false": false + sum(c - 1 for c in claims.values()),
        "merged": len(whole - set(claims)),
        "planktic": len(planktic),
        "planktic_cut": sum(1 for t, c in claims.items() if c > 1 and t in planktic),
    }


def bench_counting(
    seeds: range = range(4242, 4254), touching_pairs: int = 3, touching_groups: int = 6
) -> dict[str, Any]:
    """Counting accuracy at default settings on fixed synthetic trays with touching groups.

    Twelve 5 MP trays of 60 specimens (seeds 4242-4253), each with three touching pairs
    and one group of every `synthetic.GROUP_KINDS` (triplet, chain of 3-4, small on large,
    pale on pale, overlapping pair, deep-sutured planktic): the figures of issue 16.
    """
    from napari_foram.detect import detect
    from napari_foram.synthetic import render_tray

    total: dict[str, int] = {}
    for seed in seeds:
        tray = render_tray(
            seed, n_specimens=60, touching_pairs=touching_pairs, touching_groups=touching_groups
        )
        det = detect(tray.image, crops=False, pixel_size_um=tray.pixel_size_um)
        for k, v in score_counting(tray, det).items():
            total[k] = total.get(k, 0) + v
    truth = max(total["truth"], 1)
    return {
        "count_error_pct": round(100.0 * (total["found"] - total["truth"]) / truth, 2),
        "count_false_pct": round(100.0 * total["false"] / max(total["found"], 1), 2),
        "count_merged_pct": round(100.0 * total["merged"] / truth, 2),
        "planktic_cut_pct": round(100.0 * total["planktic_cut"] / max(total["planktic"], 1), 2),
        "count_trays": len(seeds),
        "count_true_specimens": total["truth"],
    }


#: Renderer seeds of the held-out crops the precision paths are compared on: disjoint
#: from the demo model's training trays and from the precision calibration's crops.
HELD_OUT_CROP_SEED = 9_100_000


def bench_classification(device: str, quick: bool, precision: str = "auto") -> dict[str, Any]:
    """The classifier's speed per compute path, and each path's agreement with fp32.

    The model is the demo model (ImageNet backbone when its weights are on this machine;
    trained at first use), or with ``quick`` a random-weights model (same speed, no
    training). Every path runs the full predictor (MC dropout N = 100) on the same
    held-out synthetic crops, batch by batch, the paths interleaved with the order
    rotating, so load from other jobs hits them alike; speeds are medians over batches.
    Agreement is against fp32 on the MC mean probabilities: top-1 share and mean/max
    absolute difference. "auto" is what `precision` resolves to here (the cached
    per-machine decision of `napari_foram.classify.precision`, measured at first use).
    """
    import torch
    import torchvision

    from napari_foram.classify.checkpoint import ModelInfo, load_checkpoint
    from napari_foram.classify.model import build_model
    from napari_foram.classify.precision import PATHS, decide_precision, int8_available
    from napari_foram.classify.predict import Predictor, fp32_reference, resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if quick:
        model = build_model(4, backbone_weights="none")
        info = ModelInfo.for_model(model, ["a", "b", "c", "d"])
    else:
        from napari_foram.classify.demo_model import demo_checkpoint

        model, info = load_checkpoint(demo_checkpoint(), device="cpu")
    choice = decide_precision(model, info, dev, precision, reference=fp32_reference)
    paths = [p for p in PATHS if not (p == "int8" and (cuda or not int8_available()))]
    if quick:  # a smoke run: the reference and the chosen path only
        paths = [p for p in paths if p in ("fp32", choice.path)]
    predictors = {p: Predictor(model, info, device=dev, precision=p) for p in paths}
    auto = predictors[choice.path]
    # A GPU needs thousands of crops (batches of 256+) to show its throughput; a CPU a
    # few. 208 crops on a CPU: one top-1 disagreement moves the agreement by 0.5 %.
    batch = auto.batch_size if cuda else 16
    n_crops = (512 if quick else 4096) if cuda else (8 if quick else 208)
    crops = synthetic_crops(n_crops, np.random.default_rng(HELD_OUT_CROP_SEED), distinct=n_crops)

    bare = torchvision.models.vgg16(weights=None).features.eval().to(dev)
    bare_nchw = torchvision.models.vgg16(weights=None).features.eval().to(dev)
    bare = bare.to(memory_format=torch.channels_last)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def bare_pass(chunk: np.ndarray, layout: str) -> None:
        x = torch.from_numpy(chunk).to(dev).permute(0, 3, 1, 2).float().div(255)
        net = bare_nchw if layout == "nchw" else bare
        if layout != "nchw":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            net(x)
        sync()

    # Warm-up at the timed batch size: oneDNN builds its kernels per input shape, so the
    # first call at a new batch size is slow and must not be timed.
    warm = crops[:batch]
    for predictor in predictors.values():
        predictor.predict(warm, mc_samples=100)
    auto.predict(warm, mc_samples=1)
    bare_pass(warm, "cl")
    bare_pass(warm, "nchw")
    variants = [*paths, "auto_deterministic", "bare", "bare_nchw"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    at: dict[tuple[str, int], float] = {}  # (variant, batch) -> seconds per crop
    means: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    # The side figures (deterministic pass, bare VGG16) need only a few batches, spread
    # over the run so that they see the same load as the paths.
    n_batches = -(-n_crops // batch)
    side_every = max(1, n_batches // (2 if quick else 4))
    for b, start in enumerate(range(0, n_crops, batch)):
        chunk = crops[start : start + batch]
        live = [v for v in variants if v in paths or b % side_every == 0]
        k = b % len(live)
        for v in live[k:] + live[:k]:
            t0 = time.perf_counter()
            if v in predictors:
                result = predictors[v].predict(chunk, mc_samples=100)
                sync()
                means[v].append(result.mean_probs)
            elif v == "auto_deterministic":
                auto.predict(chunk, mc_samples=1)
                sync()
            else:
                bare_pass(chunk, "nchw" if v == "bare_nchw" else "cl")
            at[v, b] = (time.perf_counter() - t0) / len(chunk)
            times[v].append(at[v, b])

    def per_s(v: str) -> float:
        return 1.0 / statistics.median(times[v])

    def paired(slow: str, fast: str) -> float:
        """Median over the batches that timed both of time(slow) / time(fast): ratios
        within a batch share its load, which the side variants' few batches need.
        """
        both = [at[slow, b] / at[fast, b] for (v, b) in at if v == slow and (fast, b) in at]
        return statistics.median(both)

    ref = np.concatenate(means["fp32"])
    out: dict[str, Any] = {
        "classify_precision": auto.precision,
        "classify_precision_auto": choice.path,
        "classify_precision_source": choice.source,
        "classify_channels_last": auto.channels_last,
        "classify_batch_crops": n_crops,
        "classify_agreement_crops": int(ref.shape[0]),
        "classify_timing_batch": batch,
        "vgg16_bare_crops_per_s": round(per_s("bare"), 2),
        "vgg16_bare_channels_last_over_nchw_ratio": round(paired("bare_nchw", "bare"), 3),
        "classify_crops_per_s_deterministic": round(per_s("auto_deterministic"), 2),
        "classify_crops_per_s": round(per_s(choice.path), 2),
        "classify_crops_per_s_auto": round(per_s(choice.path), 2),
        "mc_overhead_ratio": round(paired(choice.path, "auto_deterministic"), 3),
        "classify_vs_bare_ratio": round(paired("bare", choice.path), 3),
        "auto_over_fp32_ratio": round(per_s(choice.path) / per_s("fp32"), 3),
    }
    for p in paths:
        mine = np.concatenate(means[p])
        diff = np.abs(mine - ref)
        out[f"classify_crops_per_s_{p}"] = round(per_s(p), 2)
        if p != "fp32":
            out[f"{p}_over_fp32_ratio"] = round(per_s(p) / per_s("fp32"), 3)
            out[f"{p}_top1_agreement"] = round(float(np.mean(mine.argmax(1) == ref.argmax(1))), 4)
            out[f"{p}_mean_abs_prob_diff"] = round(float(diff.mean()), 5)
            out[f"{p}_max_abs_prob_diff"] = round(float(diff.max()), 4)
    for key in ("top1_agreement", "mean_abs_prob_diff", "max_abs_prob_diff"):
        name = f"{choice.path}_{key}"
        out[f"auto_{key}"] = out.get(name, 0.0 if "diff" in key else 1.0)
    if choice.figures:
        out["classify_precision_calibration"] = choice.describe()
    return out


def synthetic_crops(n: int, rng: np.random.Generator, distinct: int = 64) -> np.ndarray:
    """N crops of the four synthetic classes (cycled), for timing and precision checks;
    up to `distinct` different ones (then repeated).

    Real-looking crops rather than noise, so precision agreement is measured on inputs
    like those the classifier sees.
    """
    from napari_foram.synthetic import CLASSES, render_crop

    count = min(n, distinct)
    distinct_crops = [
        render_crop(CLASSES[i % 4], int(rng.integers(1 << 30))) for i in range(count)
    ]
    return np.stack([distinct_crops[i % count] for i in range(n)])


def resident_mb() -> float:
    """The resident memory of this process now, in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_store(n: int = 10_000) -> dict[str, float]:
    """Appending specimens with 224 px crops, in batches of 50, to a fresh store.

    Throughput over the whole run, and resident memory after the first 1,000 specimens
    and at the end: a store that held rows or crops in memory would grow ~150 kB per
    specimen (1.5 GB over 10,000).
    """
    from napari_foram.tally.store import SampleRecord, SpecimenBatch, TallyStore

    classes = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
    rng = np.random.default_rng(1)
    batch_n = 50
    crops = synthetic_crops(batch_n, rng)  # compress like real crops, unlike noise
    probs = rng.dirichlet(np.ones(4), size=batch_n).astype(np.float32)

    def batch(i: int) -> SpecimenBatch:
        return SpecimenBatch(
            frame_index=np.full(batch_n, i),
            stage_x_um=rng.random(batch_n) * 1e4,
            stage_y_um=rng.random(batch_n) * 1e4,
            centroid_y=rng.random(batch_n) * 900,
            centroid_x=rng.random(batch_n) * 1200,
            bbox=np.tile([10, 10, 90, 90], (batch_n, 1)),
            area_px=np.full(batch_n, 3000),
            class_index=probs.argmax(axis=1),
            mean_probs=probs,
            variance=np.zeros_like(probs),
            entropy=np.zeros(batch_n),
            mutual_information=np.zeros(batch_n),
            vote_fraction=np.ones(batch_n),
            crops=crops,
        )

    with tempfile.TemporaryDirectory() as tmp:
        store = TallyStore.create(Path(tmp) / "bench.zarr", classes=classes)
        store.add_sample(SampleRecord(sample_id="BENCH"))
        rss_first = rss_start = resident_mb()
        t0 = time.perf_counter()
        for i in range(n // batch_n):
            store.append_specimens("BENCH", batch(i))
            if (i + 1) * batch_n == min(1000, n):
                rss_first = resident_mb()
        elapsed = time.perf_counter() - t0
        rss_end = resident_mb()
        store.close()
    return {
        "store_specimens_per_s": round(n / elapsed, 1),
        "store_specimens": n,
        "store_rss_mb_start": round(rss_start, 1),
        "store_rss_mb_after_1000": round(rss_first, 1),
        "store_rss_mb_end": round(rss_end, 1),
        "store_rss_growth_ratio": round(rss_end / rss_first, 3),
    }


def bench_batch(
    device: str = "auto", quick: bool = False, precision: str = "auto"
) -> dict[str, Any]:
    """Batch folders: images per second through `run_batch` with 1 and 2 Dask workers.

    A folder of synthetic trays (8 of 486 x 648 px with 6 specimens; ``quick``: 2 of
    400 x 500 px with 2) is counted into a fresh store, one file per task, with a
    random-weights model (same cost as a trained one). Each worker loads its predictor
    before the clock starts, so the figures are steady-state throughput, not cluster
    start-up. The full run uses worker processes, each with its share of the cores for
    torch; ``quick`` uses threads (one shared predictor) to stay a smoke run.
    """
    import logging

    import imageio.v3 as iio
    from distributed import Client, LocalCluster

    from napari_foram.batch import BatchConfig, ModelRef, path_sha256, run_batch, warm_up
    from napari_foram.classify.checkpoint import ModelInfo, save_checkpoint
    from napari_foram.classify.model import build_model
    from napari_foram.synthetic import CLASSES, render_tray

    n_images, shape, n_specimens = (2, (400, 500), 2) if quick else (8, (486, 648), 6)
    mc = 1 if quick else 30
    result: dict[str, Any] = {
        "batch_images": n_images,
        "batch_image_shape": list(shape),
        "batch_specimens_per_image": n_specimens,
        "batch_mc_samples": mc,
        "batch_worker_processes": not quick,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(len(CLASSES), backbone_weights="none", seed=0)
        checkpoint = root / "model.safetensors"
        save_checkpoint(checkpoint, model, ModelInfo.for_model(model, CLASSES))
        ref = ModelRef(str(checkpoint.resolve()), path_sha256(checkpoint))
        folder = root / "trays"
        (folder / "S1").mkdir(parents=True)
        for i in range(n_images):
            tray = render_tray(
                i,
                shape=shape,
                n_specimens=n_specimens,
                border=False,
                touching_pairs=0,
                clipped=False,
            )
            iio.imwrite(folder / "S1" / f"tray{i}.png", tray.image)
        for workers in (1, 2):
            threads = None if quick else max(1, (os.cpu_count() or 1) // workers)
            with (
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=not quick,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                ) as cluster,
                Client(cluster) as client,
            ):
                client.run(warm_up, ref, device, threads, precision)
                config = BatchConfig(
                    folder=folder,
                    store=root / f"workers{workers}.zarr",
                    model=checkpoint,
                    mc_samples=mc,
                    device=device,
                    files_per_task=1,  # eight tasks: both workers busy to the end
                    precision=precision,
                )
                t0 = time.perf_counter()
                report = run_batch(config, client=client)
                elapsed = time.perf_counter() - t0
            if report.count("processed") != n_images:
                raise RuntimeError(f"batch benchmark: {report.summary_line()}")
            key = "batch_images_per_s_1_worker" if workers == 1 else "batch_images_per_s_2_workers"
            result[key] = round(n_images / elapsed, 3)
    return result


def _random_predictor(device: str, precision: str = "auto") -> Any:
    """A VGG16 with the study's head and random weights: the timing of the real thing."""
    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.model import build_model
    from napari_foram.classify.predict import Predictor
    from napari_foram.synthetic import CLASSES

    model = build_model(len(CLASSES), backbone_weights="none", seed=0)
    # The path is passed in (the one chosen for the real model): "auto" would measure
    # this random head, whose near-uniform outputs no fast path can match top-1.
    return Predictor(
        model, ModelInfo.for_model(model, CLASSES), device=device, precision=precision
    )


def bench_pipeline(device: str, quick: bool, precision: str = "auto") -> dict[str, Any]:
    """A simulated 5 MP camera through the whole pipeline, MC dropout N = 100.

    The tray is a row of `fields` camera fields without overlap, each with
    `specimens_per_field` specimens, so every frame brings new specimens; the scan runs
    through `CountingSession.scan` (MDA, queue, worker, detection, de-duplication,
    classification, Zarr store).
    """
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.synthetic import CLASSES, render_tray
    from napari_foram.tally.store import SampleRecord, TallyStore

    predictor = _random_predictor(device, precision)
    cuda = predictor.device.type == "cuda"
    fields = 2 if quick else (8 if cuda else 3)
    per_field = 100 if cuda else (3 if quick else 20)
    camera = (1944, 2592)
    world = render_tray(
        11,
        shape=(camera[0], camera[1] * fields),
        n_specimens=per_field * fields,
        clipped=False,
        touching_pairs=0,
        border=False,
    )
    tray = SimulatedMicroscopeRig(world, camera_shape=camera, seed=1, noise=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = TallyStore.create(Path(tmp) / "bench.zarr", classes=list(CLASSES))
        store.add_sample(SampleRecord("BENCH"))
        pipeline = CountingPipeline(predictor, store=store, sample_id="BENCH", mc_samples=100)
        report = CountingSession(pipeline).scan(tray.core, tray.grid_sequence(1, fields, 0.0))
        store.close()
    if report.error is not None:
        raise RuntimeError(report.error)
    counted = pipeline.specimens_counted
    return {
        "pipeline_frames_per_s": round(report.frames_processed / report.seconds, 3),
        "pipeline_s_per_new_specimen": round(report.seconds / max(counted, 1), 4),
        "pipeline_new_specimens_per_frame": round(counted / max(report.frames_processed, 1), 1),
        "pipeline_frame_shape": list(camera),
        "pipeline_mc_samples": 100,
    }


def bench_soak(n_frames: int = 10_000, precision: str = "auto") -> dict[str, Any]:
    """Scan mode for `n_frames` simulated frames: memory and frames dropped.

    Repeated 10 x 10 scans of one small simulated tray (320 x 240 camera): the first
    pass counts and classifies its specimens, later passes find them all known, which is
    the steady state of a long session. Resident memory is sampled after the first
    1,000 frames and at the end.
    """
    from napari_foram.demo_scene import DemoScan, SimulatedMicroscopeRig, make_demo_world
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.synthetic import CLASSES
    from napari_foram.tally.store import SampleRecord, TallyStore

    plan = DemoScan(
        rows=10,
        cols=10,
        camera_shape=(240, 320),
        overlap_fraction=0.1,
        specimens=40,
        touching_pairs=0,
    )
    world = make_demo_world(3, plan)
    tray = SimulatedMicroscopeRig(world, camera_shape=plan.camera_shape, seed=2)
    tray.core.setExposure(1.0)  # the soak tests the pipeline, not the camera's exposure
    predictor = _random_predictor("cpu", precision)
    per_scan = plan.rows * plan.cols
    passes = max(1, n_frames // per_scan)
    acquired = processed = dropped = 0
    rss_first = 0.0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = TallyStore.create(Path(tmp) / "soak.zarr", classes=list(CLASSES))
        store.add_sample(SampleRecord("SOAK"))
        pipeline = CountingPipeline(predictor, store=store, sample_id="SOAK", mc_samples=1)
        session = CountingSession(pipeline)
        sequence = tray.grid_sequence(plan.rows, plan.cols, plan.overlap_fraction)
        for _ in range(passes):
            report = session.scan(tray.core, sequence)
            if report.error is not None:
                raise RuntimeError(report.error)
            acquired += report.frames_acquired
            processed += report.frames_processed
            dropped += report.frames_dropped
            if not rss_first and acquired >= min(1000, passes * per_scan):
                rss_first = resident_mb()
        store.close()
    elapsed = time.perf_counter() - t0
    rss_end = resident_mb()
    return {
        "soak_frames": acquired,
        "soak_frames_processed": processed,
        "soak_frames_dropped": dropped,
        "soak_specimens_counted": pipeline.specimens_counted,
        "soak_frames_per_s": round(processed / elapsed, 1),
        "soak_rss_mb_after_1000": round(rss_first, 1),
        "soak_rss_mb_end": round(rss_end, 1),
        "soak_rss_growth_ratio": round(rss_end / rss_first, 3),
    }


def bench_training(quick: bool = False) -> dict[str, Any]:
    """Phase 1 of the default recipe, end to end: `napari-foram train` on a folder of 400
    synthetic crops (100 per class; ``quick``: 40) written as PNG files -- reading, VGG16
    features, cross-validation, calibration, learning curve, density, saving. On ImageNet
    weights when they are found, else a random backbone (same cost). The issue's budget:
    400 images in <= 3 min on 2 CPU cores.
    """
    import tempfile

    import imageio.v3 as iio

    from napari_foram.classify.backbone import locate_imagenet_weights
    from napari_foram.synthetic import CLASSES, render_crop
    from napari_foram.training.train import TrainConfig, train_from_folder

    per_class = 10 if quick else 100
    weights = "imagenet" if locate_imagenet_weights() is not None else "none"
    with tempfile.TemporaryDirectory(prefix="napari-foram-bench-train-") as tmp:
        root = Path(tmp) / "data"
        for k, name in enumerate(CLASSES):
            (root / name).mkdir(parents=True)
            for i in range(per_class):
                iio.imwrite(
                    root / name / f"{i:03d}.png", render_crop(name, 9_100_000 + 1000 * k + i)
                )
        t0 = time.perf_counter()
        outcome = train_from_folder(
            root, Path(tmp) / "m.safetensors", TrainConfig(backbone_weights=weights, device="cpu")
        )
        total = time.perf_counter() - t0
    seconds = outcome.best.info.training["seconds"]
    return {
        "train_images": per_class * len(CLASSES),
        "train_backbone": weights,
        "train_phase1_s": round(total, 1),
        "train_features_s": seconds["features"],
        "train_head_and_rest_s": round(total - seconds["features"], 1),
        "train_test_accuracy": outcome.metrics.get("test_accuracy"),
    }


def bench_teaching(n: int = 1000, per_class: int = 10, device: str = "cpu") -> dict[str, Any]:
    """Teaching while counting (issue 25) on a sample of `n` specimens whose pooled
    features the store keeps: label `per_class` per class, then (timed) retrain the head
    and classify every specimen again (`teaching.retrain`: what a label costs before the
    counts show it); then `napari-foram reclassify`'s path with the saved model, per
    specimen, and the same from the crops (no kept features) on a slice, as a ratio.

    The features are the real backbone's (a random-weight VGG16: the speed of the real
    network) of 64 distinct synthetic crops, repeated to `n` specimens.
    """
    from napari_foram.classify.checkpoint import new_classifier, save_checkpoint
    from napari_foram.classify.predict import Predictor
    from napari_foram.reclassify import reclassify_sample
    from napari_foram.synthetic import CLASSES
    from napari_foram.tally.stats import REVIEW_RELABELLED
    from napari_foram.tally.store import SampleRecord, SpecimenBatch, TallyStore
    from napari_foram.teaching import retrain

    rng = np.random.default_rng(7)
    distinct = 64
    crops = synthetic_crops(distinct, rng, distinct=distinct)
    true = np.arange(distinct) % 4  # synthetic_crops cycles the classes
    with tempfile.TemporaryDirectory() as tmp:
        model, info = new_classifier(CLASSES, backbone_weights="none", seed=0)
        base_path = Path(tmp) / "base.safetensors"
        save_checkpoint(base_path, model, info)
        base = Predictor.from_checkpoint(base_path, device=device, precision="fp32")
        counted = base.predict(crops, mc_samples=1, keep_features=True)
        assert counted.kept_features is not None
        pick = np.arange(n) % distinct
        store_path = Path(tmp) / "bench.zarr"
        with TallyStore.create(store_path, classes=CLASSES) as store:
            store.add_sample(SampleRecord("S"))
            store.set_provenance("S", {"model_sha256": base.info.sha256})
            for start in range(0, n, 100):
                rows = pick[start : start + 100]
                k = len(rows)
                store.append_specimens(
                    "S",
                    SpecimenBatch(
                        frame_index=np.full(k, start // 100),
                        centroid_y=np.full(k, 112.0),
                        centroid_x=np.full(k, 112.0),
                        bbox=np.tile([0, 0, 224, 224], (k, 1)),
                        area_px=np.full(k, 20000),
                        mean_probs=counted.mean_probs[rows],
                        crops=crops[rows],
                        features=counted.kept_features[rows],
                    ),
                    feature_space=base.feature_space,
                )
            for c in range(4):
                rows = np.flatnonzero(true[pick] == c)[:per_class]
                store.set_review("S", rows, status=REVIEW_RELABELLED, reviewed_class=c)
            t0 = time.perf_counter()
            result = retrain(store, base, out_dir=Path(tmp) / "models", mc_samples=30)
            teach_s = time.perf_counter() - t0
        taught = Predictor.from_checkpoint(result.path, device=device, precision="fp32")
        with TallyStore.open(store_path, mode="a") as store:
            t0 = time.perf_counter()
            reclassify_sample(store, "S", taught, mc_samples=30)
            kept_s = (time.perf_counter() - t0) / n
        # From the crops (a store that keeps no features): what the crops path does per
        # chunk, on one chunk of specimens.
        m = min(n, 64)
        with TallyStore.open(store_path) as store:
            t0 = time.perf_counter()
            chunk = store.read_crops("S", np.arange(m))
            taught.predict(chunk, mc_samples=1, keep_features=True)
            crops_s = (time.perf_counter() - t0) / m
    return {
        "teach_recount_s_1000": round(teach_s * 1000 / n, 2),
        "teach_fit_s": round(result.taught.seconds, 2),
        "reclassify_s_per_specimen": round(kept_s, 5),
        "reclassify_from_crops_s_per_specimen": round(crops_s, 4),
        "reclassify_crops_over_kept_ratio": round(crops_s / kept_s, 1),
    }


def run_benchmarks(
    *,
    device: str = "auto",
    quick: bool = False,
    progress: bool | ProgressCallback = False,
    soak_frames: int = 0,
    precision: str = "auto",
) -> dict[str, Any]:
    """Every figure, in one dict. A part that fails reports its error under its name.

    `soak_frames` > 0 adds the soak run (`bench_soak`; 10,000 frames take ~4 min here).
    `precision` is the classifier's compute path; "auto" resolves it once, for the
    classification part's model, and the later parts use that path.
    """
    from napari_foram._progress import progress_callback

    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("detection", lambda: bench_detection(repeats=3 if quick else 7)),
        ("counting", lambda: bench_counting(range(4242, 4246) if quick else range(4242, 4254))),
        ("store", lambda: bench_store(1000 if quick else 10_000)),
        ("classification", lambda: bench_classification(device, quick, precision)),
        ("batch", lambda: bench_batch(device, quick, chosen())),
        ("pipeline", lambda: bench_pipeline(device, quick, chosen())),
        ("training", lambda: bench_training(quick)),
        ("teaching", lambda: bench_teaching(200 if quick else 1000)),
    ]
    if soak_frames > 0:
        parts.append(("soak", lambda: bench_soak(soak_frames, chosen())))
    result: dict[str, Any] = machine_info(device)

    def chosen() -> str:
        """The path the classification part resolved (as asked if it failed)."""
        return str(result.get("classify_precision_auto", precision))

    result["quick"] = quick
    with progress_callback("benchmarking", progress is True) as bar:
        cb = progress if callable(progress) else bar
        for i, (name, fn) in enumerate(parts):
            cb(i, len(parts), name)
            try:
                result.update(fn())
            except Exception as exc:  # report, do not hide: the JSON says what broke
                result[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
        cb(len(parts), len(parts), "done")
    return result
