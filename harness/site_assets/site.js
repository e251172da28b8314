// The tables of `harness site`: sort by a column (click its header), filter rows (the search box)
// and hide columns (the "Columns" list). No library and no request: it works from file:// too.
"use strict";

// What a cell sorts by: its data-value (a number; empty: no value, always last), else its text.
function sortKey(cell) {
  const value = cell.dataset.value;
  if (value === undefined) return cell.textContent.trim();
  return value === "" ? null : Number(value);
}

// The first click sorts numbers from the highest (accuracies best first) and text from A; the next
// click reverses.
function sortTable(table, index, header) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows, (row, position) => ({ row, position, key: sortKey(row.cells[index]) }));
  const numeric = rows.some(({ key }) => typeof key === "number");
  const descending = header.hasAttribute("aria-sort") ? header.getAttribute("aria-sort") === "ascending" : numeric;
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  rows.sort((a, b) => {
    if (a.key === null || b.key === null) return (a.key === null) - (b.key === null) || a.position - b.position;
    const order = typeof a.key === "number" && typeof b.key === "number"
      ? a.key - b.key
      : String(a.key).localeCompare(String(b.key), undefined, { numeric: true });
    return (descending ? -order : order) || a.position - b.position;
  });
  for (const { row } of rows) body.appendChild(row);
}

for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tHead.rows[0].cells).forEach((header, index) => {
    header.querySelector("button").addEventListener("click", () => sortTable(table, index, header));
  });
}

for (const input of document.querySelectorAll("input[data-filter]")) {
  const table = document.getElementById(input.dataset.filter);
  input.addEventListener("input", () => {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const row of table.tBodies[0].rows) {
      const text = row.textContent.toLowerCase();
      row.hidden = !words.every((word) => text.includes(word));
    }
  });
}

for (const box of document.querySelectorAll("input[data-column]")) {
  const table = document.getElementById(box.dataset.table);
  box.addEventListener("change", () => {
    for (const row of table.rows) row.cells[Number(box.dataset.column)].hidden = !box.checked;
  });
}
