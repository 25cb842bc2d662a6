// Page behaviour for moekb. Material's instant navigation swaps pages without reloading, so
// everything is (re)initialised from document$, which emits once per page view.
document$.subscribe(function () {
  // Sortable tables (vendored tablesort): the all-papers table and every paper table.
  document.querySelectorAll(".moekb-table table").forEach(function (table) {
    if (!table.dataset.sortable) {
      table.dataset.sortable = "1";
      new Tablesort(table);
    }
  });
  // Client-side filter over the all-papers table: hides rows that do not contain every word.
  document.querySelectorAll("input.moekb-filter").forEach(function (input) {
    var table = document.querySelector(".moekb-table table");
    if (!table || input.dataset.bound) return;
    input.dataset.bound = "1";
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var text = row.textContent.toLowerCase();
        row.hidden = !words.every(function (w) { return text.indexOf(w) !== -1; });
      });
    });
  });
});
