/* cam-auditor report: sortable, filterable, paginated per-class table. No dependencies. */
(function () {
  "use strict";
  var table = document.getElementById("class-table");
  if (!table) { return; }
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows);
  var page = parseInt(table.getAttribute("data-page"), 10) || 100;
  var showAll = rows.length <= page;
  var filter = document.getElementById("class-filter");
  var count = document.getElementById("class-count");
  var allButton = document.getElementById("show-all");

  function cellValue(row, col) {
    var cell = row.cells[col];
    var v = cell ? cell.getAttribute("data-value") : null;
    return v === null ? (cell ? cell.textContent.trim() : "") : v;
  }

  function apply() {
    var q = filter ? filter.value.trim().toLowerCase() : "";
    var shown = 0, matched = 0;
    for (var i = 0; i < rows.length; i++) {
      var name = rows[i].cells[0].textContent.toLowerCase();
      var match = !q || name.indexOf(q) !== -1;
      if (match) { matched++; }
      var visible = match && (showAll || q !== "" || matched <= page);
      rows[i].hidden = !visible;
      if (visible) { shown++; }
    }
    if (count) {
      count.textContent = shown + " of " + rows.length + " classes shown";
    }
    if (allButton) { allButton.hidden = showAll || q !== ""; }
  }

  function sortBy(col, kind, th) {
    var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
    if (th.getAttribute("aria-sort") === "none" || !th.getAttribute("aria-sort")) {
      dir = kind === "text" ? "ascending" : "descending";
    }
    var heads = table.tHead.rows[0].cells;
    for (var h = 0; h < heads.length; h++) { heads[h].setAttribute("aria-sort", "none"); }
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var keyed = rows.map(function (row, i) { return { row: row, v: cellValue(row, col), i: i }; });
    keyed.sort(function (a, b) {
      if (kind === "num") {
        var x = a.v === "" ? NaN : parseFloat(a.v), y = b.v === "" ? NaN : parseFloat(b.v);
        var xn = isNaN(x), yn = isNaN(y);
        if (xn || yn) { return xn === yn ? a.i - b.i : (xn ? 1 : -1); }  /* missing values last */
        if (x !== y) { return sign * (x - y); }
        return a.i - b.i;
      }
      var c = a.v.localeCompare(b.v);
      return c !== 0 ? sign * c : a.i - b.i;
    });
    rows = keyed.map(function (k) { return k.row; });
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    tbody.appendChild(frag);
    apply();
  }

  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.setAttribute("aria-sort", "none");
    var button = th.querySelector("button.sort");
    if (!button) { return; }
    button.addEventListener("click", function () {
      sortBy(col, th.getAttribute("data-sort") || "text", th);
    });
  });
  if (filter) { filter.addEventListener("input", apply); }
  if (allButton) {
    allButton.addEventListener("click", function () { showAll = true; apply(); });
  }
  /* A link to a class anchor beyond the first page must show its row. */
  function reveal() {
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id && document.getElementById(id);
    if (target && target.parentNode === tbody && target.hidden) {
      showAll = true; apply(); target.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", reveal);
  apply();
  reveal();
})();
