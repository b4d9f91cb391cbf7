"""Plots read surface files the right way round (non-square grids in the reference layout), survive
NaN/inf everywhere (every kind, HTML, VTP), and use the paper's contour levels."""
from __future__ import annotations

import json
import math
import re

import h5py
import matplotlib.axes
import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.image import imread

from landscapes.pages import OVER_CAP_COLOR
from landscapes.plot import (PlotConfig, available_values, default_value, levels_for, main, plot_2d, plot_compare,
                             plot_surface_file, shared_scale, surface_grid, value_array, write_vtp)
from landscapes.surface import Surface, read_surface, write_surface
from landscapes.trajectory import Projection, write_projection

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def reference_file(path, x, y, f):
    """A surface as tomgoldstein/loss-landscape writes it: datasets declared (nx, ny) but filled in
    np.meshgrid(x, y) ravel order; -1 marks points never computed."""
    X, Y = np.meshgrid(x, y)
    flat = f(X, Y).ravel()
    flat[3] = -1  # an unfilled point
    with h5py.File(path, "w") as h:
        h["xcoordinates"] = x
        h["ycoordinates"] = y
        h["train_loss"] = flat.reshape(len(x), len(y))
        h["train_acc"] = (100 - flat).reshape(len(x), len(y))
        h["dir_file"] = "dirs.h5"
    return path


def test_reference_layout_non_square_grid_orientation(tmp_path, monkeypatch):
    x = np.linspace(-1, 1, 5)
    y = np.array([-0.5, 0.0, 0.5])  # nx=5 != ny=3: a transposition would show
    path = reference_file(tmp_path / "ref.h5", x, y, lambda X, Y: 2 + X + 10 * Y)
    s = read_surface(path)
    X, Y, Z = surface_grid(s, "train_loss")
    assert X.shape == Y.shape == Z.shape == (3, 5)
    for iy in range(3):
        for ix in range(5):
            assert X[iy, ix] == x[ix] and Y[iy, ix] == y[iy]
            if (iy, ix) != (0, 3):
                assert Z[iy, ix] == pytest.approx(2 + x[ix] + 10 * y[iy])
    assert np.isnan(Z[0, 3])  # the reference's -1 became a gap

    seen = {}
    original = matplotlib.axes.Axes.contour

    def spy(self, *args, **kwargs):
        seen.setdefault("args", args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "contour", spy)
    plot_2d(s, "contour", PlotConfig(vmin=0, vmax=10, vlevel=1))
    cx, cy, cz = seen["args"][:3]
    np.testing.assert_array_equal(cx, X)
    np.testing.assert_array_equal(cy, Y)
    np.testing.assert_array_equal(np.ma.filled(cz, np.nan), Z)


def nasty_surface(path, ndim=2):
    """Finite values with NaN holes, +inf (diverged), -inf, and a value that is NaN everywhere."""
    x = np.linspace(-1, 1, 9)
    y = np.linspace(-1, 0.5, 7)
    X, Y = np.meshgrid(x, y)
    loss = 0.05 + X ** 2 + 2 * Y ** 2
    loss[2, 3] = np.nan
    loss[4, 6] = np.inf
    loss[5, 1] = -np.inf
    acc = 100 * np.exp(-loss)
    values = {"train_loss": loss, "train_acc": acc, "test_loss": np.full_like(loss, np.nan), "test_acc": acc}
    if ndim == 1:
        values = {k: v[3] for k, v in values.items()}
        y = None
    return write_surface(path, x, y, values, attrs={"model": "resnet8", "dataset": "synthetic", "split": "train"})


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def assert_html(path, self_contained=False):
    """A page that opens offline: plotly.js embedded, or (the default) one plotly.min.js beside it."""
    text = path.read_text()
    head = text.lstrip().lower()[:100]
    assert head.startswith(("<!doctype html", "<html")) and text.rstrip().endswith("</html>")
    assert not re.search(r"<script[^>]+src=[\"']https?:", text)  # no CDN
    assert "Plotly.newPlot" in text
    if self_contained:
        assert len(text) > 1_000_000
    else:
        assert len(text) < 300_000 and '<script charset="utf-8" src="plotly.min.js">' in text
        assert (path.parent / "plotly.min.js").stat().st_size > 1_000_000


def figure_json(path):
    """(data, layout) of the page's figure, as Plotly.newPlot receives them."""
    text = path.read_text()
    start = text.index("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    pos = text.index(",", start) + 1  # after the div id
    data, end = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
    pos = text.index(",", end) + 1
    layout, _ = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
    return data, layout


@pytest.mark.parametrize("log", [False, True])
def test_every_kind_survives_nan_and_inf(tmp_path, log):
    path = nasty_surface(tmp_path / "s.h5")
    for values in [None, ("train_loss", "test_loss"), ("test_loss",), ("train_err",)]:
        out = plot_surface_file(path, PlotConfig(values=values, log=log), kinds=["all"], html=True, vtp=True,
                                out=tmp_path / f"out_{log}_{values}")
        kinds = sorted(p.suffix for p in out)
        assert kinds == [".html", ".png", ".png", ".png", ".png", ".vtp"]
        for p in out:
            assert p.is_file()
            if p.suffix == ".png":
                assert_png(p)
            elif p.suffix == ".html":
                assert_html(p)


def test_one_dimensional_survives_nan_and_inf(tmp_path):
    path = nasty_surface(tmp_path / "s1.h5", ndim=1)
    for log in (False, True):
        out = plot_surface_file(path, PlotConfig(log=log), html=True)
        assert [p.suffix for p in out] == [".png", ".html"]
        assert_png(out[0])
        assert_html(out[1])
        assert "null" in out[1].read_text()  # NaN went into the page as gaps


def test_paper_default_levels_and_norm():
    data = np.array([0.01, 3.0, 50.0])
    levels, norm = levels_for("train_loss", data, PlotConfig(log=False))
    np.testing.assert_allclose(levels, np.arange(0.1, 10, 0.5))
    assert (norm.vmin, norm.vmax) == (0.1, 10)
    levels, _ = levels_for("train_loss", data, PlotConfig(vmin=1, vmax=2, vlevel=0.25))
    np.testing.assert_allclose(levels, [1, 1.25, 1.5, 1.75, 2])
    levels, norm = levels_for("train_loss", data, PlotConfig(log=True))  # log: the data's decades up to the cap
    assert (norm.vmin, norm.vmax) == (0.01, 10)
    np.testing.assert_allclose(np.log10(levels), np.arange(-2, 1.01, 0.25))  # quarter decades
    levels, norm = levels_for("train_loss", data, PlotConfig(log=True, zmax=100))  # a higher cap
    assert norm.vmax == 50 and np.log10(levels[-1]) == pytest.approx(1.5)
    levels, norm = levels_for("train_loss", data, PlotConfig(log=True, vmin=0.1, vmax=10))
    assert (norm.vmin, norm.vmax) == (0.1, 10) and levels[0] == pytest.approx(0.1)
    _, norm = levels_for("train_loss", data, PlotConfig(log=None))  # 3.7 decades: log by default
    assert isinstance(norm, LogNorm)
    _, norm = levels_for("train_loss", np.array([0.5, 3.0]), PlotConfig(log=None))
    assert not isinstance(norm, LogNorm)
    levels, norm = levels_for("train_acc", np.array([20.0, np.nan, 90.0]), PlotConfig())
    assert norm.vmin == 20 and norm.vmax == 90  # non-loss values: the data's finite range


def test_hessian_map_defaults_to_eigenvalue_ratio(tmp_path):
    x, y = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)
    mx = np.full((3, 4), 8.0)
    mn = -np.arange(12.0).reshape(3, 4) / 10
    mn[1, 1] = np.nan
    path = write_surface(tmp_path / "h.h5", x, y, {"max_eig": mx, "min_eig": mn}, attrs={"model": "resnet20"})
    s = read_surface(path)
    assert default_value(s) == "eig_ratio" and "eig_ratio" in available_values(s)
    np.testing.assert_allclose(value_array(s, "eig_ratio"), np.abs(mn / mx))
    out = plot_surface_file(path, kinds=["heat", "contourf"], html=False)
    assert [p.name for p in out] == ["h_eig_ratio_heat.png", "h_eig_ratio_contourf.png"]
    for p in out:
        assert_png(p)


def test_trajectory_overlay_and_pc_labels(tmp_path):
    x, y = np.linspace(-2, 6, 17), np.linspace(-3, 3, 13)
    X, Y = np.meshgrid(x, y)
    surf = write_surface(tmp_path / "pca.h5", x, y, {"train_loss": 0.1 + 0.2 * X ** 2 + Y ** 2})
    proj = Projection(np.array([5.0, 3.0, 1.0, 0.0]), np.array([2.0, -1.0, 0.5, 0.0]), ["a", "b", "c", "d"],
                      np.arange(1, 5), np.zeros(4), np.ones(4))
    traj = write_projection(tmp_path / "traj.h5", proj, {"explained_variance_ratio": np.array([0.8, 0.15])})
    fig = plot_2d(read_surface(surf), "contour", PlotConfig(trajectory=str(traj)),
                  trajectory=__import__("landscapes.trajectory", fromlist=["x"]).read_projection(traj))
    ax = fig.axes[0]
    path_line = [ln for ln in ax.get_lines() if ln.get_label() == "training path"]
    assert len(path_line) == 1
    np.testing.assert_array_equal(path_line[0].get_xdata(), proj.x)
    np.testing.assert_array_equal(path_line[0].get_ydata(), proj.y)
    assert ax.get_xlabel().startswith("1st PC: 80.0") and ax.get_ylabel().startswith("2nd PC: 15.0")
    alone = plot_surface_file(traj, out=tmp_path / "path.png")  # a trajectory file: the path alone
    assert alone == [tmp_path / "path.png"]
    assert_png(alone[0])
    out = plot_surface_file(surf, PlotConfig(trajectory=str(traj)), kinds=["contourf"], html=True)
    assert out[0].name == "pca_train_loss_contourf_path.png"
    assert_png(out[0])
    assert_html(out[1])


def test_vtp_has_one_quad_per_finite_cell(tmp_path):
    s = read_surface(nasty_surface(tmp_path / "s.h5"))
    path = write_vtp(s, tmp_path / "s.vtp")
    text = path.read_text()
    Z = value_array(s, "train_loss")
    ok = np.isfinite(Z)
    cells = int((ok[:-1, :-1] & ok[1:, :-1] & ok[:-1, 1:] & ok[1:, 1:]).sum())
    assert f'NumberOfPolys="{cells}"' in text and f'NumberOfPoints="{Z.size}"' in text
    assert "nan" not in text.lower() and "inf" not in text.lower()


def test_cli_outputs_and_errors(tmp_path, capsys):
    path = nasty_surface(tmp_path / "s.h5")
    main([str(path), "--kind", "heat", "--out", str(tmp_path / "one.png"), "--value", "train_acc"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    main([str(path), "--list"])
    assert "train_err" in capsys.readouterr().out
    for bad, msg in [(["--kind", "1d"], "2-D surface"), (["--value", "nope"], "no value 'nope'"),
                     (["--vmin", "2", "--vmax", "1"], "vmin must be below vmax"),
                     (["--value", "train_loss,train_acc"], "same kind of value"),
                     (["--all", "--out", str(tmp_path / "x.png")], "names one file")]:
        with pytest.raises(SystemExit) as exc:
            main([str(path), *bad])
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.h5")])
    assert "does not exist" in capsys.readouterr().err


def bowl(path, model, scale, lo, nx=9, ny=7):
    """A loss bowl of the given height above its minimum ``lo``, on a non-square grid."""
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny)
    X, Y = np.meshgrid(x, y)
    return write_surface(path, x, y, {"train_loss": lo + scale * (X ** 2 + 4 * Y ** 2)},
                         attrs={"model": model, "dataset": "synthetic", "split": "train"})


def test_comparison_page_shares_one_scale_levels_titles_and_marks_the_cap(tmp_path, capsys):
    a = bowl(tmp_path / "a.h5", "resnet20", 30.0, 0.01)  # 0.01 .. 60: log scale, values above the cap 10
    b = bowl(tmp_path / "b.h5", "resnet20_noshort", 3.0, 1.0)
    page = tmp_path / "pages" / "cmp.html"
    main([str(a), str(b), "--html", "--out", str(page)])
    assert capsys.readouterr().out.split() == [str(page)]
    assert_html(page)
    data, layout = figure_json(page)
    panels = [t for t in data if t.get("meta", {}).get("role") in ("surface", "contour")]
    assert sorted(t["type"] for t in panels) == ["contour", "contour", "surface", "surface"]
    assert {t["coloraxis"] for t in panels} == {"coloraxis"}  # one colour scale for every panel
    surfaces = [read_surface(a), read_surface(b)]
    scale = shared_scale("train_loss", [value_array(s, "train_loss") for s in surfaces], PlotConfig())
    assert scale.log and scale.cap == 10 and scale.hi == 10  # 0.01 .. 10 spans 3 decades: log by default
    ca = layout["coloraxis"]
    assert ca["cmin"] == pytest.approx(math.log10(scale.lo)) and ca["cmax"] > math.log10(10)
    assert ca["colorscale"][-1][1] == OVER_CAP_COLOR  # values above the cap get a colour of their own
    # colour-bar ticks read in loss units, and the top one says "> cap"
    assert ca["colorbar"]["ticktext"][-1] == "> cap 10"
    for val, txt in zip(ca["colorbar"]["tickvals"][:-1], ca["colorbar"]["ticktext"][:-1]):
        assert 10 ** val == pytest.approx(float(txt))
    # one z range for both 3-D panels, axis titles on every panel
    scenes = [layout[k] for k in layout if k.startswith("scene")]
    assert len(scenes) == 2 and all(s["zaxis"]["range"] == scenes[0]["zaxis"]["range"] for s in scenes)
    assert all((s["xaxis"]["title"]["text"], s["yaxis"]["title"]["text"]) == ("α", "β") for s in scenes)
    xy = [k for k in layout if re.fullmatch(r"[xy]axis\d*", k)]
    assert sorted(layout[k]["title"]["text"][0] for k in xy) == ["α", "α", "β", "β"]
    assert sum("scaleanchor" in layout[k] for k in xy) == 2  # contour panels: equal aspect
    # the contour levels are the PNG's: evenly spaced in log10 from the first to the last
    for t in (t for t in panels if t["type"] == "contour"):
        c = t["contours"]
        n = round((c["end"] - c["start"]) / c["size"]) + 1
        np.testing.assert_allclose(10 ** (c["start"] + c["size"] * np.arange(n)), scale.levels)
    png = plot_compare(surfaces, "contourf")
    filled = [c for c in png.axes[0].collections if hasattr(c, "levels")][0]
    np.testing.assert_allclose(filled.levels, scale.levels)
    # values above the cap: a note on the page and "> cap" in the hover
    over = sum(int((value_array(s, "train_loss") > 10).sum()) for s in surfaces)
    note = [n for n in layout["annotations"] if n.get("name") == "cap-note"]
    assert len(note) == 1 and "cap (10)" in note[0]["text"] and f"{over} of {2 * 9 * 7} points" in note[0]["text"]
    assert sum(txt.endswith("(> cap 10)") for t in panels if t["type"] == "contour" for row in t["text"]
               for txt in row) == over
    assert all("%{x:.4g}" in t["hovertemplate"] and "%{y:.4g}" in t["hovertemplate"] for t in panels)
    # the minimum marker names its model; controls switch the scale and move the cap
    mins = [t for t in data if t.get("meta", {}).get("role") == "min"]
    assert [m["name"] for m in mins] == ["grid min: resnet20", "grid min: resnet20_noshort"]
    assert [a["text"] for a in layout["annotations"] if a.get("name") == "min-label"] == \
        ["resnet20 min 0.01", "resnet20_noshort min 1"]
    assert [b["label"] for b in layout["updatemenus"][0]["buttons"]] == ["linear scale", "log scale"]
    assert [s["label"] for s in layout["sliders"][0]["steps"]][-1] == "none"
    assert "10" in [s["label"] for s in layout["sliders"][0]["steps"]]
    # a second page in the folder reuses the one plotly.min.js; --self-contained embeds it
    main([str(a), "--html", "--out", str(tmp_path / "pages" / "a.html")])
    # ... and the one controls script (pages carry only a call with their own data)
    assert sorted(p.name for p in page.parent.iterdir()) == ["a.html", "cmp.html", "landscape-controls.js",
                                                            "plotly.min.js"]
    assert "window.landscapeControls = function" not in page.read_text() and "landscapeControls('" in page.read_text()
    assert page.stat().st_size < 100_000
    alone = tmp_path / "mail" / "a.html"
    main([str(a), "--html", "--self-contained", "--out", str(alone)])
    assert_html(alone, self_contained=True)
    assert not (alone.parent / "plotly.min.js").exists() and not (alone.parent / "landscape-controls.js").exists()
    assert "window.landscapeControls = function" in alone.read_text()  # the controls travel inside the page too


def test_single_surface_page_follows_the_same_rules(tmp_path):
    a = bowl(tmp_path / "a.h5", "resnet8", 1.0, 0.5)  # 0.5 .. 3.5: linear, the paper's levels, no value capped
    out = plot_surface_file(a, html=True, out=tmp_path / "a.html")
    assert out == [tmp_path / "a.html"]
    data, layout = figure_json(out[0])
    contour = [t for t in data if t["type"] == "contour"][0]
    assert (contour["contours"]["start"], contour["contours"]["size"]) == (0.1, 0.5)  # LOSS_LEVELS
    assert layout["scene"]["zaxis"]["title"]["text"] == "loss"
    note = [n for n in layout["annotations"] if n.get("name") == "cap-note"][0]["text"]
    assert "0 of 63 points" in note


def test_compared_figures_share_limits_and_labels():
    x = np.linspace(-1, 1, 5)
    X, Y = np.meshgrid(x, x)

    surfaces = [Surface(path=f"{m}.h5", x=x, y=x, values={"train_loss": lo + X ** 2 + Y ** 2}, attrs={"model": m},
                        done=None) for m, lo in (("resnet8", 0.2), ("resnet8_noshort", 2.0))]
    fig = plot_compare(surfaces, "contourf")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:2]
    assert [ax.get_title() for ax in panels] == ["resnet8", "resnet8_noshort"]
    assert panels[0].get_xlim() == panels[1].get_xlim() and panels[0].get_ylim() == panels[1].get_ylim()
    filled = [c for ax in panels for c in ax.collections if getattr(c, "filled", False)]
    assert len(filled) == 2 and len({(c.norm.vmin, c.norm.vmax) for c in filled}) == 1
    assert len({tuple(c.levels) for c in filled}) == 1
    assert panels[0].get_xlabel().startswith("α") and panels[0].get_ylabel().startswith("β")
    fig3 = plot_compare(surfaces, "surface")
    zl = {ax.get_zlim() for ax in fig3.axes if hasattr(ax, "get_zlim")}
    assert len(zl) == 1
    assert all(ax.get_zlabel() == "loss" for ax in fig3.axes if hasattr(ax, "get_zlabel"))


def test_page_hover_carries_the_standard_error_of_adaptive_surfaces(tmp_path):
    x = np.linspace(-1, 1, 3)
    loss = np.array([[1.0, 2.0, 3.0], [0.5, 0.25, 0.5], [3.0, 2.0, 1.0]])
    s = write_surface(tmp_path / "ad.h5", x, x, {"train_loss": loss, "train_loss_se": 0.01 * loss,
                                                 "train_n": np.full((3, 3), 128.0)}, attrs={"model": "resnet8"})
    data, _ = figure_json(plot_surface_file(s, html=True, out=tmp_path / "ad.html")[0])
    contour = [t for t in data if t["type"] == "contour"][0]
    assert contour["text"][1][1] == "0.25 ± 0.0025 (1 SE, 128 images)"
