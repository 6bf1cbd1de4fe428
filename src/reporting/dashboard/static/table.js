// Sortable tables: each column header is a real <button> (Tab, Enter and Space work), the sorted
// column carries aria-sort, and the chosen order survives a re-render (new data, new language).

import { h } from './dom.js';
import { lang, t } from './i18n.js';

const sortState = new Map();

function compare(a, b, dir) {
  // Missing values sort last whatever the direction: an empty row is never the "best".
  if (a == null && b == null) return 0;
  if (a == null) return 1;
  if (b == null) return -1;
  const order = typeof a === 'string' ? a.localeCompare(b, lang(), { numeric: true }) : a - b;
  return dir === 'asc' ? order : -order;
}

/**
 * columns: [{key, label, value(row) -> sortable, render(row) -> node|text, numeric}]
 * The table re-sorts itself; `id` names it for the remembered order. The `rowHeader` column's
 * cells are the row headers (<th scope="row">), the first column's by default.
 */
export function sortableTable({ id, caption, columns, rows, sortKey, sortDir = 'asc', rowHeader }) {
  const headerKey = rowHeader ?? columns[0].key;
  const state = sortState.get(id) ?? { key: sortKey ?? columns[0].key, dir: sortDir };
  sortState.set(id, state);
  const tbody = h('tbody');
  const headers = new Map();

  const renderBody = () => {
    const column = columns.find((c) => c.key === state.key) ?? columns[0];
    const value = column.value ?? ((row) => row[column.key]);
    const sorted = [...rows].sort((a, b) => compare(value(a), value(b), state.dir));
    tbody.replaceChildren(
      ...(sorted.length
        ? sorted.map((row) =>
            h(
              'tr',
              null,
              columns.map((c) => {
                const content = c.render ? c.render(row) : (c.value ?? ((r) => r[c.key]))(row);
                const attrs = { class: c.numeric ? 'num' : null };
                return c.key === headerKey ? h('th', { ...attrs, scope: 'row' }, content) : h('td', attrs, content);
              }),
            ),
          )
        : [h('tr', null, h('td', { colspan: columns.length, class: 'empty' }, t('table.empty')))]),
    );
    for (const [key, th] of headers) {
      th.setAttribute('aria-sort', key === state.key ? (state.dir === 'asc' ? 'ascending' : 'descending') : 'none');
    }
  };

  const head = h(
    'tr',
    null,
    columns.map((column) => {
      const button = h(
        'button',
        {
          type: 'button',
          class: 'sort',
          dataset: { focusKey: `${id}:sort:${column.key}` }, // found again after a redraw
          onclick: () => {
            if (state.key === column.key) {
              state.dir = state.dir === 'asc' ? 'desc' : 'asc';
            } else {
              state.key = column.key;
              state.dir = column.numeric ? 'desc' : 'asc';
            }
            renderBody();
          },
        },
        column.label,
        h('span', { class: 'sort-icon', 'aria-hidden': 'true' }),
      );
      const th = h('th', { scope: 'col', class: column.numeric ? 'num' : null }, button);
      headers.set(column.key, th);
      return th;
    }),
  );

  renderBody();
  return h(
    'table',
    { class: 'data', id },
    h('caption', { class: 'visually-hidden' }, `${caption}. ${t('table.sortHint')}`),
    h('thead', null, head),
    tbody,
  );
}
