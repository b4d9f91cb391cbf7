"""The README's first command: the embedded demo trains, scans and draws one comparison end to end."""
import numpy as np

from landscapes.demo import DemoConfig, run_demo
from landscapes.surface import read_surface


def test_demo_pipeline_writes_surfaces_and_one_comparison(tmp_path):
    result = run_demo(tmp_path, DemoConfig(depth=8, grid=5, epochs=1, images=256, samples=128, device="cpu",
                                           progress=False))
    assert [p.name for p in result.surfaces] == ["resnet8_synthetic_5x5.h5", "resnet8_noshort_synthetic_5x5.h5"]
    for path in result.surfaces:
        surface = read_surface(path)
        loss = surface.values["train_loss"]
        assert loss.shape == (5, 5) and np.isfinite(loss).all()
        # the trained model sits at the center; a unit filter-normalized step costs loss
        assert loss[2, 2] < loss[0, 0] and loss[2, 2] < loss[4, 4]
    assert result.page.name == "resnet8_vs_noshort.html" and (tmp_path / "plotly.min.js").is_file()
    assert [p.name for p in result.pngs] == ["resnet8_vs_noshort_contourf.png", "resnet8_vs_noshort_surface.png"]
    assert all(p.stat().st_size > 10_000 for p in result.pngs)
    assert sorted(result.errors) == ["ResNet-8", "plain-8 (no skips)"]
