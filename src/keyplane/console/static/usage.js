// Draws the usage charts with the vendored uPlot, from the JSON the page carries (no request).
(() => {
  const source = document.getElementById("usage-data");
  if (!source || !window.uPlot) return;
  const data = JSON.parse(source.textContent);
  const colours = ["#1f4fd1", "#c2410c", "#15803d", "#7e22ce", "#0e7490", "#a16207", "#be123c"];
  const plots = [];
  for (const el of document.querySelectorAll("[data-chart]")) {
    const chart = data[el.dataset.chart];
    if (!chart || !chart.x.length) continue;
    const opts = {
      width: Math.max(280, el.clientWidth),
      height: 200,
      series: [{}].concat(chart.series.map((s, i) => ({
        label: s.label, stroke: colours[i % colours.length], width: 2,
      }))),
      // Times in UTC, as everywhere in the console; cost with the decimals small sums need.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      axes: [{}, {
        size: 70,
        values: el.dataset.chart === "cost"
          ? (u, vals) => vals.map((v) => "$" + v.toPrecision(2))
          : (u, vals) => vals.map((v) => v.toLocaleString()),
      }],
      legend: { show: true },
    };
    plots.push([el, new uPlot(opts, [chart.x].concat(chart.series.map((s) => s.values)), el)]);
  }
  window.addEventListener("resize", () => {
    for (const [el, plot] of plots) plot.setSize({ width: Math.max(280, el.clientWidth), height: 200 });
  });
})();
