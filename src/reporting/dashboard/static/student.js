// The student drill-down: GET /stats/users/{id} in a modal dialog, each level and topic compared
// with the group's own figure.

import { ApiError, enc, getJson } from './api.js';
import { $, fill, h } from './dom.js';
import { ago, dateTime, number, percent, seconds, signedPoints, t } from './i18n.js';
import { sortableTable } from './table.js';

const NOTABLE_GAP = 0.1;

function deltaClass(delta) {
  if (delta == null) return null;
  if (delta <= -NOTABLE_GAP) return 'delta delta-neg';
  if (delta >= NOTABLE_GAP) return 'delta delta-pos';
  return 'delta';
}

export class StudentDialog {
  constructor({ describeError, onClose }) {
    this.dialog = $('#student-dialog');
    this.title = $('#student-title');
    this.body = $('#student-body');
    this.error = $('#student-error');
    this.describeError = describeError;
    this.userId = null;
    this.data = null;
    this.context = null;
    this.request = 0;
    $('#student-close').addEventListener('click', () => this.dialog.close());
    this.quiet = false;
    this.dialog.addEventListener('close', () => {
      this.userId = null;
      this.data = null;
      if (!this.quiet) onClose();
      this.quiet = false;
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  /** `context`: {levels: Map(level_id → {name, metrics}), topics: Map(topic_id → {name, metrics})} */
  async open(userId, context) {
    const request = ++this.request;
    this.userId = userId;
    this.context = context;
    this.data = null;
    this.error.hidden = true;
    this.title.textContent = t('student.loading');
    this.body.replaceChildren();
    if (!this.dialog.open) this.dialog.showModal();
    try {
      const data = await getJson(`/stats/users/${enc(userId)}`);
      if (request !== this.request) return;
      this.data = data;
      this.render();
    } catch (error) {
      if (request !== this.request || !(error instanceof ApiError)) return;
      if (error.status === 401) {
        this.dialog.close();
        return;
      }
      // Nothing of the refused student is kept or shown: only the error.
      this.title.textContent = '—';
      this.error.textContent = this.describeError(error);
      this.error.hidden = false;
    }
  }

  /** `quiet`: the address already moved on (another group, another student): onClose, which
   * takes the student out of the address, would undo that. */
  close({ quiet = false } = {}) {
    if (!this.dialog.open) return;
    this.quiet = quiet;
    this.dialog.close();
  }

  render() {
    const data = this.data;
    if (!data) return;
    this.title.textContent = data.display_name ?? data.user_id;
    const totals = data.totals ?? {};
    const comparisonRows = (items, idKey, lookup) =>
      (items ?? []).map((item) => {
        const group = lookup.get(item[idKey]);
        const groupAccuracy = group?.metrics?.avg_accuracy ?? null;
        return {
          id: item[idKey],
          name: group?.name ?? item.name ?? item[idKey],
          accuracy: item.accuracy ?? null,
          group: groupAccuracy,
          delta: item.accuracy != null && groupAccuracy != null ? item.accuracy - groupAccuracy : null,
          attempts: item.attempts ?? 0,
          hints: item.hints_used ?? 0,
          time: item.avg_time_seconds ?? null,
        };
      });
    const columns = (nameLabel) => [
      { key: 'name', label: nameLabel },
      { key: 'accuracy', label: t('col.accuracy'), numeric: true, render: (r) => percent(r.accuracy) },
      { key: 'group', label: t('col.group'), numeric: true, render: (r) => percent(r.group) },
      {
        key: 'delta',
        label: t('col.difference'),
        numeric: true,
        render: (r) => h('span', { class: deltaClass(r.delta) }, signedPoints(r.delta)),
      },
      { key: 'attempts', label: t('col.attempts'), numeric: true, render: (r) => number(r.attempts) },
      { key: 'hints', label: t('col.hints'), numeric: true, render: (r) => number(r.hints) },
      { key: 'time', label: t('col.time'), numeric: true, render: (r) => seconds(r.time) },
    ];
    const stat = (label, value) => h('div', { class: 'mini-kpi' }, h('dt', null, label), h('dd', null, value));
    fill(
      this.body,
      h(
        'p',
        { class: 'hint' },
        data.last_activity_at
          ? t('student.lastActivity', { time: `${dateTime(data.last_activity_at)} (${ago(data.last_activity_at)})` })
          : t('student.never'),
        data.computed_at ? ` · ${t('student.computed', { time: dateTime(data.computed_at) })}` : null,
      ),
      // The totals are the student's whole progress summary (CONTRACT §5), attempts in groups
      // the reader may not see included: said always, also when only one group is visible.
      h(
        'p',
        { class: 'hint', id: 'student-all-groups' },
        (data.group_ids ?? []).length > 1
          ? t('student.allGroups', { count: data.group_ids.length })
          : t('student.allWork'),
      ),
      h(
        'dl',
        { class: 'mini-kpis', 'aria-label': t('student.totals') },
        stat(t('col.accuracy'), percent(totals.accuracy)),
        stat(t('col.attempts'), number(totals.attempts)),
        stat(t('col.score'), number(totals.score, 1)),
        stat(t('col.hints'), number(totals.hints_used)),
        stat(t('col.time'), seconds(totals.avg_time_seconds)),
      ),
      h('h3', null, t('student.levels')),
      h(
        'div',
        { class: 'table-wrap' },
        sortableTable({
          id: 'student-levels',
          caption: t('student.levels'),
          columns: columns(t('col.level')),
          rows: comparisonRows(data.levels, 'level_id', this.context.levels),
        }),
      ),
      h('h3', null, t('student.topics')),
      h(
        'div',
        { class: 'table-wrap' },
        sortableTable({
          id: 'student-topics',
          caption: t('student.topics'),
          columns: columns(t('col.topic')),
          rows: comparisonRows(data.topics, 'topic_id', this.context.topics),
          sortKey: 'delta',
          sortDir: 'asc',
        }),
      ),
    );
  }
}
