// The export form: filters (topics, period) → POST /stats/groups/{id}/export → poll the export
// until it is ready → its download link. Shows the hourly quota from the RateLimit-* headers; once
// it is spent (the last one used here, or a 429 when it was spent elsewhere), the button waits
// until the next export is possible and says when.

import { ApiError, enc, request } from './api.js';
import { $, $$, fill, h } from './dom.js';
import { dateTime, duration, lang, plural, shortDate, t } from './i18n.js';

const FINAL = new Set(['ready', 'failed', 'expired']);
const RECENT_LIMIT = 8;
// The API accepts periods within these years (exports/schemas.py): checked here first, so the
// teacher gets the message in their language rather than the server's.
const MIN_YEAR = 1970;
const MAX_YEAR = 9998;
// What each field of a refused request is called on the form (a 422's `loc`).
const FIELD_KEYS = { from: 'export.field.from', to: 'export.field.to', topic_ids: 'export.field.topics', format: 'export.field.format', period: 'export.field.period' };

const isoDay = (date) => date.toISOString().slice(0, 10);

export class ExportPanel {
  constructor({ describeError }) {
    this.describeError = describeError;
    this.form = $('#export-form');
    this.status = $('#export-status');
    this.quota = $('#export-quota');
    this.list = $('#export-list');
    this.submit = $('#export-submit');
    this.allTopics = $('#topics-all');
    this.topicBox = $('#topic-checkboxes');
    this.groupId = null;
    this.exports = new Map(); // id -> export as last read
    this.polls = new Map(); // id -> timer
    this.limits = null; // {limit, remaining, resetAt}
    this.blockedUntil = 0;
    this.blockedTimer = null;
    this.lastNotice = null; // [key, params] of the status line, re-rendered on a language change

    const today = new Date();
    $('#period-to').value = isoDay(today);
    $('#period-from').value = isoDay(new Date(today.getTime() - 29 * 86400_000));

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.requestExport();
    });
    this.allTopics.addEventListener('change', () => {
      // "All topics" again: the earlier choice is dropped, not kept greyed out.
      if (this.allTopics.checked) for (const box of $$('input[name="topic"]', this.topicBox)) box.checked = false;
      this.syncTopicBoxes();
    });
  }

  /** Signed out: nothing of the previous user stays (their exports, links, quota, notices). */
  reset() {
    this.stopPolling();
    clearTimeout(this.blockedTimer);
    Object.assign(this, { groupId: null, limits: null, blockedUntil: 0, blockedTimer: null, lastNotice: null });
    this.exports.clear();
    this.submit.disabled = false;
    fill(this.topicBox);
    fill(this.status);
    this.renderList();
    this.renderQuota();
  }

  /** A new group is open: its topics become the filter; its recent exports are listed. */
  setGroup(groupId, topics, levels) {
    if (groupId !== this.groupId) {
      this.groupId = groupId;
      this.stopPolling();
      this.exports.clear();
      this.notice(null);
      this.renderTopics(topics, levels);
      this.loadRecent();
    }
  }

  renderTopics(topics, levels) {
    const levelName = new Map(levels.map((level) => [level.level_id ?? level.id, level.name]));
    const byLevel = new Map();
    for (const topic of topics) {
      const key = topic.level_id ?? '';
      if (!byLevel.has(key)) byLevel.set(key, []);
      byLevel.get(key).push(topic);
    }
    fill(
      this.topicBox,
      [...byLevel].map(([levelId, items]) =>
        h(
          'div',
          { class: 'topic-level', role: 'group', 'aria-label': levelName.get(levelId) ?? levelId },
          h('p', { class: 'topic-level-name', 'aria-hidden': 'true' }, levelName.get(levelId) ?? levelId),
          items.map((topic) =>
            h(
              'label',
              { class: 'check' },
              h('input', { type: 'checkbox', name: 'topic', value: topic.topic_id ?? topic.id }),
              ' ',
              topic.name,
            ),
          ),
        ),
      ),
    );
    this.allTopics.checked = true;
    this.syncTopicBoxes();
  }

  syncTopicBoxes() {
    // "All topics" sends an empty list (CONTRACT: empty topic_ids = every topic).
    for (const box of $$('input[name="topic"]', this.topicBox)) box.disabled = this.allTopics.checked;
    this.topicBox.classList.toggle('disabled', this.allTopics.checked);
  }

  filters() {
    const topicIds = this.allTopics.checked
      ? []
      : $$('input[name="topic"]:checked', this.topicBox).map((box) => box.value);
    return {
      topic_ids: topicIds,
      period: { from: $('#period-from').value, to: $('#period-to').value },
      format: new FormData(this.form).get('format') ?? 'csv',
    };
  }

  validate(filters) {
    if (!this.allTopics.checked && !filters.topic_ids.length) return 'export.noTopics';
    if (!filters.period.from || !filters.period.to) return 'export.periodMissing';
    const years = [filters.period.from, filters.period.to].map((day) => Number(day.slice(0, day.indexOf('-', 1))));
    if (years.some((year) => !(year >= MIN_YEAR && year <= MAX_YEAR))) return 'export.periodRange';
    if (filters.period.from > filters.period.to) return 'export.periodOrder';
    return null;
  }

  notice(key, params = {}, kind = 'info') {
    this.lastNotice = key ? [key, params, kind] : null;
    const lines = key ? [h('p', { class: `notice notice-${kind}` }, t(key, params))] : [];
    // While the hourly quota is spent, why the button is disabled stays under any later notice
    // (an earlier export becoming ready must not hide when the next one is possible).
    if (this.blocked()) lines.push(this.rateLimitLine());
    fill(this.status, ...lines);
  }

  blocked() {
    return Date.now() < this.blockedUntil;
  }

  rateLimitLine() {
    const limit = this.limits?.limit;
    const params = { limit, wait: () => duration((this.blockedUntil - Date.now()) / 1000) };
    const key = limit ? 'export.rateLimited' : 'export.rateLimitedBare';
    return h('p', { class: 'notice notice-error' }, t(key, params));
  }

  async requestExport() {
    const filters = this.filters();
    const problem = this.validate(filters);
    this.markInvalid(problem, filters);
    if (problem) {
      this.notice(problem, { min: MIN_YEAR, max: MAX_YEAR }, 'error');
      return;
    }
    if (this.blocked()) {
      this.notice(null);
      return;
    }
    this.submit.disabled = true;
    try {
      const { data, headers } = await request(`/stats/groups/${enc(this.groupId)}/export`, {
        method: 'POST',
        body: { ...filters, locale: lang() },
      });
      this.readLimits(headers);
      const created = { ...data, format: data.format ?? filters.format, filters: data.filters ?? filters };
      this.exports.set(created.id, created);
      this.notice('export.requested', { format: created.format.toUpperCase() });
      this.renderList();
      this.poll(created.id);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.headers) this.readLimits(error.headers);
      if (error.status === 429) {
        const retryAfter = Number(error.headers?.get('Retry-After') ?? Number.NaN);
        this.blockUntil(Date.now() + (Number.isFinite(retryAfter) ? retryAfter : 60) * 1000);
        this.notice(null);
        this.loadRecent(); // the exports that spent the quota elsewhere
      } else if (error.status === 422) {
        this.notice('export.invalid', { detail: () => this.invalidFields(error) }, 'error');
      } else if (error.status === 0) {
        this.notice('errors.network', {}, 'error');
      } else if (error.status !== 401) {
        this.notice('export.refused', { status: error.status, detail: this.describeError(error) }, 'error');
      }
    } finally {
      this.submit.disabled = this.blocked();
      this.renderQuota();
    }
  }

  /** The field a problem is about: marked invalid, described by the status line, focused. */
  markInvalid(problem, filters) {
    for (const el of $$('[aria-invalid]', this.form)) {
      el.removeAttribute('aria-invalid');
      el.removeAttribute('aria-describedby');
    }
    let field = null;
    if (problem === 'export.noTopics') field = this.allTopics;
    else if (problem === 'export.periodMissing') field = filters.period.from ? $('#period-to') : $('#period-from');
    else if (problem) field = $('#period-from');
    if (!field) return;
    field.setAttribute('aria-invalid', 'true');
    field.setAttribute('aria-describedby', this.status.id);
    field.focus();
  }

  /** The fields a 422 names, as the form calls them (the server's own words are English). */
  invalidFields(error) {
    const names = error.errors.map((e) => {
      const field = [...(e.loc ?? [])].reverse().find((part) => part in FIELD_KEYS);
      return field ? t(FIELD_KEYS[field]) : null;
    });
    const known = [...new Set(names.filter(Boolean))];
    return known.length ? known.join(', ') : t('export.field.unknown');
  }

  /** No export is possible before `until` (ms): the button waits, and the status says when. */
  blockUntil(until) {
    this.blockedUntil = until;
    this.submit.disabled = true;
    clearTimeout(this.blockedTimer);
    this.blockedTimer = setTimeout(() => {
      this.submit.disabled = false;
      this.notice(...(this.lastNotice ?? []));
      this.loadRecent(); // the quota as the server counts it now
    }, Math.max(0, until - Date.now()));
  }

  readLimits(headers) {
    const limit = headers.get('RateLimit-Limit');
    const remaining = headers.get('RateLimit-Remaining');
    if (limit == null || remaining == null) return;
    const reset = Number(headers.get('RateLimit-Reset'));
    this.limits = {
      limit: Number(limit),
      remaining: Number(remaining),
      resetAt: Number.isFinite(reset) ? Date.now() + reset * 1000 : null,
    };
    // Spent (by the last export, or in another tab): no click that can only get a 429.
    if (this.limits.remaining <= 0 && this.limits.resetAt > Date.now() && !this.blocked()) {
      this.blockUntil(this.limits.resetAt);
      this.notice(...(this.lastNotice ?? []));
    }
    this.renderQuota();
  }

  renderQuota() {
    if (!this.limits) {
      this.quota.hidden = true;
      return;
    }
    const { limit, remaining } = this.limits;
    this.quota.hidden = false;
    this.quota.textContent =
      remaining > 0 ? t('export.quota', { remaining, limit }) : t('export.quotaEmpty');
    this.quota.classList.toggle('quota-low', remaining <= 1);
  }

  async loadRecent() {
    const groupId = this.groupId;
    try {
      const { data, headers } = await request('/stats/exports');
      if (groupId !== this.groupId) return;
      this.readLimits(headers);
      // Newest first (the first page: the recent ones are all the panel shows).
      for (const item of data.filter((e) => e.group_id === groupId).slice(0, RECENT_LIMIT)) {
        this.exports.set(item.id, item);
        if (!FINAL.has(item.status)) this.poll(item.id);
      }
      this.renderList();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.renderList();
    }
  }

  poll(id, delay = 700) {
    clearTimeout(this.polls.get(id));
    const groupId = this.groupId;
    this.polls.set(
      id,
      setTimeout(async () => {
        try {
          const { data } = await request(`/stats/exports/${enc(id)}`);
          if (groupId !== this.groupId) return;
          const before = this.exports.get(id)?.status;
          this.exports.set(id, data);
          this.renderList();
          if (FINAL.has(data.status)) {
            this.polls.delete(id);
            if (before !== data.status) this.announce(data);
          } else {
            this.poll(id, Math.min(4000, delay * 1.5));
          }
        } catch (error) {
          if (!(error instanceof ApiError) || error.status === 401) return;
          if (error.status >= 500 || error.status === 0) this.poll(id, Math.min(8000, delay * 2));
        }
      }, delay),
    );
  }

  announce(item) {
    const format = (item.format ?? '').toUpperCase();
    if (item.status === 'ready') this.notice('export.ready', { format }, 'success');
    else if (item.status === 'failed') this.notice('export.failed', { error: item.error ?? '' }, 'error');
    else if (item.status === 'expired') this.notice('export.expiredStatus', {}, 'info');
  }

  stopPolling() {
    for (const timer of this.polls.values()) clearTimeout(timer);
    this.polls.clear();
  }

  summary(item) {
    const filters = item.filters ?? {};
    const topics = filters.topic_ids?.length
      ? plural('export.topicCount', filters.topic_ids.length)
      : t('export.allTopics');
    return t('export.summary', {
      format: (item.format ?? '').toUpperCase(),
      topics,
      from: shortDate(filters.period?.from),
      to: shortDate(filters.period?.to),
    });
  }

  renderList() {
    const items = [...this.exports.values()].sort((a, b) =>
      String(b.created_at ?? '').localeCompare(String(a.created_at ?? '')),
    );
    if (!items.length) {
      fill(this.list, h('li', { class: 'empty' }, t('export.none')));
      return;
    }
    fill(
      this.list,
      items.map((item) =>
        h(
          'li',
          { class: 'export-item', dataset: { exportId: item.id, status: item.status } },
          h('span', { class: 'export-summary' }, this.summary(item)),
          h('span', { class: `badge status-${item.status}` }, t(`export.status.${item.status}`)),
          item.created_at ? h('span', { class: 'hint' }, dateTime(item.created_at)) : null,
          item.status === 'ready' && item.download_url
            ? h(
                'span',
                { class: 'export-link' },
                h(
                  'a',
                  { href: item.download_url, download: '', referrerpolicy: 'no-referrer', class: 'download' },
                  t('export.download', { format: (item.format ?? '').toUpperCase() }),
                ),
                item.url_expires_at ? h('span', { class: 'hint' }, ` (${t('export.linkUntil', { time: dateTime(item.url_expires_at) })})`) : null,
              )
            : null,
          item.status === 'failed' && item.error ? h('span', { class: 'hint' }, item.error) : null,
        ),
      ),
    );
  }

  /** The language changed: redraw what this panel wrote itself. */
  relabel() {
    this.renderList();
    this.renderQuota();
    this.notice(...(this.lastNotice ?? []));
  }
}
