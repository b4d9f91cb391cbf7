"""The README's first command: the embedded demo trains, scans and plots end to end."""
import numpy as np

from landscapes.demo import run_demo
from landscapes.surface import read_surface


def test_demo_pipeline_writes_surfaces_with_minimum_near_center(tmp_path):
    paths = run_demo(tmp_path, grid=5, epochs=1, device="cpu", progress=False, images=256)
    assert [p.name for p in paths] == ["resnet8_synthetic_5x5.h5", "resnet8_noshort_synthetic_5x5.h5"]
    for path in paths:
        surface = read_surface(path)
        loss = surface.values["train_loss"]
        assert loss.shape == (5, 5) and np.isfinite(loss).all()
        # the trained model sits at the center; a unit filter-normalized step costs loss
        assert loss[2, 2] < loss[0, 0] and loss[2, 2] < loss[4, 4]
        assert list(path.parent.glob(f"{path.stem}*.png"))
