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


@pytest.fixture
def assert_pngs():
    """Checker: ``check(folder, names, min_bytes=1000)`` asserts each file was written and is
    a PNG image of at least ``min_bytes`` (a figure, not an empty canvas)."""

    def check(folder, names, min_bytes=1000):
        for n in names:
            p = folder / n
            assert p.is_file(), f"{p} was not written"
            assert p.stat().st_size > min_bytes, f"{p} is (nearly) empty"
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG file"

    return check
