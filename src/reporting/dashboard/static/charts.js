// Two charts drawn as inline SVG at the container's real width. Colours come from style.css
// classes; every figure is also written as text, so no one needs the colours to read them.

import { h, s } from './dom.js';
import { percent, t } from './i18n.js';

const LOW_GAP = 0.1; // a bar this far below the group's mean is drawn in the "low" colour

let chartIds = 0;

function frame(width, height, titleText, descText) {
  const id = `chart-${++chartIds}`;
  return s(
    'svg',
    {
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: 'img',
      'aria-labelledby': `${id}-title ${id}-desc`,
      class: 'svg-chart',
    },
    s('title', { id: `${id}-title` }, titleText),
    s('desc', { id: `${id}-desc` }, descText),
  );
}

function ellipsize(text, maxChars) {
  return text.length <= maxChars ? text : `${text.slice(0, maxChars - 1)}…`;
}

// About the width of a character of the labels' 12px font: how many fit in a label's room.
const CHAR_PX = 6.5;

/** The mean's dashed line explained under a chart; `key` says whose mean it is. */
function legend(key, mean) {
  return h('p', { class: 'legend' }, h('span', { class: 'legend-mean', 'aria-hidden': 'true' }), t(key, { value: percent(mean) }));
}

/** Horizontal bars: one per topic, its accuracy, with the group's mean as a dashed line. */
export function accuracyByTopic(container, items, groupMean) {
  const rows = items.filter((item) => item.value != null);
  if (!rows.length) {
    container.replaceChildren(h('p', { class: 'empty' }, t('charts.noData')));
    return;
  }
  const width = Math.max(280, Math.floor(container.clientWidth || 560));
  const narrow = width < 460;
  // Topic names are long ("Десятичные дроби: сравнение"): give them up to 40% of the width.
  const labelWidth = narrow ? 130 : Math.min(320, Math.floor(width * 0.4));
  const valueWidth = 56;
  const rowHeight = 26;
  const top = 22;
  const plot = width - labelWidth - valueWidth - 8;
  const height = top + rows.length * rowHeight + 6;
  const x = (value) => labelWidth + Math.max(0, Math.min(1, value)) * plot;
  const summary = rows.map((r) => `${r.label}: ${percent(r.value)}`).join('; ');
  const svg = frame(width, height, t('charts.byTopic'), t('charts.topicsLabel', { items: summary }));

  for (const tick of narrow ? [0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(
      s('line', { x1: x(tick), x2: x(tick), y1: top - 4, y2: height - 4, class: 'grid' }),
      s('text', { x: x(tick), y: 12, class: 'axis', 'text-anchor': 'middle' }, percent(tick, 0)),
    );
  }
  rows.forEach((row, index) => {
    const y = top + index * rowHeight;
    const low = groupMean != null && row.value < groupMean - LOW_GAP;
    svg.append(
      s(
        'text',
        { x: labelWidth - 8, y: y + rowHeight / 2 + 4, class: 'label', 'text-anchor': 'end' },
        s('title', null, row.label),
        ellipsize(row.label, Math.floor((labelWidth - 12) / CHAR_PX)),
      ),
      s('rect', {
        x: labelWidth,
        y: y + 4,
        width: Math.max(1, x(row.value) - labelWidth),
        height: rowHeight - 8,
        rx: 3,
        class: low ? 'bar bar-low' : 'bar',
      }),
      s('text', { x: x(row.value) + 6, y: y + rowHeight / 2 + 4, class: 'value' }, percent(row.value, 0)),
    );
  });
  if (groupMean != null) {
    svg.append(
      s('line', { x1: x(groupMean), x2: x(groupMean), y1: top - 4, y2: height - 4, class: 'mean-line' }),
    );
  }
  container.replaceChildren(...[svg, groupMean != null ? legend('charts.groupMean', groupMean) : null].filter(Boolean));
}

/** Histogram of students over ten accuracy bands (0–10 %, …, 90–100 %); `meanKey` labels the
 * dashed line at `groupMean`. */
export function accuracyDistribution(container, accuracies, groupMean, meanKey = 'charts.groupMean') {
  const values = accuracies.filter((v) => v != null);
  if (!values.length) {
    container.replaceChildren(h('p', { class: 'empty' }, t('charts.noData')));
    return;
  }
  const bins = Array.from({ length: 10 }, () => 0);
  for (const value of values) bins[Math.min(9, Math.floor(value * 10))] += 1;
  const max = Math.max(...bins);
  const width = Math.max(280, Math.floor(container.clientWidth || 560));
  const height = 210;
  const left = 28;
  const bottom = 40;
  const top = 28; // room for the "↑ students" caption above the tallest bar's figure
  const plotHeight = height - top - bottom;
  const band = (width - left - 4) / bins.length;
  const bandLabel = (i) => `${i * 10}–${(i + 1) * 10}%`;
  const summary = bins.map((count, i) => `${bandLabel(i)}: ${count}`).join('; ');
  const svg = frame(width, height, t('charts.distribution'), t('charts.distLabel', { items: summary }));

  svg.append(s('line', { x1: left, x2: width - 4, y1: top + plotHeight, y2: top + plotHeight, class: 'axis-line' }));
  if (groupMean != null) {
    // Under the bars' figures, which stay readable where the line crosses them.
    const meanX = left + groupMean * 10 * band;
    svg.append(s('line', { x1: meanX, x2: meanX, y1: top - 6, y2: top + plotHeight, class: 'mean-line' }));
  }
  bins.forEach((count, i) => {
    const barHeight = max ? (count / max) * plotHeight : 0;
    const x = left + i * band;
    const low = groupMean != null && (i + 1) / 10 <= groupMean - LOW_GAP;
    svg.append(
      s('rect', {
        x: x + 3,
        y: top + plotHeight - barHeight,
        width: Math.max(1, band - 6),
        height: barHeight,
        rx: 2,
        class: low ? 'bar bar-low' : 'bar',
      }),
    );
    if (count) {
      svg.append(s('text', { x: x + band / 2, y: top + plotHeight - barHeight - 4, class: 'value', 'text-anchor': 'middle' }, String(count)));
    }
  });
  // Ticks at the bands' edges, 0 to 100, so the mean's line reads against them.
  // On a narrow chart every other tick: "90" and "100" ran together at 375px.
  for (let i = 0; i <= bins.length; i += band < 32 ? 2 : 1) {
    const anchor = i === 0 ? 'start' : i === bins.length ? 'end' : 'middle';
    svg.append(s('text', { x: left + i * band, y: height - bottom + 16, class: 'axis', 'text-anchor': anchor }, `${i * 10}`));
  }
  svg.append(
    s('text', { x: width - 4, y: height - 6, class: 'axis', 'text-anchor': 'end' }, `${t('col.accuracy')}, %`),
    s('text', { x: 2, y: 12, class: 'axis', 'text-anchor': 'start' }, `↑ ${t('charts.students')}`),
  );
  container.replaceChildren(...[svg, groupMean != null ? legend(meanKey, groupMean) : null].filter(Boolean));
}
