// UMAP panel of the MindEye explorer (gr.HTML js_on_load). `element`, `props`, `trigger`, `watch` and
// `server` are provided by Gradio. Plotly comes from the installed plotly package (see layout.py).
// A click on a point hands its trial to Python (trigger('click', {trial})); hovering shows its image.
(function () {
  const plotDiv = () => element.querySelector('.umap-plot');
  const hoverImg = () => element.querySelector('.umap-hover img');
  const hoverText = () => element.querySelector('.umap-hover span');
  const cache = {};
  function bind(div) {
    if (div._mindeyeBound) return;
    div._mindeyeBound = true;
    div.on('plotly_click', function (ev) {
      const p = ev && ev.points && ev.points[0];
      if (p && p.customdata !== undefined && p.customdata !== null) {
        trigger('click', { trial: Number(p.customdata) });
      }
    });
    div.on('plotly_hover', function (ev) {
      const p = ev && ev.points && ev.points[0];
      const fig = props.value || {};
      const meta = (fig.layout && fig.layout.meta) || {};
      if (!p || p.customdata === undefined || !meta.subject) return;
      const key = meta.subject + '/' + p.customdata;
      hoverText().textContent = meta.subject + ' · trial ' + p.customdata;
      if (cache[key]) { hoverImg().src = cache[key]; return; }
      server.thumbnail([meta.subject, Number(p.customdata)]).then(function (url) {
        cache[key] = url;
        hoverImg().src = url;
      });
    });
  }
  function draw() {
    const fig = props.value;
    const div = plotDiv();
    if (!div || !fig || !fig.data) return;
    if (typeof Plotly === 'undefined') { setTimeout(draw, 50); return; }
    Plotly.react(div, fig.data, fig.layout, { displayModeBar: false, responsive: true });
    bind(div);
    element.setAttribute('data-trial', String((fig.layout.meta || {}).trial));
    element.setAttribute('data-subject', String((fig.layout.meta || {}).subject));
  }
  draw();
  watch('value', draw);
})();
