// Inline math in titles ("M$^4$oE"), rendered by the vendored KaTeX. The generator loads this file,
// and KaTeX, only on pages that hold such a title. The span's text is the TeX source (set as text by
// the generator); a formula KaTeX cannot parse stays as its source.
(function () {
  "use strict";
  function render() {
    document.querySelectorAll("span.moekb-math").forEach(function (span) {
      if (span.dataset.rendered) return;
      try {
        katex.render(span.textContent, span, { throwOnError: false, output: "html" });
        span.dataset.rendered = "1";
      } catch (error) { /* leave the source visible */ }
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", render);
  else render();
})();
