"""The words of the PDF and XLSX reports in Russian (the default) and English, and the few
locale-dependent formats (decimal comma in Russian)."""

from dataclasses import dataclass
from datetime import UTC, date, datetime

from reporting.exports.schemas import Period
from reporting.locales import Locale


@dataclass(frozen=True, slots=True)
class Texts:
    locale: Locale
    title: str  # {group}
    period: str
    topics: str
    all_topics: str
    more_topics: str  # {count}
    generated_at: str
    data_as_of: str
    not_computed: str
    kpis: str
    total_attempts: str
    total_users: str
    avg_accuracy: str
    avg_score: str
    hint_usage_rate: str
    with_hints: str
    avg_hints: str
    avg_time_seconds: str
    by_topic: str
    by_student: str
    chart_title: str
    chart_capped: str  # {shown} {total}
    topic: str
    level: str
    student: str
    attempts: str
    correct: str
    accuracy: str
    score: str
    hints: str
    avg_time: str
    last_attempt: str
    users: str
    no_attempts: str
    page: str  # {page} {total}
    sheet_data: str
    sheet_summary: str
    group: str
    metric: str
    value: str

    def number(self, value: float, places: int = 2) -> str:
        text = f"{value:,.{places}f}".replace(",", "\u00a0")
        return text.replace(".", ",") if self.locale == "ru" else text

    def percent(self, share: float) -> str:
        return self.number(share * 100, 1) + "\u00a0%"

    def moment(self, value: datetime | date) -> str:
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return value.isoformat()

    def short_moment(self, value: datetime) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")

    def period_text(self, period: Period) -> str:
        return f"{self.moment(period.from_)} — {self.moment(period.to)}"


RU = Texts(
    locale="ru",
    title="Отчёт по группе «{group}»",
    period="Период",
    topics="Темы",
    all_topics="все темы",
    more_topics="и ещё {count}",
    generated_at="Сформирован",
    data_as_of="Данные аналитики на",
    not_computed="ещё не рассчитаны",
    kpis="Показатели группы за период",
    total_attempts="Попыток",
    total_users="Активных учеников",
    avg_accuracy="Средняя точность",
    avg_score="Средний балл ученика",
    hint_usage_rate="Доля попыток с подсказками",
    with_hints="С подсказками",
    avg_hints="Подсказок на попытку",
    avg_time_seconds="Среднее время попытки, с",
    by_topic="По темам",
    by_student="По ученикам",
    chart_title="Средняя точность по темам, %",
    chart_capped="показаны первые {shown} тем из {total}",
    topic="Тема",
    level="Уровень",
    student="Ученик",
    attempts="Попыток",
    correct="Верных",
    accuracy="Точность",
    score="Баллы",
    hints="Подсказки",
    avg_time="Время, с",
    last_attempt="Последняя попытка",
    users="Учеников",
    no_attempts="За выбранный период попыток нет.",
    page="Стр. {page} из {total}",
    sheet_data="Данные",
    sheet_summary="Сводка",
    group="Группа",
    metric="Показатель",
    value="Значение",
)

EN = Texts(
    locale="en",
    title="Group report: {group}",
    period="Period",
    topics="Topics",
    all_topics="all topics",
    more_topics="and {count} more",
    generated_at="Generated",
    data_as_of="Analytics data as of",
    not_computed="not computed yet",
    kpis="Group KPIs for the period",
    total_attempts="Attempts",
    total_users="Active students",
    avg_accuracy="Average accuracy",
    avg_score="Average score per student",
    hint_usage_rate="Attempts with hints",
    with_hints="With hints",
    avg_hints="Hints per attempt",
    avg_time_seconds="Average time per attempt, s",
    by_topic="By topic",
    by_student="By student",
    chart_title="Average accuracy by topic, %",
    chart_capped="the first {shown} of {total} topics shown",
    topic="Topic",
    level="Level",
    student="Student",
    attempts="Attempts",
    correct="Correct",
    accuracy="Accuracy",
    score="Score",
    hints="Hints",
    avg_time="Time, s",
    last_attempt="Last attempt",
    users="Students",
    no_attempts="No attempts in the selected period.",
    page="Page {page} of {total}",
    sheet_data="Data",
    sheet_summary="Summary",
    group="Group",
    metric="Metric",
    value="Value",
)


def texts_for(locale: Locale) -> Texts:
    return EN if locale == "en" else RU
