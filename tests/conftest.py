"""Shared fixtures."""

import pytest


@pytest.fixture
def windowed_plans(monkeypatch):
    """Render plans as on large images: stamps are never widened to their image
    (scene.FULL_AREA_FRACTION) and wide units may use coarse grids on images of any size
    (scene.LATTICE_MIN_PIXELS), so that small test scenes exercise the pair-block and
    coarse-grid machinery that large images use."""
    from tractor_prob import scene

    monkeypatch.setattr(scene, "FULL_AREA_FRACTION", 2.0)
    monkeypatch.setattr(scene, "LATTICE_MIN_PIXELS", 0)
