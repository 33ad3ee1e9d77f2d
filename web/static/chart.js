// A thin wrapper over uPlot (npm uplot, pinned in package.json and served by us under
// /vendor/uplot/<version>/; the page's <body data-uplot> names that path).

let loading = null;

// uPlot calls new Intl.NumberFormat(navigator.language) when it is imported; WebKit under
// a C/POSIX locale reports "C", which throws a RangeError and would take the chart (and
// the module graph) down. Where the browser's own locale is unusable, number formats
// fall back to the default locale; everywhere else nothing changes.
function guardLocale() {
  try {
    new Intl.NumberFormat(navigator.language);
  } catch {
    const Native = Intl.NumberFormat;
    const Guarded = function NumberFormat(locales, options) {
      try {
        return new Native(locales, options);
      } catch {
        return new Native(undefined, options);
      }
    };
    Guarded.prototype = Native.prototype;
    Guarded.supportedLocalesOf = Native.supportedLocalesOf;
    Intl.NumberFormat = Guarded;
  }
}

function loadUplot() {
  if (!loading) {
    guardLocale();
    const base = document.body.dataset.uplot;
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = `${base}/uPlot.min.css`;
    document.head.append(css);
    loading = import(`${base}/uPlot.esm.js`).then((module) => module.default);
  }
  return loading;
}

// Dashed vertical lines with a label at the top, at x values (the admin page marks runs).
function drawMarkers(u, markers) {
  const { ctx } = u;
  const { top, height } = u.bbox;
  ctx.save();
  ctx.strokeStyle = "#6b7280";
  ctx.fillStyle = "#374151";
  ctx.setLineDash([4, 4]);
  ctx.lineWidth = devicePixelRatio;
  ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
  for (const { x, label } of markers) {
    const px = u.valToPos(x, "x", true);
    ctx.beginPath();
    ctx.moveTo(px, top);
    ctx.lineTo(px, top + height);
    ctx.stroke();
    ctx.fillText(label, px + 3 * devicePixelRatio, top + 12 * devicePixelRatio);
  }
  ctx.restore();
}

// series: [{label, stroke, scale, format}]; data is [xs, ys1, ys2, ...];
// markers (optional, in update) are [{x, label}].
export async function lineChart(element, { xLabel, series, scales = {} }) {
  const uPlot = await loadUplot();
  let markers = [];
  const width = () => Math.max(element.clientWidth, 240);
  // Rounds are whole numbers: no 1.2, 1.4 ... ticks.
  const axes = [{ label: xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] }];
  for (const [i, s] of series.entries()) {
    if (i === 0 || s.scale !== series[0].scale) axes.push({ scale: s.scale, label: s.axis ?? s.label, side: i === 0 ? 3 : 1, grid: { show: i === 0 } });
  }
  const plot = new uPlot(
    {
      width: width(),
      height: 220,
      scales: { x: { time: false }, ...scales },
      hooks: { draw: [(u) => drawMarkers(u, markers)] },
      axes,
      series: [
        { label: xLabel },
        ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, scale: s.scale, value: (u, v) => (v == null ? "—" : s.format(v)), points: { show: true } })),
      ],
    },
    [[], ...series.map(() => [])],
    element,
  );
  new ResizeObserver(() => plot.setSize({ width: width(), height: 220 })).observe(element);
  let shown = -1;
  return {
    update(data, newMarkers = []) {
      // Redraw only when a round was added: polling must not make the chart flicker.
      if (data[0].length === shown) return;
      shown = data[0].length;
      markers = newMarkers;
      plot.setData(data);
      // The canvas can't be read back; this tells tests (and curious people) what is drawn.
      element.dataset.points = String(shown);
      if (markers.length) element.dataset.markers = markers.map((m) => m.label).join(",");
    },
  };
}
