// Charts drawn by hand in SVG: the saturation plots (a value along the integration path) and
// the feature-attribution bars. No library: a few elements each, readable and styleable.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

/** A short number for axes and tooltips. */
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5)) return value.toExponential(2);
  return value.toFixed(magnitude < 1 ? 4 : 2);
}

/**
 * A line chart of `points` (objects) with `x` and `y` the keys to plot; hovering (or focusing
 * and using the arrow keys) shows the nearest point's values.
 */
export function lineChart(points, { x, y, xLabel, yLabel, title }) {
  const width = 320;
  const height = 190;
  // The title and the hover read-out take the two lines above the plot.
  const margin = { left: 52, right: 16, top: 34, bottom: 30 };
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart line-chart",
    role: "img",
    tabindex: "0",
    "aria-label": `${title}: ${points.length} points`,
  });
  chart.append(svg("text", { x: 4, y: 12, class: "chart-title" }, title));
  const xs = points.map((p) => p[x]);
  const ys = points.map((p) => p[y]).filter(Number.isFinite);
  if (points.length === 0 || ys.length === 0) {
    chart.append(svg("text", { x: width / 2, y: height / 2, class: "chart-empty" }, "no path points"));
    return chart;
  }
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys, 0), Math.max(...ys)];
  if (y1 === y0) y1 = y0 + 1;
  const sx = (v) => margin.left + ((v - x0) / (x1 - x0 || 1)) * (width - margin.left - margin.right);
  const sy = (v) => height - margin.bottom - ((v - y0) / (y1 - y0)) * (height - margin.top - margin.bottom);

  const axes = svg("g", { class: "axes" });
  axes.append(
    svg("line", { x1: margin.left, y1: sy(y0), x2: width - margin.right, y2: sy(y0) }),
    svg("line", { x1: margin.left, y1: margin.top, x2: margin.left, y2: height - margin.bottom }),
  );
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    axes.append(svg("text", { x: margin.left - 4, y: sy(v) + 4, class: "tick y" }, formatNumber(v)));
  }
  for (const [v, anchor] of [[x0, "start"], [(x0 + x1) / 2, "middle"], [x1, "end"]]) {
    axes.append(svg("text", { x: sx(v), y: height - margin.bottom + 13, class: "tick x", "text-anchor": anchor }, formatNumber(v)));
  }
  axes.append(svg("text", { x: (width + margin.left) / 2, y: height - 3, class: "axis-label x" }, xLabel));
  axes.append(
    svg("text", { x: 12, y: margin.top + 40, class: "axis-label y", transform: `rotate(-90 12 ${margin.top + 40})` }, yLabel),
  );
  chart.append(axes);

  const finite = points.filter((p) => Number.isFinite(p[y]));
  const d = finite.map((p, i) => `${i ? "L" : "M"}${sx(p[x]).toFixed(1)},${sy(p[y]).toFixed(1)}`).join("");
  chart.append(svg("path", { d, class: "series" }));

  // The hover read-out: a marker on the nearest point and its values.
  const marker = svg("circle", { r: 3.5, class: "marker", visibility: "hidden" });
  const readout = svg("text", { x: width - margin.right, y: 26, class: "readout" });
  chart.append(marker, readout);
  let shown = -1;
  const show = (i) => {
    shown = Math.max(0, Math.min(finite.length - 1, i));
    const p = finite[shown];
    marker.setAttribute("cx", sx(p[x]));
    marker.setAttribute("cy", sy(p[y]));
    marker.setAttribute("visibility", "visible");
    readout.textContent = `${xLabel} ${formatNumber(p[x])}: ${formatNumber(p[y])}`;
  };
  chart.addEventListener("pointermove", (event) => {
    const box = chart.getBoundingClientRect();
    const at = x0 + ((event.clientX - box.left) / box.width * width - margin.left) / (width - margin.left - margin.right) * (x1 - x0);
    let nearest = 0;
    finite.forEach((p, i) => {
      if (Math.abs(p[x] - at) < Math.abs(finite[nearest][x] - at)) nearest = i;
    });
    show(nearest);
  });
  chart.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      show(shown + (event.key === "ArrowRight" ? 1 : -1));
      event.preventDefault();
    }
  });
  const hide = () => {
    marker.setAttribute("visibility", "hidden");
    readout.textContent = "";
  };
  chart.addEventListener("pointerleave", hide);
  chart.addEventListener("blur", hide);
  return chart;
}

/**
 * Horizontal bars, one per `{name, value, detail}`, sorted by |value|: positive to the right
 * in red, negative to the left in blue (the colours of the text view).
 */
export function barChart(items, { title }) {
  const sorted = [...items].sort((a, b) => Math.abs(b.value) - Math.abs(a.value));
  const row = 24;
  const width = 440;
  const label = 190;
  const height = 28 + row * sorted.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart bar-chart", role: "img", "aria-label": title });
  chart.append(svg("text", { x: 4, y: 14, class: "chart-title" }, title));
  const largest = Math.max(...sorted.map((i) => Math.abs(i.value)), 1e-12);
  const half = (width - label - 64) / 2;
  const zero = label + half;
  chart.append(svg("line", { x1: zero, y1: 20, x2: zero, y2: height, class: "zero" }));
  sorted.forEach((item, i) => {
    const top = 24 + i * row;
    const length = (Math.abs(item.value) / largest) * half;
    const bar = svg("rect", {
      x: item.value >= 0 ? zero : zero - length,
      y: top + 3,
      width: Math.max(length, 1),
      height: row - 8,
      class: item.value >= 0 ? "bar positive" : "bar negative",
      "data-feature": item.name,
    });
    bar.append(svg("title", {}, `${item.name}: ${formatNumber(item.value)}`));
    chart.append(
      svg("text", { x: label - 6, y: top + row / 2 + 3, class: "bar-label" }, item.detail ? `${item.name} = ${item.detail}` : item.name),
      bar,
      svg("text", { x: width - 4, y: top + row / 2 + 3, class: "bar-value" }, formatNumber(item.value)),
    );
  });
  return chart;
}
