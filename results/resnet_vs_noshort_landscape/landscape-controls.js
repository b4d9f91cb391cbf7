
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
