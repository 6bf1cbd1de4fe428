// The Teacher Dashboard: sign-in, the group picker, and the view of one group. All numbers come
// from the API as they are; this file only decides how to show them.

import { ApiError, clearToken, enc, getJson, getToken, onUnauthorized, setToken, tokenClaims } from './api.js';
import { accuracyByTopic, accuracyDistribution } from './charts.js';
import { $, $$, fill, h, show } from './dom.js';
import { ExportPanel } from './exports.js';
import { ago, dateTime, days, initialLang, lang, number, percent, seconds, setLang, t } from './i18n.js';
import { followGroup } from './live.js';
import { StudentDialog } from './student.js';
import { sortableTable } from './table.js';

const READER_ROLES = new Set(['admin', 'teacher']);
const LAST_GROUP_KEY = 'reporting.group';
const ATTENTION_PREVIEW = 8;
const MAX_TIMER_MS = 2_147_483_647;

const state = {
  claims: null,
  groups: [],
  groupsTruncated: false,
  groupId: null,
  group: null,
  students: null,
  studentsError: null,
  catalog: null,
  catalogPromise: null,
  loadSeq: 0,
  stopLive: null,
  expiryTimer: null,
  signinNotice: null,
  attentionExpanded: false,
  bannerError: null, // what the banner says, kept to say it again in another language
  titleNotice: null, // [key, params] of the heading when no group is shown
};

const views = { signin: $('#signin-view'), dashboard: $('#dashboard-view') };

// --- errors and status ------------------------------------------------------------------------

// Set by the server: with live updates off there is no event stream to follow.
const LIVE_UPDATES = document.body.dataset.liveUpdates === 'on';

function describeError(error) {
  if (!(error instanceof ApiError)) return String(error);
  if (error.status === 0 && error.title === 'timeout') return t('errors.timeout', { seconds: error.timeoutSeconds });
  if (error.status === 0) return t('errors.network');
  if (error.status === 403) return t('errors.forbidden');
  if (error.status === 404) return t('errors.notFound', { detail: error.detail });
  return t('errors.generic', { status: error.status, detail: error.detail });
}

function announce(text) {
  $('#status').textContent = text;
}

function showBanner(error) {
  state.bannerError = error;
  const banner = $('#error-banner');
  banner.textContent = error ? describeError(error) : '';
  show(banner, Boolean(error));
}

// --- the address: #group=<id>&student=<id> ----------------------------------------------------

function route() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { group: params.get('group'), student: params.get('student') };
}

function navigate({ group, student }, { replace = false } = {}) {
  const params = new URLSearchParams();
  if (group) params.set('group', group);
  if (student) params.set('student', student);
  const hash = `#${params}`;
  if (hash === location.hash) return;
  if (replace) {
    history.replaceState(null, '', hash);
    onRoute();
  } else {
    location.hash = hash;
  }
}

// --- sign-in ----------------------------------------------------------------------------------

function showSignIn(notice = null) {
  state.signinNotice = notice;
  show(views.dashboard, false);
  show(views.signin, true);
  show($('#group-picker'), false);
  show($('#sign-out'), false);
  show($('#whoami'), false);
  renderSignInNotice();
  renderDemoTokens();
  $('#token-input').focus();
}

function renderSignInNotice() {
  const box = $('#signin-message');
  const notice = state.signinNotice;
  box.textContent = notice ? t(notice.key, notice.params) : '';
  // Being signed out on request is news; anything else kept the reader out.
  box.classList.toggle('notice-error', Boolean(notice) && notice.key !== 'signin.signedOut');
  show(box, Boolean(notice));
}

function renderDemoTokens() {
  let tokens = [];
  try {
    tokens = JSON.parse($('#demo-tokens').textContent || '[]');
  } catch {
    tokens = [];
  }
  show($('#demo-tokens-box'), tokens.length > 0);
  fill(
    $('#demo-token-list'),
    tokens.map((item) =>
      h(
        'li',
        null,
        h(
          'button',
          { type: 'button', class: 'button-secondary', dataset: { role: item.role }, onclick: () => signIn(item.token) },
          ['admin', 'teacher'].includes(item.role)
            ? [t(`role.${item.role}`), item.groups ? `: ${item.groups}` : ''].join('')
            : item.label,
        ),
      ),
    ),
  );
}

function signIn(raw) {
  const token = raw.trim().replace(/^Bearer\s+/i, '');
  if (!token) return showSignIn({ key: 'signin.empty' });
  if (!tokenClaims(token)) return showSignIn({ key: 'signin.malformed' });
  setToken(token);
  $('#token-input').value = '';
  startSession();
}

/** Leave the dashboard: forget the token and every number shown, back to the sign-in form. */
function signOut(notice) {
  clearToken();
  clearTimeout(state.expiryTimer);
  stopLive();
  exportsPanel.reset();
  studentDialog.close({ quiet: true });
  Object.assign(state, { claims: null, groups: [], group: null, groupId: null, students: null, catalog: null, catalogPromise: null });
  state.loadSeq += 1;
  fill($('#group-select'));
  clearGroupView();
  showBanner(null);
  showSignIn(notice);
}

onUnauthorized((error) => {
  // Parallel requests fail together: the first one signs out, the rest have nothing to add.
  if (!getToken()) return;
  const claims = tokenClaims(getToken());
  const expired = !claims?.exp || claims.exp * 1000 <= Date.now() + 1000;
  signOut(expired ? { key: 'signin.expired' } : { key: 'signin.rejected', params: { detail: error.detail || '—' } });
});

function startSession() {
  const claims = tokenClaims(getToken());
  if (!claims) return signOut({ key: 'signin.malformed' });
  if (claims.exp && claims.exp * 1000 <= Date.now()) return signOut({ key: 'signin.expired' });
  if (!READER_ROLES.has(claims.role)) return signOut({ key: 'signin.wrongRole', params: { role: claims.role } });
  state.claims = claims;
  clearTimeout(state.expiryTimer);
  if (claims.exp) {
    state.expiryTimer = setTimeout(
      () => signOut({ key: 'signin.expired' }),
      Math.min(MAX_TIMER_MS, claims.exp * 1000 - Date.now()),
    );
  }
  show(views.signin, false);
  show(views.dashboard, true);
  show($('#group-picker'), true);
  show($('#group-search'), claims.role === 'admin');
  show($('#sign-out'), true);
  renderWhoami();

  state.catalogPromise = getJson('/dashboard/api/topics')
    .then((catalog) => (state.catalog = catalog))
    .catch(() => null);
  const wanted = route().group;
  if (wanted) onRoute();
  openGroups().then(() => {
    // Focus where a keyboard user starts: the group they are on, or the picker.
    if (document.activeElement === document.body) $('#group-select').focus();
  });
}

/** The readable groups, then the address's group, the one open last time or the first. */
async function openGroups() {
  await loadGroups('');
  if (!state.claims) return;
  if (!route().group && state.groups.length) {
    const remembered = localStorage.getItem(LAST_GROUP_KEY);
    const first = state.groups.find((g) => g.id === remembered) ?? state.groups[0];
    navigate({ group: first.id }, { replace: true });
  } else if (!state.groups.length && !route().group) {
    clearGroupView();
    const ids = state.claims.role === 'teacher' ? (state.claims.group_ids ?? []) : [];
    setTitleNotice(ids.length ? ['groups.noneFor', { ids: ids.join(', ') }] : ['groups.none', {}]);
  }
}

function setTitleNotice(notice) {
  state.titleNotice = notice;
  $('#group-title').textContent = notice ? t(...notice) : '';
}

function renderWhoami() {
  const claims = state.claims;
  const el = $('#whoami');
  if (!claims) return show(el, false);
  el.textContent = `${t(`role.${claims.role}`)} · ${claims.sub}`;
  show(el, true);
}

// --- groups -----------------------------------------------------------------------------------

async function loadGroups(query) {
  try {
    const data = await getJson(`/dashboard/api/groups?limit=100&q=${enc(query)}`);
    state.groups = data.groups;
    state.groupsTruncated = data.truncated;
    renderGroupSelect(query);
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) showBanner(error);
  }
}

function renderGroupSelect(query = $('#group-search').value) {
  const select = $('#group-select');
  const options = state.groups.map((g) => h('option', { value: g.id }, g.name));
  // The open group stays selectable even when the search no longer lists it (once it opened:
  // a group refused by its address is not offered).
  if (state.group && !state.groups.some((g) => g.id === state.groupId)) {
    options.unshift(h('option', { value: state.groupId }, state.group.name));
  }
  if (!options.length) {
    options.push(h('option', { value: '', disabled: true }, query ? t('groups.noMatch') : t('groups.none')));
  } else if (state.groupsTruncated) {
    options.push(h('option', { value: '', disabled: true }, t('groups.truncated', { count: state.groups.length })));
  }
  fill(select, options);
  select.value = state.groupId ?? '';
}

// --- one group --------------------------------------------------------------------------------

function stopLive() {
  state.stopLive?.();
  state.stopLive = null;
  show($('#live-indicator'), false);
}

function clearGroupView() {
  state.group = null;
  state.students = null;
  show($('#group-content'), false);
  setTitleNotice(null);
  $('#freshness').textContent = '';
  for (const id of ['#kpi-cards', '#chart-topics', '#chart-distribution', '#attention-list', '#levels-table', '#topics-table', '#leaderboard']) {
    $(id).replaceChildren();
  }
}

async function loadGroup(groupId, { silent = false } = {}) {
  // `silent`: a refresh of the group on screen (the button, a live change), which keeps it there
  // until the new figures come (or fail); otherwise another group opens.
  const seq = ++state.loadSeq;
  if (!silent) {
    stopLive();
    showBanner(null);
    clearGroupView();
    state.attentionExpanded = false;
    $('#freshness').textContent = t('status.loading');
    state.groupId = groupId;
    renderGroupSelect();
    announce(t('status.loading'));
    views.dashboard.setAttribute('aria-busy', 'true');
  }
  $('#refresh').setAttribute('aria-busy', 'true');
  // A live reload follows a change: ask for the changed page, never the API's previous copy.
  const groupPromise = getJson(`/stats/groups/${enc(groupId)}`, { fresh: silent });
  const studentsPromise = getJson(`/dashboard/api/groups/${enc(groupId)}/students`);
  studentsPromise.catch(() => {}); // awaited below; keep an early rejection from being "unhandled"
  let group;
  try {
    group = await groupPromise;
  } catch (error) {
    if (seq !== state.loadSeq) return;
    $('#refresh').removeAttribute('aria-busy');
    views.dashboard.removeAttribute('aria-busy');
    if (error instanceof ApiError && error.status === 401) return;
    showBanner(error);
    announce(describeError(error));
    const refused = error instanceof ApiError && [403, 404].includes(error.status);
    if (silent && !refused && state.group) {
      // The server or the network failed, not the reader's right to see the group: the figures
      // on screen stay, under the banner that says the refresh failed.
      return;
    }
    // Refused, or nothing to keep: the error and nothing of the group.
    clearGroupView();
    $('#group-title').textContent = '—';
    renderGroupSelect();
    return;
  }
  if (seq !== state.loadSeq) return;
  // A refresh redraws the page under the reader: the control they were on gets focus back.
  const refocus = silent ? keepFocus() : null;
  state.group = group;
  localStorage.setItem(LAST_GROUP_KEY, groupId);
  showBanner(null);
  $('#refresh').removeAttribute('aria-busy');
  show($('#group-content'), true); // first: the charts measure their containers
  renderGroup();
  views.dashboard.removeAttribute('aria-busy');
  if (!silent) {
    performance.mark('kpi-rendered');
    announce(t('status.loaded', { name: group.name }));
  } else {
    announce(t('status.updated'));
  }
  if (refocus) refocus();
  renderGroupSelect();

  state.catalogPromise?.then(() => {
    if (seq === state.loadSeq) setExportGroup();
  });
  try {
    state.students = await studentsPromise;
    state.studentsError = null;
  } catch (error) {
    if (seq !== state.loadSeq) return;
    state.students = null;
    state.studentsError = error;
  }
  if (seq !== state.loadSeq) return;
  renderStudents();
  renderKpis();
  if (refocus) refocus(); // the attention list was redrawn too
  if (!silent && LIVE_UPDATES) startLive(groupId);
  const student = route().student;
  if (student && !studentDialog.isOpen) studentDialog.open(student, groupContext());
}

/** A function that focuses again, after a redraw, the control focused now: found by its id, or
 * by the `data-focus-key` that the page's buttons carry (a student's button in a table, a
 * column's sort button). */
function keepFocus() {
  const el = document.activeElement;
  if (!el || el === document.body || !$('#group-content').contains(el)) return null;
  const selector = el.id ? `#${CSS.escape(el.id)}` : el.dataset.focusKey ? `[data-focus-key="${CSS.escape(el.dataset.focusKey)}"]` : null;
  return selector ? () => $(selector)?.focus({ preventScroll: true }) : null;
}

function setExportGroup() {
  const group = state.group;
  if (!group) return;
  const topics = state.catalog?.topics ?? group.topics ?? [];
  const levels = state.catalog?.levels ?? group.levels ?? [];
  exportsPanel.setGroup(state.groupId, topics, levels);
}

function startLive(groupId) {
  let timer = null;
  state.stopLive = followGroup(groupId, {
    onChange: () => {
      // Several events in a burst make one reload.
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (state.groupId === groupId) loadGroup(groupId, { silent: true });
      }, 300);
    },
    onState: (on) => show($('#live-indicator'), on),
  });
}

function groupContext() {
  const group = state.group;
  return {
    levels: new Map((group?.levels ?? []).map((l) => [l.level_id, l])),
    topics: new Map((group?.topics ?? []).map((tp) => [tp.topic_id, tp])),
  };
}

// --- rendering --------------------------------------------------------------------------------

function renderGroup() {
  const group = state.group;
  if (!group) return;
  $('#group-title').textContent = group.name;
  renderFreshness();
  renderKpis();
  renderCharts();
  renderTables();
  renderLeaderboard();
  renderStudents();
}

function renderFreshness() {
  const computedAt = state.group?.stats?.computed_at;
  $('#freshness').textContent = computedAt
    ? t('freshness', { time: dateTime(computedAt), ago: ago(computedAt) })
    : t('freshness.none');
}

/** The metrics as shown: the API gives 0 for the means of a scope without attempts (CONTRACT §2
 * leaves them undefined), which would read as "0 % accuracy"; shown as "—" instead. */
function shownMetrics(metrics) {
  const m = metrics ?? {};
  if (m.total_attempts) return m;
  return { ...m, avg_accuracy: null, hint_usage_rate: null, avg_hints: null, avg_time_seconds: null, avg_score: null };
}

function renderKpis() {
  const m = shownMetrics(state.group?.stats?.metrics);
  const members = state.students?.students?.length;
  const cards = [
    ['accuracy', t('kpi.accuracy'), percent(m.avg_accuracy), t('kpi.accuracyNote')],
    ['hints', t('kpi.hints'), percent(m.hint_usage_rate), t('kpi.hintsNote', { avg: number(m.avg_hints, 2) })],
    ['time', t('kpi.time'), seconds(m.avg_time_seconds), t('kpi.timeNote')],
    ['score', t('kpi.score'), number(m.avg_score, 1), t('kpi.scoreNote')],
    ['attempts', t('kpi.attempts'), number(m.total_attempts), t('kpi.attemptsNote')],
    [
      'students',
      t('kpi.students'),
      number(m.total_users),
      members != null ? t('kpi.studentsNote', { total: number(members) }) : t('kpi.studentsNoteBare'),
    ],
  ];
  fill(
    $('#kpi-cards'),
    cards.map(([key, label, value, note]) =>
      h(
        'li',
        { class: 'kpi', dataset: { kpi: key } },
        h('p', { class: 'kpi-label' }, label),
        h('p', { class: 'kpi-value' }, value),
        h('p', { class: 'kpi-note' }, note),
      ),
    ),
  );
}

function renderCharts() {
  const group = state.group;
  if (!group) return;
  const mean = shownMetrics(group.stats?.metrics).avg_accuracy ?? null;
  const topics = (group.topics ?? [])
    .map((tp) => ({ label: tp.name, value: tp.metrics?.avg_accuracy ?? null }))
    .sort((a, b) => (a.value ?? 2) - (b.value ?? 2));
  accuracyByTopic($('#chart-topics'), topics, mean);
  renderDistribution();
}

function renderDistribution() {
  const container = $('#chart-distribution');
  if (!state.students) {
    container.replaceChildren(h('p', { class: 'hint' }, t('attention.loading')));
    return;
  }
  const accuracies = state.students.students.filter((st) => st.attempts > 0).map((st) => st.accuracy);
  // Each student's whole progress (every group of theirs): its mean says so, as it may differ
  // from the group's own accuracy above.
  accuracyDistribution(container, accuracies, state.students.reference.avg_accuracy, 'charts.studentsMean');
}

function metricColumns() {
  return [
    { key: 'accuracy', label: t('col.accuracy'), numeric: true, value: (r) => r.metrics?.avg_accuracy, render: (r) => percent(r.metrics?.avg_accuracy) },
    { key: 'attempts', label: t('col.attempts'), numeric: true, value: (r) => r.metrics?.total_attempts, render: (r) => number(r.metrics?.total_attempts) },
    { key: 'students', label: t('col.students'), numeric: true, value: (r) => r.metrics?.total_users, render: (r) => number(r.metrics?.total_users) },
    { key: 'hints', label: t('col.hintRate'), numeric: true, value: (r) => r.metrics?.hint_usage_rate, render: (r) => percent(r.metrics?.hint_usage_rate) },
    { key: 'time', label: t('col.time'), numeric: true, value: (r) => r.metrics?.avg_time_seconds, render: (r) => seconds(r.metrics?.avg_time_seconds) },
    { key: 'score', label: t('col.score'), numeric: true, value: (r) => r.metrics?.avg_score, render: (r) => number(r.metrics?.avg_score, 1) },
  ];
}

function renderTables() {
  const group = state.group;
  const levelNames = new Map((group.levels ?? []).map((l) => [l.level_id, l.name]));
  // The API lists levels in course order: the level column sorts by it, not by name.
  const levelOrder = new Map((group.levels ?? []).map((l, index) => [l.level_id, index]));
  fill(
    $('#levels-table'),
    sortableTable({
      id: 'levels',
      caption: t('tables.levels'),
      columns: [
        { key: 'name', label: t('col.level'), value: (r) => levelOrder.get(r.level_id), render: (r) => r.name },
        ...metricColumns(),
      ],
      rows: group.levels ?? [],
    }),
  );
  fill(
    $('#topics-table'),
    sortableTable({
      id: 'topics',
      caption: t('tables.topics'),
      columns: [
        { key: 'name', label: t('col.topic'), value: (r) => r.name },
        { key: 'level', label: t('col.level'), value: (r) => levelNames.get(r.level_id) ?? r.level_id },
        ...metricColumns(),
      ],
      rows: group.topics ?? [],
    }),
  );
}

/** `where`: which list the button is in (one student may be in two), for keepFocus. */
function studentButton(userId, name, where) {
  return h(
    'button',
    {
      type: 'button',
      class: 'link-button',
      'aria-label': `${name}: ${t('student.open')}`,
      onclick: () => navigate({ group: state.groupId, student: userId }),
      dataset: { focusKey: `${where}:${userId}` },
    },
    name,
  );
}

function renderLeaderboard() {
  const board = state.group?.leaderboard;
  const container = $('#leaderboard');
  if (!board?.rankings) {
    fill(container, h('p', { class: 'hint' }, t('leaderboard.none')));
    return;
  }
  fill(
    container,
    sortableTable({
      id: 'leaderboard-table',
      caption: t('leaderboard.title'),
      columns: [
        { key: 'rank', label: t('col.rank'), numeric: true },
        { key: 'display_name', label: t('col.student'), render: (r) => studentButton(r.user_id, r.display_name, 'board') },
        { key: 'score', label: t('col.score'), numeric: true, render: (r) => number(r.score, 1) },
        { key: 'accuracy', label: t('col.accuracy'), numeric: true, render: (r) => percent(r.accuracy) },
        { key: 'attempts', label: t('col.attempts'), numeric: true, render: (r) => number(r.attempts) },
      ],
      rows: board.rankings,
      rowHeader: 'display_name',
      sortKey: 'rank',
      sortDir: 'asc',
    }),
  );
}

function flagText(flag) {
  if (flag.kind === 'low_accuracy') {
    return t('attention.low_accuracy', { value: percent(flag.value), group: percent(flag.group_value) });
  }
  if (flag.kind === 'heavy_hints') {
    return t('attention.heavy_hints', { value: number(flag.value, 2), group: number(flag.group_value, 2) });
  }
  return flag.value == null ? t('attention.never') : t('attention.inactive', { days: days(flag.value) });
}

function renderStudents() {
  renderDistribution();
  const list = $('#attention-list');
  const hint = $('#attention-hint');
  if (!state.students) {
    hint.textContent = state.studentsError ? describeError(state.studentsError) : t('attention.loading');
    list.replaceChildren();
    return;
  }
  const { reference, students } = state.students;
  if (reference.avg_accuracy == null) {
    hint.textContent = t('attention.noData');
    fill(list);
    return;
  }
  hint.textContent = t('attention.hint', {
    accuracy: percent(reference.avg_accuracy),
    hints: number(reference.hints_per_attempt, 2),
    days: days(reference.inactive_after_days),
  });
  const flagged = students.filter((st) => st.flags.length);
  if (!flagged.length) {
    fill(list, h('li', { class: 'empty' }, t('attention.none')));
    return;
  }
  const shown = state.attentionExpanded ? flagged : flagged.slice(0, ATTENTION_PREVIEW);
  fill(
    list,
    shown.map((st) => {
      const worst = st.flags.some((f) => f.severity === 'alert') ? 'alert' : 'warning';
      return h(
        'li',
        { class: `attention-item severity-${worst}`, dataset: { userId: st.user_id } },
        h(
          'div',
          { class: 'attention-head' },
          studentButton(st.user_id, st.display_name, 'attention'),
          h('span', { class: `badge badge-${worst}` }, t(`severity.${worst}`)),
        ),
        h(
          'ul',
          { class: 'flag-list' },
          st.flags.map((flag) => h('li', { class: `flag flag-${flag.severity}`, dataset: { kind: flag.kind } }, flagText(flag))),
        ),
      );
    }),
    flagged.length > ATTENTION_PREVIEW
      ? h(
          'li',
          { class: 'attention-more' },
          h(
            'button',
            {
              type: 'button',
              class: 'button-quiet',
              'aria-expanded': String(state.attentionExpanded),
              onclick: () => {
                state.attentionExpanded = !state.attentionExpanded;
                renderStudents();
              },
            },
            state.attentionExpanded ? t('attention.less') : t('attention.more', { count: flagged.length }),
          ),
        )
      : null,
  );
}

// --- routing and events -----------------------------------------------------------------------

function onRoute() {
  if (!state.claims) return;
  const { group, student } = route();
  if (group && group !== state.groupId) {
    studentDialog.close({ quiet: true });
    loadGroup(group);
    return;
  }
  if (student && state.group) {
    if (studentDialog.userId !== student) studentDialog.open(student, groupContext());
  } else if (!student) {
    studentDialog.close();
  }
}

const exportsPanel = new ExportPanel({ describeError });
const studentDialog = new StudentDialog({
  describeError,
  onClose: () => {
    if (route().student) navigate({ group: state.groupId });
  },
});

function relabel(next) {
  setLang(next);
  renderSignInNotice();
  renderDemoTokens();
  renderWhoami();
  if (state.claims) renderGroupSelect();
  if (state.group) {
    renderGroup();
    announce(t('status.loaded', { name: state.group.name }));
  } else if (state.titleNotice) {
    setTitleNotice(state.titleNotice);
  }
  showBanner(state.bannerError);
  exportsPanel.relabel();
  if (studentDialog.isOpen) studentDialog.render();
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function wire() {
  for (const button of $$('[data-lang]')) button.addEventListener('click', () => relabel(button.dataset.lang));
  $('#signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    signIn($('#token-input').value);
  });
  $('#sign-out').addEventListener('click', () => {
    history.replaceState(null, '', location.pathname);
    signOut({ key: 'signin.signedOut' });
  });
  $('#refresh').addEventListener('click', () => {
    if (state.groupId) loadGroup(state.groupId, { silent: true });
    else if (state.claims) openGroups(); // no group yet: perhaps there is one now
  });
  $('#group-select').addEventListener('change', (event) => {
    if (event.target.value) navigate({ group: event.target.value });
  });
  $('#group-search').addEventListener('input', debounce((event) => loadGroups(event.target.value.trim()), 250));
  window.addEventListener('hashchange', onRoute);
  setInterval(() => state.group && renderFreshness(), 60_000);

  // Charts are drawn at their container's width: redraw when it changes.
  let lastWidth = 0;
  new ResizeObserver(
    debounce(() => {
      const width = $('#chart-topics').clientWidth;
      if (state.group && Math.abs(width - lastWidth) > 8) {
        lastWidth = width;
        renderCharts();
      }
    }, 150),
  ).observe($('#chart-topics'));
}

setLang(initialLang());
wire();
if (getToken()) startSession();
else showSignIn();
