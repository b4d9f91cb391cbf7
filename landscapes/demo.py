"""The whole pipeline on embedded data, for a fresh machine: train a ResNet-8 and its plain twin
for a few seconds on seeded synthetic images, scan both filter-normalized 2-D loss surfaces, plot.

``python -m landscapes.demo [--out results/demo] [--grid 21]`` -- nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from models.cli import fail
from models.train import TrainConfig, train

from .scan import ScanConfig, scan



def run_demo(out: Path, grid: int = 21, epochs: int = 4, device: str = "auto", progress: bool = True,
             images: int = 1024) -> list[Path]:
    """Train resnet8 and resnet8_noshort on ``images`` synthetic 16x16 images (seeded class
    templates + noise), scan each on a grid x grid plane over half of them; returns the surfaces."""
    data = {"image_size": 16, "size": images}
    surfaces = []
    for noshort in (False, True):
        name = "resnet8_noshort" if noshort else "resnet8"
        run = out / "runs" / name
        history = train(TrainConfig(model="resnet8", noshort=noshort, dataset="synthetic", data_kwargs=data,
                                    epochs=epochs, batch_size=64, lr=0.05, device=device, out=str(run),
                                    progress=progress))
        result = scan(ScanConfig(model="resnet8", noshort=noshort, checkpoint=str(run / "final.pt"),
                                 dataset="synthetic", data_kwargs=data, samples=images // 2,
                                 x=f"-1:1:{grid}", y=f"-1:1:{grid}", device=device,
                                 out=str(out / f"{name}_synthetic_{grid}x{grid}.h5"), plot=True,
                                 progress=progress))
        print(f"{name}: test error {history[-1]['test_error']:.1f}%, {result.points_computed} points "
              f"scanned in {result.seconds:.1f} s -> {result.path}")
        for plot in result.plots:
            print(f"  {plot}")
        surfaces.append(result.path)
    return surfaces


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m landscapes.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/demo"))
    p.add_argument("--grid", type=int, default=21, help="points per axis")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.grid < 2:
        p.error("--grid needs at least 2 points per axis")
    start = time.perf_counter()
    try:
        run_demo(args.out, args.grid, args.epochs, args.device, args.progress)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; open the .html files in a browser")


if __name__ == "__main__":
    main()
