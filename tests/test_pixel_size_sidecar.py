"""The Micro-Manager metadata file beside an image: read only when it is a sane file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from napari_foram.pixelsize import read_pixel_size


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "mm.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    return path


def test_sidecar_gives_the_pixel_size(image):
    image.with_name("mm_metadata.txt").write_text('{"Summary": {"PixelSizeUm": 1.25}}')
    assert read_pixel_size(image) == pytest.approx(1.25)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_like_the_sidecar_is_never_opened(image):
    os.mkfifo(image.with_name("mm_metadata.txt"))
    # Would block forever if opened for reading: no writer ever comes.
    assert read_pixel_size(image) is None


def test_a_huge_sidecar_is_not_read(image):
    big = image.with_name("mm_metadata.txt")
    with big.open("wb") as fh:
        fh.write(b'{"Summary": {"PixelSizeUm": 1.25}, "pad": "')
        fh.truncate(17 * 1024 * 1024)  # sparse: larger than any real metadata file
    assert read_pixel_size(image) is None
