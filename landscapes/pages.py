"""Interactive Plotly pages of surfaces. One page compares any number of surfaces (or values of
one surface) on one colour scale and one z range: a rotatable 3-D panel above a contour panel per
surface, hover in value units to 4 significant digits, the grid minimum labelled with its model,
contour levels equal to the PNG's (:func:`landscapes.scales.shared_scale`), and values above the
cap drawn at the cap in a colour of their own. Buttons switch linear/log and a slider moves the
cap (a small script redraws from the raw values kept in the page). plotly.js is written once per
folder (``plotly.min.js`` beside the pages); ``self_contained`` embeds it instead (for e-mail).

Plotly is imported here only: the rest of the package works where it is not installed."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps

from .scales import PlotConfig, Scale, axis_titles, model_label, pc_ratios, shared_scale, surface_title, value_label
from .surface import Surface
from .trajectory import Projection
from .values import available_values, best_point, default_value, surface_grid, value_array, value_family

__all__ = ["write_html", "write_comparison", "OVER_CAP_COLOR"]

OVER_CAP_COLOR = "#ff5fb0"  # pink: outside viridis/magma, so a capped point never reads as a value
_BAND = 0.08  # the over-cap colour takes this share of the colour range above the top value
_PAGE_HEIGHT = 940


def _plotly():
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise ImportError("interactive HTML needs plotly (pip install plotly); PNG plots work without it") from None
    return go, make_subplots


def _json_ready(z: np.ndarray) -> list:
    """NaN/inf -> None, which Plotly draws as a gap (and which keeps the JSON valid)."""
    return np.where(np.isfinite(z), z, None).tolist()


def _g4(v: float) -> str:
    return f"{v:.4g}"


def _colorscale(cmap: str, band: bool) -> list:
    """The matplotlib colormap as Plotly stops; with ``band`` the top share is the over-cap colour."""
    cm = colormaps[cmap]
    top = 1.0 / (1.0 + _BAND) if band else 1.0
    stops = [[top * t, "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * np.array(cm(t)[:3])))]
             for t in np.linspace(0, 1, 11)]
    if band:
        stops += [[top + 1e-6, OVER_CAP_COLOR], [1.0, OVER_CAP_COLOR]]
    return stops


def _state(scale: Scale, label: str, cmap: str) -> dict:
    """What the page needs to draw one (scale, cap) state: colour range, levels and ticks in drawn
    units (log10 on a log scale) with tick text in value units."""
    t = scale.to_axis
    lo, hi = float(t(scale.lo)), float(t(scale.hi))
    band = scale.cap is not None
    top = hi + _BAND * (hi - lo) if band else hi
    ticks = scale.ticks()
    if band:  # the "> cap" label needs room at the top of the bar
        ticks = ticks[t(ticks) < hi - 0.04 * (hi - lo)] if (t(ticks) < hi - 0.04 * (hi - lo)).sum() >= 2 else ticks
    levels = t(scale.levels)
    size = float(levels[1] - levels[0]) if len(levels) > 1 else (hi - lo) or 1.0
    tickvals = [float(v) for v in t(ticks)] + ([0.5 * (hi + top)] if band else [])
    ticktext = [f"{v:g}" for v in ticks] + ([f"> cap {scale.cap:g}"] if band else [])
    return {"log": scale.log, "cap": scale.cap, "lo": lo, "hi": hi, "top": top, "over": 0.5 * (hi + top),
            "colorscale": _colorscale(cmap, band),
            "start": float(levels[0]), "end": float(levels[-1]), "size": size,
            "tickvals": tickvals, "ticktext": ticktext,
            "title": f"{label}{' (log scale)' if scale.log else ''}"}


def _cap_choices(values: np.ndarray, scale: Scale) -> list[float | None]:
    """Round caps (1, 2, 5 per decade) across the data, the current one, and None (no cap)."""
    pos = values[np.isfinite(values) & (values > 0)]
    if not pos.size:
        return [scale.cap]
    lo, hi = float(pos.min()), float(pos.max())
    nice = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in (1, 2, 5)]
    nice = [c for c in nice if lo < c < hi]
    if len(nice) > 10:
        nice = [c for c in nice if np.isclose(c / 10 ** math.floor(math.log10(c) + 1e-9), (1, 5)).any()]
    caps = sorted(set(nice) | ({scale.cap} if scale.cap is not None else set()))
    return caps + [None]


def _colour_values(Z: np.ndarray, st: dict, cap: float | None, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """(height, colour value) of each point: above the cap the height is the cap's and the colour
    the over-cap band's."""
    with np.errstate(divide="ignore", invalid="ignore"):
        over = np.isfinite(Z) & (Z > cap) if cap is not None else np.zeros(Z.shape, bool)
        shown = np.where(over, cap if cap is not None else 0.0, Z)
        shown = np.log10(np.where(shown > 0, shown, np.nan)) if log else shown
        colour = np.where(over, st["over"], shown)
    return shown, colour


def _se_suffix(surface: Surface, name: str) -> list | None:
    """" ± SE (1 SE, n images)" per point where the surface stores the value's standard error
    (adaptive scans), else None."""
    se = surface.values.get(f"{name}_se")
    if se is None:
        return None
    n = surface.values.get(f"{name.rpartition('_')[0]}_n", np.full(np.shape(se), np.nan))
    return [[f" ± {e:.2g} (1 SE, {k:.0f} images)" if math.isfinite(e) else "" for e, k in zip(er, kr)]
            for er, kr in zip(np.asarray(se, float), np.asarray(n, float))]


def _hover_text(Z: np.ndarray, cap: float | None, suffix: list | None = None) -> list:
    return [[("" if not math.isfinite(v) else (f"{_g4(v)}{suffix[i][j] if suffix else ''}"
                                                 + (f" (> cap {cap:g})" if cap is not None and v > cap else "")))
             for j, v in enumerate(row)] for i, row in enumerate(Z)]


def write_comparison(surfaces: Sequence[Surface], path: str | os.PathLike, config: PlotConfig = PlotConfig(),
                     labels: Sequence[str] | None = None, self_contained: bool = False) -> Path:
    """One page comparing one value (``config.values[0]``, default train_loss) of several 2-D
    surfaces on one colour scale and z range (see the module docstring)."""
    if not surfaces:
        raise ValueError("a comparison needs at least one surface")
    labels = list(labels) if labels else [model_label(s) for s in surfaces]
    if len(labels) != len(surfaces):
        raise ValueError(f"{len(labels)} labels for {len(surfaces)} surfaces")
    if len(set(labels)) < len(labels):  # two files of one model: tell them apart by file name
        labels = [f"{lab} ({Path(s.path).stem})" for lab, s in zip(labels, surfaces)]
    name = (config.values or (default_value(surfaces[0]),))[0]
    for s in surfaces:
        if s.y is None:
            raise ValueError(f"{s.path} is a 1-D surface; a comparison page draws 2-D surfaces")
    title = config.title or f"{value_label(name, tex=False)}: {' vs '.join(labels)}"
    return _write_panels([(s, name, lab) for s, lab in zip(surfaces, labels)], path, config, None, title,
                         self_contained)


def write_html(surface: Surface, path: str | os.PathLike, config: PlotConfig = PlotConfig(),
               trajectory: Projection | None = None, self_contained: bool = False) -> Path:
    """A page for one surface: for 2-D a 3-D panel above a contour panel per value of
    ``config.values`` (one colour scale), for 1-D the curves."""
    names = list(config.values or (default_value(surface),))
    title = surface_title(surface, names, config).replace("\n", "<br>")
    if surface.y is None:
        return _write_1d(surface, path, config, title, self_contained)
    model = model_label(surface)
    panels = [(surface, n, model if len(names) == 1 else f"{model}: {value_label(n, tex=False)}") for n in names]
    return _write_panels(panels, path, config, trajectory, title, self_contained)


def _write_panels(panels, path, config: PlotConfig, trajectory: Projection | None, title: str,
                  self_contained: bool) -> Path:
    go, make_subplots = _plotly()
    grids = [surface_grid(s, n) for s, n, _ in panels]
    name0 = panels[0][1]
    if len({value_family(n) for _, n, _ in panels}) > 1:
        raise ValueError("panels on one page share one colour scale, so they must be the same kind of value")
    family = value_family(name0)
    vname = value_label(name0, tex=False).split(" ", 1)[-1] if family in ("loss", "percent") else \
        value_label(name0, tex=False)
    scale = shared_scale(name0, [g[2] for g in grids], config)
    allz = np.concatenate([g[2].ravel() for g in grids])
    # every state the controls can reach, precomputed here so the page and the PNG share one rule
    states = {}
    caps = _cap_choices(allz, scale) if family == "loss" else [scale.cap]
    modes = ("linear", "log") if family == "loss" and (allz[np.isfinite(allz)] > 0).all() else \
        ("log" if scale.log else "linear",)
    for mode in modes:
        for cap in caps:
            sc = shared_scale(name0, [g[2] for g in grids], replace(config, log=mode == "log", zmax=cap)) \
                if cap is not None else _uncapped(name0, grids, config, mode == "log")
            states[f"{mode}|{'none' if cap is None else f'{cap:g}'}"] = _state(sc, vname, config.cmap)
    finite = allz[np.isfinite(allz)]
    for st_ in states.values():  # heights reach the lowest value even where colours stop above it
        low = finite[finite > 0] if st_["log"] else finite
        if low.size:
            st_["zlo"] = min(st_["lo"], float(np.log10(low.min())) if st_["log"] else float(low.min()))
    mode0 = "log" if scale.log else "linear"
    key0 = f"{mode0}|{'none' if scale.cap is None else f'{scale.cap:g}'}"
    st = states[key0]
    n = len(panels)
    fig = make_subplots(rows=2, cols=n, specs=[[{"type": "surface"}] * n, [{"type": "xy"}] * n],
                        subplot_titles=[lab for _, _, lab in panels] + [f"{lab}: contours" for _, _, lab in panels],
                        row_heights=[0.56, 0.44], vertical_spacing=0.09, horizontal_spacing=0.06)
    raw, suffixes = [], []
    over_total = 0
    for c, ((surface, name, label), (X, Y, Z)) in enumerate(zip(panels, grids), start=1):
        shown, colour = _colour_values(Z, st, scale.cap, scale.log)
        suffix = _se_suffix(surface, name)
        text = _hover_text(Z, scale.cap, suffix)
        suffixes.append(suffix)
        over_total += int((np.isfinite(Z) & (Z > scale.cap)).sum()) if scale.cap is not None else 0
        raw.append(_json_ready(Z))
        hover = (f"<b>{label}</b><br>α %{{x:.4g}}<br>β %{{y:.4g}}<br>{vname} %{{text}}<extra></extra>")
        x, y = surface.x.tolist(), surface.y.tolist()
        fig.add_trace(go.Surface(x=x, y=y, z=_json_ready(shown), surfacecolor=_json_ready(colour),
                                 coloraxis="coloraxis", text=text, hovertemplate=hover, name=label,
                                 meta={"role": "surface", "panel": c - 1}), row=1, col=c)
        fig.add_trace(go.Contour(x=x, y=y, z=_json_ready(colour), coloraxis="coloraxis", text=text,
                                 hovertemplate=hover, name=label, connectgaps=False, line={"width": 0.7},
                                 contours={"start": st["start"], "end": st["end"], "size": st["size"],
                                           "coloring": "heatmap", "showlabels": not scale.log,
                                           "labelfont": {"size": 9, "color": "white"}},
                                 meta={"role": "contour", "panel": c - 1}, showlegend=False), row=2, col=c)
        if trajectory is not None:
            fig.add_trace(go.Scatter(x=trajectory.x.tolist(), y=trajectory.y.tolist(), mode="lines+markers",
                                     line={"color": "white", "width": 2}, marker={"size": 5, "color": "black"},
                                     text=[f"epoch {e}" for e in trajectory.epochs], name="training path",
                                     hovertemplate="%{text}<br>α %{x:.4g}<br>β %{y:.4g}<extra></extra>",
                                     showlegend=c == 1), row=2, col=c)
        ext = best_point(name, Z) if config.mark_min else None
        if ext is not None:
            iy, ix = np.unravel_index(ext[0], Z.shape)
            bx, by, bv = float(surface.x[ix]), float(surface.y[iy]), float(Z[iy, ix])
            tag = f"{label} {ext[1]} {_g4(bv)}"
            fig.add_trace(go.Scatter(x=[bx], y=[by], mode="markers",
                                     marker={"symbol": "star", "size": 14, "color": "red",
                                             "line": {"color": "white", "width": 1}},
                                     name=f"grid {ext[1]}: {label}", meta={"role": "min"},
                                     hovertemplate=f"<b>{tag}</b><br>α %{{x:.4g}}<br>β %{{y:.4g}}<extra></extra>"),
                          row=2, col=c)
            sub = fig.get_subplot(2, c)
            fig.add_annotation(x=bx, y=by, text=tag, name="min-label", showarrow=True, arrowhead=0, ax=40 if bx <= 0
                               else -40, ay=-28, xref=sub.xaxis.plotly_name.replace("axis", ""),
                               yref=sub.yaxis.plotly_name.replace("axis", ""), bgcolor="rgba(255,255,255,0.8)",
                               font={"size": 11, "color": "black"}, borderpad=2)
            fig.add_trace(go.Scatter3d(x=[bx], y=[by], z=[float(shown[iy, ix])], mode="markers",
                                       marker={"symbol": "diamond", "size": 5, "color": "red"},
                                       name=f"grid {ext[1]}: {label}", showlegend=False,
                                       meta={"role": "min3d", "value": bv},
                                       hovertemplate=f"<b>{tag}</b><extra></extra>"), row=1, col=c)
        xt, yt = axis_titles(pc_ratios(surface, trajectory))
        short_x, short_y = ("α", "β") if xt.startswith("α") else ("PC 1", "PC 2")
        scene = fig.get_subplot(1, c)
        ptp_x = float(np.ptp(surface.x)) or 1.0
        # the 3-D box stays near square (thin boxes crowd their ticks); the contours keep true aspect
        ratio = float(np.clip(float(np.ptp(surface.y)) / ptp_x, 0.7, 1.4)) if len(surface.y) > 1 else 1.0
        fig.update_layout({scene.plotly_name: {
            "xaxis": {"title": {"text": short_x}}, "yaxis": {"title": {"text": short_y}},
            "zaxis": _zaxis(st, vname), "aspectmode": "manual",
            "aspectratio": {"x": 1.0, "y": ratio, "z": 0.75},
            "camera": {"eye": {"x": 1.3, "y": -1.5, "z": 0.9}}}})
        xy = fig.get_subplot(2, c)
        fig.update_xaxes(title_text=xt, row=2, col=c, constrain="domain")
        fig.update_yaxes(title_text=yt, row=2, col=c, scaleanchor=xy.xaxis.plotly_name.replace("axis", ""),
                         scaleratio=1, constrain="domain")
    fig.update_layout(coloraxis={"colorscale": st["colorscale"],
                                 "cmin": st["lo"], "cmax": st["top"],
                                 "colorbar": {"title": {"text": st["title"], "side": "right"},
                                              "tickvals": st["tickvals"], "ticktext": st["ticktext"],
                                              "len": 0.9, "y": 0.5, "x": 1.01}})
    fig.add_annotation(text=_cap_note(scale.cap, over_total, int(np.isfinite(allz).sum())), name="cap-note",
                       xref="paper", yref="paper", x=0.0, y=1.035, xanchor="left", yanchor="bottom",
                       showarrow=False, font={"size": 12, "color": "#444"}, align="left")
    _controls(fig, states, mode0, caps, scale.cap)
    fig.update_layout(title={"text": title.replace("\n", "<br>"), "font": {"size": 15}, "y": 0.985},
                      template="plotly_white", height=_PAGE_HEIGHT, width=max(900, 560 * n + 240),
                      margin={"t": 150, "l": 60, "r": 40, "b": 70},
                      legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.06, "yanchor": "top"},
                      hoverlabel={"font": {"size": 12}})
    script = _controls_script(path, self_contained, [states, raw, suffixes, int(np.isfinite(allz).sum()), key0])
    return _save(fig, path, self_contained, script)


def _uncapped(name: str, grids, config: PlotConfig, log: bool) -> Scale:
    """The scale with no cap: colours reach the largest value."""
    finite = np.concatenate([g[2].ravel() for g in grids])
    finite = finite[np.isfinite(finite)]
    hi = float(finite.max()) if finite.size else None
    sc = shared_scale(name, [g[2] for g in grids], replace(config, log=log, zmax=hi))
    return Scale(sc.log, sc.lo, sc.hi, sc.levels, None)


def _zaxis(st: dict, vname: str) -> dict:
    z = {"title": {"text": vname}, "range": [st.get("zlo", st["lo"]), st["hi"]]}
    if st["log"]:
        z.update(tickvals=st["tickvals"][:len(st["tickvals"]) - (st["cap"] is not None)],
                 ticktext=st["ticktext"][:len(st["ticktext"]) - (st["cap"] is not None)])
    return z


def _cap_note(cap: float | None, over: int, total: int) -> str:
    if cap is None:
        return "One colour scale and one height range for every panel. No cap: colours reach the largest value."
    return (f"One colour scale and one height range for every panel. Values above the cap ({cap:g}) are drawn "
            f"flat at the cap in <span style='color:{OVER_CAP_COLOR}'><b>pink</b></span>: "
            f"{over} of {total} points.")


def _controls(fig, states: dict, mode0: str, caps: list, cap0: float | None) -> None:
    """Buttons for linear/log and a slider for the cap; the page's script does the redrawing."""
    modes = sorted({k.split("|")[0] for k in states}, key=("linear", "log").index)
    menus = []
    if len(modes) > 1:
        menus.append({"type": "buttons", "direction": "right", "x": 0.5, "xanchor": "right", "y": 1.115,
                      "yanchor": "top", "showactive": True, "active": modes.index(mode0),
                      "buttons": [{"label": f"{m} scale", "method": "skip", "args": [m]} for m in modes]})
    fig.update_layout(updatemenus=menus)
    if len(caps) > 1:
        keys = ["none" if c is None else f"{c:g}" for c in caps]
        fig.update_layout(sliders=[{
            "active": keys.index("none" if cap0 is None else f"{cap0:g}"), "x": 0.56, "len": 0.44, "y": 1.125,
            "yanchor": "top", "pad": {"t": 0, "b": 0}, "currentvalue": {"visible": False},
            "steps": [{"label": "none" if c is None else f"{c:g}", "value": k, "method": "skip", "args": [k]}
                      for c, k in zip(caps, keys)]}])
        fig.add_annotation(text="cap:", xref="paper", yref="paper", x=0.555, y=1.105, xanchor="right",
                           yanchor="top", showarrow=False, font={"size": 12})


def _save(fig, path, self_contained: bool, script: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True if self_contained else "directory", full_html=True,
                   post_script=script or None, config={"displaylogo": False},
                   div_id="landscape")  # a fixed id: re-rendering an unchanged page leaves git nothing to show
    return path


def _write_1d(surface: Surface, path, config: PlotConfig, title: str, self_contained: bool) -> Path:
    go, make_subplots = _plotly()
    names = list(config.values) if config.values else [n for n in available_values(surface)
                                                       if n.endswith(("_loss", "_acc"))] or [default_value(surface)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name in names:
        z = value_array(surface, name)
        fig.add_trace(go.Scatter(x=surface.x.tolist(), y=_json_ready(z), name=value_label(name, tex=False),
                                 mode="lines", line={"dash": "dash" if name.startswith("test") else "solid"},
                                 hovertemplate=f"α %{{x:.4g}}<br>{value_label(name, tex=False)} %{{y:.4g}}"
                                               f"<extra></extra>"),
                      secondary_y=value_family(name) == "percent")
    fig.update_xaxes(title_text="α")
    fig.update_yaxes(title_text="loss", type="log" if config.log else "linear", secondary_y=False)
    fig.update_yaxes(title_text="accuracy (%)", secondary_y=True)
    fig.update_layout(title={"text": title, "font": {"size": 14}}, template="plotly_white")
    return _save(fig, path, self_contained)


# The controls' redrawing: every state was computed in Python (_state); this only maps the raw
# values kept in the page through the chosen scale and cap. "#log", "#linear", "#cap=5" in the
# address open the page in that state.
CONTROLS_FILE = "landscape-controls.js"  # written once per folder, beside plotly.min.js
_CONTROLS_JS = r"""
window.landscapeControls = function (plotId, STATES, RAW, SE, TOTAL, cur) {
  var gd = document.getElementById(plotId);
  var mode = cur.split('|')[0], cap = cur.split('|')[1];
  function g4(v) { return String(parseFloat(v.toPrecision(4))); }
  function apply() {
    var key = mode + '|' + cap, st = STATES[key];
    if (!st) { return; }
    var c = st.cap, over = 0;
    gd.data.forEach(function (tr, i) {
      if (tr.meta && tr.meta.role === 'min3d') {
        var b = c !== null && tr.meta.value > c ? c : tr.meta.value;
        Plotly.restyle(gd, {z: [[st.log ? Math.log10(b) : b]]}, [i]);
      }
      if (!tr.meta || (tr.meta.role !== 'surface' && tr.meta.role !== 'contour')) { return; }
      var R = RAW[tr.meta.panel], E = SE[tr.meta.panel];
      var h = [], col = [], txt = [];
      R.forEach(function (row, ri) {
        var hr = [], cr = [], tr_ = [];
        row.forEach(function (v, ci) {
          var se = E ? E[ri][ci] : '';
          if (v === null || (st.log && v <= 0)) { hr.push(null); cr.push(null); tr_.push(v === null ? '' : g4(v) + se); return; }
          var above = c !== null && v > c, s = above ? c : v, z = st.log ? Math.log10(s) : s;
          if (above && tr.meta.role === 'contour') { over += 1; }
          hr.push(z); cr.push(above ? st.over : z); tr_.push(g4(v) + se + (above ? ' (> cap ' + c + ')' : ''));
        });
        h.push(hr); col.push(cr); txt.push(tr_);
      });
      if (tr.meta.role === 'surface') {
        Plotly.restyle(gd, {z: [h], surfacecolor: [col], text: [txt]}, [i]);
      } else {
        Plotly.restyle(gd, {z: [col], text: [txt], 'contours.start': st.start, 'contours.end': st.end,
                            'contours.size': st.size, 'contours.showlabels': !st.log}, [i]);
      }
    });
    var lay = {'coloraxis.cmin': st.lo, 'coloraxis.cmax': st.top, 'coloraxis.colorscale': st.colorscale,
               'coloraxis.colorbar.tickvals': st.tickvals, 'coloraxis.colorbar.ticktext': st.ticktext,
               'coloraxis.colorbar.title.text': st.title};
    var n = st.tickvals.length - (c !== null ? 1 : 0);
    Object.keys(gd.layout).filter(function (k) { return /^scene\d*$/.test(k); }).forEach(function (s) {
      lay[s + '.zaxis.range'] = [st.zlo === undefined ? st.lo : st.zlo, st.hi];
      lay[s + '.zaxis.tickvals'] = st.log ? st.tickvals.slice(0, n) : null;
      lay[s + '.zaxis.ticktext'] = st.log ? st.ticktext.slice(0, n) : null;
    });
    (gd.layout.annotations || []).forEach(function (a, j) {
      if (a.name === 'cap-note') {
        lay['annotations[' + j + '].text'] = c === null ?
          'One colour scale and one height range for every panel. No cap: colours reach the largest value.' :
          'One colour scale and one height range for every panel. Values above the cap (' + c + ') are drawn ' +
          "flat at the cap in <span style='color:#ff5fb0'><b>pink</b></span>: " + over + ' of ' + TOTAL + ' points.';
      }
    });
    Plotly.relayout(gd, lay);
  }
  gd.on('plotly_buttonclicked', function (e) { mode = e.button.args[0]; apply(); });
  gd.on('plotly_sliderchange', function (e) { cap = e.step.value; apply(); });
  var h = decodeURIComponent(window.location.hash || '');
  var m = /(log|linear)/.exec(h), k = /cap=([^&]+)/.exec(h);
  if (m || k) {
    if (m) { mode = m[1]; } if (k) { cap = k[1]; }
    (gd.layout.updatemenus || []).forEach(function (u, j) {
      u.buttons.forEach(function (b, bi) { if (b.args[0] === mode) { Plotly.relayout(gd, {['updatemenus[' + j + '].active']: bi}); } });
    });
    (gd.layout.sliders || []).forEach(function (s, j) {
      s.steps.forEach(function (st, si) { if (st.value === cap) { Plotly.relayout(gd, {['sliders[' + j + '].active']: si}); } });
    });
    apply();
  }
};
"""
# A page calls the shared function with its own data; a folder page loads the file first.
_LOADER = r"""
(function () {
  var go = function () { __CALL__ };
  if (window.landscapeControls) { go(); return; }
  var s = document.createElement('script');
  s.src = '__FILE__'; s.onload = go; document.head.appendChild(s);
})();
"""


def _controls_script(path: Path, self_contained: bool, args: list) -> str:
    """The page's call of the shared controls; the function itself is embedded (self-contained) or
    written once beside the page as CONTROLS_FILE, so pages in a folder do not each carry a copy."""
    call = "landscapeControls('{plot_id}', " + ", ".join(json.dumps(a) for a in args) + ");"
    if self_contained:
        return _CONTROLS_JS + call
    shared = Path(path).parent / CONTROLS_FILE
    if not shared.is_file() or shared.read_text() != _CONTROLS_JS:
        shared.parent.mkdir(parents=True, exist_ok=True)
        shared.write_text(_CONTROLS_JS)
    return _LOADER.replace("__CALL__", call).replace("__FILE__", CONTROLS_FILE)
