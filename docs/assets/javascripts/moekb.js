// Page behaviour for moekb: sortable tables, and the filters of the paper tables, whose state lives in
// the address (?q=...&perspective=...&from=2023) so that a filtered view can be shared and reloaded.
// Started once the page is parsed: every engine's pages fire DOMContentLoaded. Rows carry their facts
// as data attributes written by the generator; nothing here parses contributor text as HTML.
(function () {
  "use strict";

  function start(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  function matches(row, state) {
    var d = row.dataset;
    if (state.text) {
      var text = row.textContent.toLowerCase() + " " + (d.id || "");
      if (!state.text.split(/\s+/).filter(Boolean).every(function (w) { return text.indexOf(w) !== -1; })) return false;
    }
    if (state.perspective && d.perspective !== state.perspective) return false;
    if (state.subcategory && d.subcategory !== state.subcategory) return false;
    if (state.domain && d.domain !== state.domain) return false;
    if (state.routing && d.routing !== state.routing) return false;
    if (state.modality && (" " + d.modalities + " ").indexOf(" " + state.modality + " ") === -1) return false;
    var year = parseInt(d.year, 10);
    if (state.from && year < parseInt(state.from, 10)) return false;
    if (state.to && year > parseInt(state.to, 10)) return false;
    return true;
  }

  function bindFilters(box) {
    var table = box.parentNode.querySelector(".moekb-table table");
    if (!table) return;
    var controls = box.querySelectorAll("[data-filter]");
    var count = box.querySelector("[data-moekb-count]");
    var params = new URLSearchParams(window.location.search);
    controls.forEach(function (control) {
      var key = control.dataset.filter === "text" ? "q" : control.dataset.filter;
      if (params.has(key)) control.value = params.get(key);
    });

    function apply(updateAddress) {
      var state = {};
      var query = new URLSearchParams();
      controls.forEach(function (control) {
        var key = control.dataset.filter;
        var value = control.value.trim();
        state[key] = key === "text" ? value.toLowerCase() : value;
        if (value) query.set(key === "text" ? "q" : key, value);
      });
      var shown = 0;
      table.querySelectorAll("tbody tr").forEach(function (row) {
        row.hidden = !matches(row, state);
        shown += row.hidden ? 0 : 1;
      });
      if (count) count.textContent = shown + " shown";
      if (updateAddress) {
        var search = query.toString();
        window.history.replaceState(null, "", window.location.pathname + (search ? "?" + search : "") + window.location.hash);
      }
    }

    controls.forEach(function (control) {
      control.addEventListener(control.tagName === "SELECT" ? "change" : "input", function () { apply(true); });
    });
    var download = box.querySelector("[data-moekb-bibtex]");
    if (download) {
      download.addEventListener("click", function () {
        var ids = {};
        table.querySelectorAll("tbody tr").forEach(function (row) { if (!row.hidden) ids[row.dataset.id] = true; });
        fetch(download.dataset.moekbBibtex).then(function (response) { return response.text(); }).then(function (text) {
          // papers.bib holds one entry per id, each starting "@type{id," on a line of its own
          var entries = text.split(/\n(?=@)/).filter(function (entry) {
            var key = /^@\w+\{([^,]+),/.exec(entry.trim());
            return key && ids[key[1]];
          });
          var blob = new Blob([entries.join("\n").trim() + "\n"], { type: "application/x-bibtex" });
          var link = document.createElement("a");
          link.href = URL.createObjectURL(blob);
          link.download = "moekb-selection.bib";
          document.body.appendChild(link);
          link.click();
          link.remove();
        });
      });
    }
    apply(false);
  }

  start(function () {
    document.querySelectorAll(".moekb-table table").forEach(function (table) {
      if (!table.dataset.sortable) {
        table.dataset.sortable = "1";
        new Tablesort(table);
      }
    });
    document.querySelectorAll("[data-moekb-filters]").forEach(bindFilters);
  });
})();
