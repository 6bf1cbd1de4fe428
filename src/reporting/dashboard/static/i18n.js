// Every string of the interface in Russian (the default) and English, and the number/date
// formatting of the chosen language.

const STRINGS = {
  ru: {
    'app.title': 'Отчёты и аналитика',
    'skip': 'Перейти к содержимому',
    'lang.label': 'Язык интерфейса',
    'signout': 'Выйти',
    'refresh': 'Обновить',
    'close': 'Закрыть',
    'live.on': 'Обновляется автоматически',
    'role.admin': 'Администратор',
    'role.teacher': 'Учитель',
    'attention.more': 'Показать всех ({count})',
    'attention.less': 'Свернуть',

    'signin.title': 'Вход',
    'signin.tokenLabel': 'Токен доступа (JWT)',
    'signin.tokenHint': 'Вставьте токен, выданный платформой. Он хранится только в этой вкладке и исчезнет, когда вы её закроете.',
    'signin.submit': 'Войти',
    'signin.demoTitle': 'Демонстрационный вход',
    'signin.demoHint': 'Сервер запущен командой «reporting demo»: выберите готовую роль.',
    'signin.empty': 'Вставьте токен.',
    'signin.malformed': 'Это не JWT: токен — три части в кодировке base64url, разделённые точками, и эти части не читаются.',
    'signin.expired': 'Сессия истекла. Войдите снова.',
    // The server's own detail is English: the Russian texts say what it means instead.
    'signin.rejected': 'Сервер не принял токен: он неверен, истёк или подписан другим ключом.',
    'signin.wrongRole': 'Этот токен (роль «{role}») не даёт доступа к статистике.',
    'signin.signedOut': 'Вы вышли из системы.',

    'groups.label': 'Группа',
    'groups.search': 'Поиск группы',
    'groups.searchPlaceholder': 'Название или код группы',
    'groups.none': 'Нет доступных групп.',
    'groups.noneFor': 'Нет доступных групп: в токене указаны {ids}, но таких групп в данных нет. Обратитесь к администратору платформы.',
    'groups.noMatch': 'Ни одна группа не подходит под поиск.',
    'groups.truncated': 'Показаны первые {count}: уточните поиск.',

    'freshness': 'Данные на {time} ({ago})',
    'freshness.none': 'Статистика группы ещё не рассчитана.',
    'status.loading': 'Загружаются данные группы…',
    'status.loaded': 'Данные группы «{name}» загружены.',
    'status.updated': 'Данные группы обновились.',

    'kpi.title': 'Показатели группы',
    'kpi.accuracy': 'Точность',
    'kpi.accuracyNote': 'в среднем по ученикам',
    'kpi.hints': 'Подсказки',
    'kpi.hintsNote': 'доля попыток с подсказкой; {avg} на попытку',
    'kpi.time': 'Среднее время',
    'kpi.timeNote': 'на одну попытку',
    'kpi.score': 'Средний балл',
    'kpi.scoreNote': 'на ученика: сумма его баллов за всё время',
    'kpi.attempts': 'Попытки',
    'kpi.attemptsNote': 'за всё время',
    'kpi.students': 'Активные ученики',
    'kpi.studentsNote': 'из {total} в группе',
    'kpi.studentsNoteBare': 'с хотя бы одной попыткой',

    'charts.byTopic': 'Точность по темам',
    'charts.distribution': 'Распределение учеников по точности',
    'charts.noData': 'Нет данных для графика.',
    'charts.groupMean': 'среднее {value}',
    'charts.studentsMean': 'среднее по ученикам {value} (все их попытки)',
    'charts.topicsLabel': 'Столбчатая диаграмма точности по темам. {items}',
    'charts.distLabel': 'Гистограмма: число учеников в каждом интервале точности. {items}',
    'charts.students': 'Ученики',

    'tables.levels': 'По уровням',
    'tables.topics': 'По темам',
    'table.sortHint': 'Нажмите на заголовок столбца, чтобы отсортировать.',
    'table.empty': 'Нет данных.',
    'col.level': 'Уровень',
    'col.topic': 'Тема',
    'col.accuracy': 'Точность',
    'col.attempts': 'Попытки',
    'col.students': 'Ученики',
    'col.hintRate': 'С подсказкой',
    'col.hints': 'Подсказки',
    'col.time': 'Время',
    'col.score': 'Балл',
    'col.rank': 'Место',
    'col.student': 'Ученик',
    'col.group': 'В группе',
    'col.difference': 'Разница',

    'leaderboard.title': 'Рейтинг группы',
    'leaderboard.none': 'Рейтинг ещё не рассчитан.',

    'attention.title': 'Ученики, которым нужно внимание',
    'attention.hint': 'Сравнение со средним по ученикам группы: точность {accuracy}, подсказок {hints} на попытку. Без активности — дольше {days}. Учтены все попытки ученика, в том числе в других его группах.',
    'attention.none': 'Все ученики в пределах обычного для группы.',
    'attention.noData': 'В группе ещё нет попыток: сравнивать пока не с чем.',
    'attention.loading': 'Загружается список учеников…',
    'attention.low_accuracy': 'Точность {value} — в группе {group}',
    'attention.heavy_hints': 'Подсказок {value} на попытку — в группе {group}',
    'attention.inactive': 'Нет активности {days}',
    'attention.never': 'Ни одной попытки',
    'severity.alert': 'Важно',
    'severity.warning': 'Внимание',
    'student.open': 'Открыть карточку ученика',

    'student.loading': 'Загрузка…',
    'student.totals': 'Итоги ученика',
    'student.lastActivity': 'Последняя активность: {time}',
    'student.never': 'Попыток ещё не было.',
    'student.computed': 'Данные на {time}',
    'student.allGroups': 'Итоги по всем группам ученика ({count}), сравнение — с этой группой.',
    'student.allWork': 'Итоги ученика за всё время, включая попытки в других его группах; сравнение — с этой группой.',
    'student.levels': 'По уровням',
    'student.topics': 'По темам',

    'errors.forbidden': 'Нет доступа: эти данные вне ваших групп.',
    'errors.notFound': 'Не найдено: такой группы, ученика или выгрузки нет.',
    'errors.network': 'Сервер недоступен. Проверьте соединение и попробуйте снова.',
    'errors.timeout': 'Сервер не ответил за {seconds} с. Попробуйте ещё раз.',
    'errors.generic': 'Ошибка {status}: запрос не выполнен.',
    'export.refused': 'Ошибка {status}: {detail}',

    'filters.topics': 'Темы',
    'filters.allTopics': 'Все темы',
    'filters.period': 'Период (дни по UTC)',
    'filters.from': 'С',
    'filters.to': 'По',

    'export.title': 'Выгрузка отчёта',
    'export.format': 'Формат',
    'export.submit': 'Сформировать отчёт',
    'export.recent': 'Недавние выгрузки',
    'export.none': 'Выгрузок пока нет.',
    'export.quota': 'Осталось выгрузок на этот час: {remaining} из {limit}.',
    'export.quotaEmpty': 'Лимит выгрузок на этот час исчерпан.',
    'export.rateLimited': 'Лимит выгрузок исчерпан ({limit} в час). Следующая выгрузка будет доступна через {wait}.',
    'export.rateLimitedBare': 'Лимит выгрузок исчерпан. Следующая выгрузка будет доступна через {wait}.',
    'export.requested': 'Отчёт {format} поставлен в очередь.',
    'export.ready': 'Отчёт {format} готов.',
    'export.failed': 'Не удалось сформировать отчёт: {error}',
    'export.expiredStatus': 'Срок хранения отчёта истёк.',
    'export.invalid': 'Проверьте фильтры: {detail}',
    'export.periodOrder': 'Дата начала периода позже даты окончания.',
    'export.periodMissing': 'Укажите обе даты периода.',
    'export.periodRange': 'Даты периода — с {min} по {max} год.',
    'export.field.from': '«С»',
    'export.field.to': '«По»',
    'export.field.period': 'период',
    'export.field.topics': 'темы',
    'export.field.format': 'формат',
    'export.field.unknown': 'сервер не принял запрос',
    'export.noTopics': 'Выберите хотя бы одну тему или отметьте «Все темы».',
    'export.download': 'Скачать {format}',
    'export.linkUntil': 'ссылка действует до {time}',
    'export.summary': '{format} · {topics} · {from} — {to}',
    'export.allTopics': 'все темы',
    'export.topicCount.one': '{count} тема',
    'export.topicCount.few': '{count} темы',
    'export.topicCount.many': '{count} тем',
    'export.topicCount.other': '{count} темы',
    'export.status.pending': 'в очереди',
    'export.status.processing': 'формируется',
    'export.status.ready': 'готов',
    'export.status.failed': 'ошибка',
    'export.status.expired': 'истёк',
  },
  en: {
    'app.title': 'Reporting & Analytics',
    'skip': 'Skip to content',
    'lang.label': 'Interface language',
    'signout': 'Sign out',
    'refresh': 'Refresh',
    'close': 'Close',
    'live.on': 'Updating live',
    'role.admin': 'Admin',
    'role.teacher': 'Teacher',
    'attention.more': 'Show all ({count})',
    'attention.less': 'Show fewer',

    'signin.title': 'Sign in',
    'signin.tokenLabel': 'Access token (JWT)',
    'signin.tokenHint': 'Paste the token the platform gave you. It is kept in this tab only and is gone when you close it.',
    'signin.submit': 'Sign in',
    'signin.demoTitle': 'Demo sign-in',
    'signin.demoHint': 'The server runs as “reporting demo”: pick a ready-made role.',
    'signin.empty': 'Paste a token.',
    'signin.malformed': 'This is not a JWT: a token is three base64url parts separated by dots, and these cannot be read.',
    'signin.expired': 'Your session has expired. Please sign in again.',
    'signin.rejected': 'The server did not accept the token: {detail}',
    'signin.wrongRole': 'This token (role “{role}”) gives no access to statistics.',
    'signin.signedOut': 'You are signed out.',

    'groups.label': 'Group',
    'groups.search': 'Search groups',
    'groups.searchPlaceholder': 'Group name or id',
    'groups.none': 'No groups available.',
    'groups.noneFor': 'No groups available: the token names {ids}, and no such group exists in the data. Ask the platform’s administrator.',
    'groups.noMatch': 'No group matches the search.',
    'groups.truncated': 'Showing the first {count}: refine the search.',

    'freshness': 'Data as of {time} ({ago})',
    'freshness.none': 'The group’s statistics have not been computed yet.',
    'status.loading': 'Loading the group…',
    'status.loaded': 'Group “{name}” loaded.',
    'status.updated': 'The group’s numbers were updated.',

    'kpi.title': 'Group figures',
    'kpi.accuracy': 'Accuracy',
    'kpi.accuracyNote': 'mean over students',
    'kpi.hints': 'Hint usage',
    'kpi.hintsNote': 'share of attempts with a hint; {avg} per attempt',
    'kpi.time': 'Average time',
    'kpi.timeNote': 'per attempt',
    'kpi.score': 'Average score',
    'kpi.scoreNote': 'per student: their all-time total',
    'kpi.attempts': 'Attempts',
    'kpi.attemptsNote': 'all time',
    'kpi.students': 'Active students',
    'kpi.studentsNote': 'of {total} in the group',
    'kpi.studentsNoteBare': 'with at least one attempt',

    'charts.byTopic': 'Accuracy by topic',
    'charts.distribution': 'Students by accuracy',
    'charts.noData': 'No data to chart.',
    'charts.groupMean': 'mean {value}',
    'charts.studentsMean': 'students’ mean {value} (all their attempts)',
    'charts.topicsLabel': 'Bar chart of accuracy by topic. {items}',
    'charts.distLabel': 'Histogram: number of students in each accuracy band. {items}',
    'charts.students': 'Students',

    'tables.levels': 'By level',
    'tables.topics': 'By topic',
    'table.sortHint': 'Activate a column header to sort.',
    'table.empty': 'No data.',
    'col.level': 'Level',
    'col.topic': 'Topic',
    'col.accuracy': 'Accuracy',
    'col.attempts': 'Attempts',
    'col.students': 'Students',
    'col.hintRate': 'With hint',
    'col.hints': 'Hints',
    'col.time': 'Time',
    'col.score': 'Score',
    'col.rank': 'Rank',
    'col.student': 'Student',
    'col.group': 'Group',
    'col.difference': 'Difference',

    'leaderboard.title': 'Group leaderboard',
    'leaderboard.none': 'The leaderboard has not been computed yet.',

    'attention.title': 'Students who need attention',
    'attention.hint': 'Compared with the mean of the group’s students: accuracy {accuracy}, {hints} hints per attempt. Inactive means no attempt for over {days}. Every attempt of a student counts, in their other groups too.',
    'attention.none': 'Every student is within the group’s usual range.',
    'attention.noData': 'No attempts in the group yet: nothing to compare with.',
    'attention.loading': 'Loading the students…',
    'attention.low_accuracy': 'Accuracy {value} — group {group}',
    'attention.heavy_hints': '{value} hints per attempt — group {group}',
    'attention.inactive': 'No activity for {days}',
    'attention.never': 'No attempts yet',
    'severity.alert': 'Important',
    'severity.warning': 'Watch',
    'student.open': 'Open the student’s card',

    'student.loading': 'Loading…',
    'student.totals': 'Student totals',
    'student.lastActivity': 'Last activity: {time}',
    'student.never': 'No attempts yet.',
    'student.computed': 'Data as of {time}',
    'student.allGroups': 'Totals over all of the student’s groups ({count}), compared with this group.',
    'student.allWork': 'The student’s all-time totals, attempts in their other groups included; compared with this group.',
    'student.levels': 'By level',
    'student.topics': 'By topic',

    'errors.forbidden': 'Access denied: this is outside your groups.',
    'errors.notFound': 'Not found: {detail}',
    'errors.network': 'The server cannot be reached. Check the connection and try again.',
    'errors.timeout': 'The server did not answer within {seconds} s. Try again.',
    'errors.generic': 'Error {status}: {detail}',
    'export.refused': 'Error {status}: {detail}',

    'filters.topics': 'Topics',
    'filters.allTopics': 'All topics',
    'filters.period': 'Period (UTC days)',
    'filters.from': 'From',
    'filters.to': 'To',

    'export.title': 'Export a report',
    'export.format': 'Format',
    'export.submit': 'Create the report',
    'export.recent': 'Recent exports',
    'export.none': 'No exports yet.',
    'export.quota': 'Exports left this hour: {remaining} of {limit}.',
    'export.quotaEmpty': 'No exports left this hour.',
    'export.rateLimited': 'Export limit reached ({limit} per hour). The next export is possible in {wait}.',
    'export.rateLimitedBare': 'Export limit reached. The next export is possible in {wait}.',
    'export.requested': 'The {format} report is queued.',
    'export.ready': 'The {format} report is ready.',
    'export.failed': 'The report could not be produced: {error}',
    'export.expiredStatus': 'The report has expired.',
    'export.invalid': 'Check the filters: {detail}',
    'export.periodOrder': 'The period starts after it ends.',
    'export.periodMissing': 'Enter both dates of the period.',
    'export.periodRange': 'The period’s dates must lie in the years {min} to {max}.',
    'export.field.from': '“From”',
    'export.field.to': '“To”',
    'export.field.period': 'period',
    'export.field.topics': 'topics',
    'export.field.format': 'format',
    'export.field.unknown': 'the server did not accept the request',
    'export.noTopics': 'Choose at least one topic, or tick “All topics”.',
    'export.download': 'Download {format}',
    'export.linkUntil': 'link valid until {time}',
    'export.summary': '{format} · {topics} · {from} — {to}',
    'export.allTopics': 'all topics',
    'export.topicCount.one': '{count} topic',
    'export.topicCount.other': '{count} topics',
    'export.status.pending': 'queued',
    'export.status.processing': 'in progress',
    'export.status.ready': 'ready',
    'export.status.failed': 'failed',
    'export.status.expired': 'expired',
  },
};

export const LANGS = Object.keys(STRINGS);
const STORAGE_KEY = 'reporting.lang';
let current = 'ru';

export function initialLang() {
  const saved = localStorage.getItem(STORAGE_KEY);
  return LANGS.includes(saved) ? saved : 'ru';
}

export function lang() {
  return current;
}

export function setLang(next) {
  current = LANGS.includes(next) ? next : 'ru';
  localStorage.setItem(STORAGE_KEY, current);
  document.documentElement.lang = current;
  document.title = t('app.title');
  for (const el of document.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of document.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const button of document.querySelectorAll('[data-lang]')) {
    button.setAttribute('aria-pressed', String(button.dataset.lang === current));
  }
}

/**
 * The string for `key` in the current language, with `{name}` placeholders filled in. A
 * parameter may be a function: it is called now, so it formats in the language of the moment.
 */
export function t(key, params = {}) {
  const template = STRINGS[current][key] ?? STRINGS.ru[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (match, name) => {
    if (!(name in params)) return match;
    const value = params[name];
    return String(typeof value === 'function' ? value() : value);
  });
}

const locale = () => (current === 'ru' ? 'ru-RU' : 'en-GB');

/** `key.one` / `.few` / `.many` / `.other` by the language's plural rules, with {count}. */
export function plural(key, count) {
  const form = new Intl.PluralRules(locale()).select(count);
  const table = STRINGS[current];
  return t(`${key}.${form}` in table ? `${key}.${form}` : `${key}.other`, { count });
}

export function percent(value, digits = 1) {
  if (value == null || Number.isNaN(value)) return '—';
  return new Intl.NumberFormat(locale(), {
    style: 'percent',
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(value);
}

export function number(value, digits = 0) {
  if (value == null || Number.isNaN(value)) return '—';
  return new Intl.NumberFormat(locale(), {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(value);
}

export function seconds(value) {
  if (value == null || Number.isNaN(value)) return '—';
  return new Intl.NumberFormat(locale(), {
    style: 'unit',
    unit: 'second',
    // "67.2s": en-GB's short form "67.2 secs" wrapped in a KPI card.
    unitDisplay: current === 'ru' ? 'short' : 'narrow',
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  }).format(value);
}

/** A duration in seconds as words: "2 часа 5 минут" / "2 hours 5 minutes". */
export function duration(totalSeconds) {
  const unit = (value, name) =>
    new Intl.NumberFormat(locale(), { style: 'unit', unit: name, unitDisplay: 'long' }).format(value);
  const s = Math.max(0, Math.ceil(totalSeconds));
  if (s < 60) return unit(s, 'second');
  const minutes = Math.ceil(s / 60);
  if (minutes < 60) return unit(minutes, 'minute');
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `${unit(hours, 'hour')} ${unit(rest, 'minute')}` : unit(hours, 'hour');
}

export function days(value) {
  return new Intl.NumberFormat(locale(), { style: 'unit', unit: 'day', unitDisplay: 'long', maximumFractionDigits: 0 })
    .format(Math.floor(value));
}

export function dateTime(iso) {
  if (!iso) return '—';
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(iso));
}

export function shortDate(iso) {
  if (!iso) return '—';
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeZone: 'UTC' }).format(new Date(iso));
}

/** "5 minutes ago" in the current language. */
export function ago(iso, now = Date.now()) {
  const diff = (new Date(iso).getTime() - now) / 1000;
  const format = new Intl.RelativeTimeFormat(locale(), { numeric: 'auto' });
  const steps = [
    [60, 'second'],
    [60, 'minute'],
    [24, 'hour'],
    [30, 'day'],
    [12, 'month'],
  ];
  let value = diff;
  for (const [size, name] of steps) {
    if (Math.abs(value) < size) return format.format(Math.round(value), name);
    value /= size;
  }
  return format.format(Math.round(value), 'year');
}

/** A difference of two shares as signed percentage points: "+4,2 п. п." / "−3.0 pp". */
export function signedPoints(value) {
  if (value == null || Number.isNaN(value)) return '—';
  const points = new Intl.NumberFormat(locale(), {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
    signDisplay: 'exceptZero',
  })
    .format(value * 100)
    .replace('-', '−');
  return current === 'ru' ? `${points} п. п.` : `${points} pp`;
}
