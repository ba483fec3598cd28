"""The seams: another detector and another backbone plug in as one class each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from napari_foram.classify import architecture
from napari_foram.classify.architecture import VGG16, ConvBackbone, backbone_named
from napari_foram.classify.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from napari_foram.classify.density import FeatureDensity, columns_for, pooling_for
from napari_foram.classify.model import FORAMNet, feature_dim
from napari_foram.detect import DetectionParams, detect
from napari_foram.frames import Frame
from napari_foram.pipeline import CountingPipeline, Detector, StudyDetector
from napari_foram.synthetic import render_tray


@dataclass(frozen=True)
class BrightestOnlyDetector:
    """A real alternative detector: the study's, then only the `keep` largest objects
    (e.g. a user who counts the large fraction).
    """

    keep: int = 3

    def __call__(self, frame: Frame):
        det = detect(frame.image, DetectionParams(), pixel_size_um=frame.pixel_size_um)
        order = np.argsort(-det.area_px)[: self.keep]
        return det.take(np.sort(order))

    def to_dict(self):
        return {"kind": "largest", "keep": self.keep}


def test_the_pipeline_counts_what_its_detector_finds(random_predictor, tmp_path):
    tray = render_tray(seed=3, n_specimens=12, shape=(600, 800))
    frame = Frame(image=tray.image, index=0)
    assert isinstance(BrightestOnlyDetector(), Detector)
    assert isinstance(StudyDetector(), Detector)
    default = CountingPipeline(random_predictor).process(frame)
    largest = CountingPipeline(random_predictor, detector=BrightestOnlyDetector(2)).process(frame)
    assert len(default.detections.area_px) > 2
    assert len(largest.detections.area_px) == 2
    assert sorted(largest.detections.area_px) == sorted(default.detections.area_px)[-2:]
    assert len(largest.new_rows) == 2
    pipe = CountingPipeline(random_predictor, detector=BrightestOnlyDetector(2))
    assert pipe.provenance()["detector"] == {"kind": "largest", "keep": 2}


@dataclass(frozen=True)
class TinyBackbone:
    """A second backbone: two conv blocks down to a 7 x 7 grid of 16 channels."""

    name: str = "tiny-test-cnn"
    output_shape: tuple[int, int, int] = (16, 7, 7)
    taps: tuple[int, ...] = (1, 4)
    tap_channels: tuple[int, ...] = (8, 16)

    def conv_blocks(self) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(7),
        )

    def conv_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.conv_blocks().state_dict().items()}


def test_vgg16_is_a_backbone_and_names_resolve():
    assert isinstance(VGG16, ConvBackbone)
    assert backbone_named("vgg16") is VGG16 and backbone_named("") is VGG16
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet'.*vgg16"):
        backbone_named("resnet")
    assert feature_dim("flat") == 25088 and feature_dim("pooled") == 2048


@pytest.mark.parametrize("layout", ["flat", "pooled"])
def test_a_second_backbone_is_one_class(layout, tmp_path, monkeypatch):
    tiny = TinyBackbone()
    assert isinstance(tiny, ConvBackbone)
    monkeypatch.setitem(architecture.BACKBONES, tiny.name, tiny)
    model = FORAMNet(3, hidden_units=(), feature_layout=layout, backbone=tiny).eval()
    x = torch.rand(6, 3, 224, 224)
    features = model.features(x)
    assert features.shape == (6, {"flat": 16 * 49, "pooled": 2 * (8 + 16)}[layout])
    assert model(x).shape == (6, 3)
    # The density follows the backbone's grid and taps.
    density = FeatureDensity.fit(
        features,
        np.array([0, 1, 2, 0, 1, 2]),
        3,
        pooling=pooling_for(layout, tiny),
        columns=columns_for(layout, tiny),
    )
    assert np.isfinite(density.score(features)).all()
    # A checkpoint records the backbone's name and is rebuilt on it.
    info = ModelInfo.for_model(model, ["a", "b", "c"], backbone_weights="none", backbone_seed=0)
    assert info.backbone == tiny.name
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, model, info)
    loaded, loaded_info = load_checkpoint(path)
    assert loaded.backbone is tiny and loaded_info.backbone == tiny.name
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
