"""PDF (CONTRACT §6) with reportlab: title (group, period, filters, generation time, "data as
of"), the group's KPIs, an accuracy-by-topic bar chart, a per-topic and a per-student table
(LongTable, header repeated on every page) and "Page x of y" numbers.

PT Sans (designed for Cyrillic, with a real bold) is embedded as a TrueType subset, so the
Cyrillic text is both displayed and extractable.
"""

from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import fontpkg
from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    LongTable,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from reporting.exports.content import Kpis, ReportHeader, StudentSummary, TopicSummary
from reporting.exports.render.texts import Texts
from reporting.exports.schemas import ExportFilters

FONT, BOLD = "PTSans", "PTSans-Bold"
CHART_MAX_TOPICS = 30
FILTER_MAX_TOPICS = 20
_MARGIN = 15 * mm


def _register_fonts() -> None:
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    pdfmetrics.registerFont(TTFont(FONT, str(fontpkg.path("PT Sans"))))
    pdfmetrics.registerFont(TTFont(BOLD, str(fontpkg.path("PT Sans", weight=700))))
    pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=BOLD, italic=FONT, boldItalic=BOLD)


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("base", fontName=FONT, fontSize=9.5, leading=12.5)
    return {
        "body": base,
        "title": ParagraphStyle("title", base, fontName=BOLD, fontSize=17, leading=21),
        "h2": ParagraphStyle("h2", base, fontName=BOLD, fontSize=12.5, leading=16, spaceBefore=8),
        "cell": ParagraphStyle("cell", base, fontSize=8, leading=9.5),
        "note": ParagraphStyle("note", base, fontSize=8, textColor=colors.grey),
        "footer": ParagraphStyle("footer", base, fontSize=8, alignment=TA_RIGHT),
    }


def _numbered_canvas(template: str) -> type[Canvas]:
    """A canvas that holds every page until the end so each can say "Page x of y"."""

    class NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab is untyped
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for number, page in enumerate(self._pages, start=1):
                self.__dict__.update(page)
                self.setFont(FONT, 8)
                self.setFillColor(colors.grey)
                self.drawRightString(
                    A4[0] - _MARGIN, 8 * mm, template.format(page=number, total=total)
                )
                super().showPage()
            super().save()

    return NumberedCanvas


_TABLE_STYLE = TableStyle(
    [
        ("FONT", (0, 0), (-1, -1), FONT, 8),
        ("FONT", (0, 0), (-1, 0), BOLD, 8),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8edf3")),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7f8fa")]),
        ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.HexColor("#8a99ad")),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
)


def _table(rows: list[list[Any]], widths: list[float], *, text_columns: int) -> LongTable:
    table = LongTable(rows, colWidths=widths, repeatRows=1)
    style = TableStyle(_TABLE_STYLE.getCommands())
    style.add("ALIGN", (0, 0), (text_columns - 1, -1), "LEFT")
    table.setStyle(style)
    return table


def _chart(topics: list[TopicSummary], texts: Texts, width: float) -> Drawing:
    shown = topics[:CHART_MAX_TOPICS]
    bar = 14.0
    height = bar * len(shown) + 46
    drawing = Drawing(width, height)
    chart = HorizontalBarChart()
    chart.x, chart.y = 150, 22
    chart.width, chart.height = width - 170, bar * len(shown)
    # Horizontal charts draw the first category at the bottom: reverse to read top-down.
    chart.data = [[round(t.kpis.avg_accuracy * 100, 1) for t in reversed(shown)]]
    chart.categoryAxis.categoryNames = [
        t.topic_name if len(t.topic_name) <= 38 else t.topic_name[:37] + "…"
        for t in reversed(shown)
    ]
    chart.categoryAxis.labels.fontName = FONT
    chart.categoryAxis.labels.fontSize = 7
    chart.categoryAxis.labels.boxAnchor = "e"
    chart.categoryAxis.labels.dx = -4
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 100, 20
    chart.valueAxis.labels.fontName = FONT
    chart.valueAxis.labels.fontSize = 7
    chart.bars[0].fillColor = colors.HexColor("#3b6ea5")
    chart.bars[0].strokeColor = None
    chart.barLabelFormat = lambda value: texts.number(value, 1)  # "71,4" in Russian
    chart.barLabels.fontName = FONT
    chart.barLabels.fontSize = 6.5
    chart.barLabels.boxAnchor = "w"
    chart.barLabels.dx = 2
    drawing.add(chart)
    drawing.add(String(0, height - 10, texts.chart_title, fontName=BOLD, fontSize=9))
    return drawing


def render_pdf(
    path: Path,
    *,
    header: ReportHeader,
    filters: ExportFilters,
    kpis: Kpis,
    topics: list[TopicSummary],
    students: list[StudentSummary],
    generated_at: datetime,
    texts: Texts,
) -> int:
    """Write the report to `path`; returns the number of pages."""
    _register_fonts()
    styles = _styles()
    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN + 4 * mm,
        title=texts.title.format(group=header.group_name),
        author="Reporting & Analytics",
        lang=texts.locale,
    )
    width = A4[0] - 2 * _MARGIN

    def para(text: str, style: str = "body") -> Paragraph:
        return Paragraph(text, styles[style])

    topic_names = header.topic_names[:FILTER_MAX_TOPICS]
    topics_text = ", ".join(escape(name) for name in topic_names) or texts.all_topics
    if len(header.topic_names) > FILTER_MAX_TOPICS:
        topics_text += " " + texts.more_topics.format(
            count=len(header.topic_names) - FILTER_MAX_TOPICS
        )
    as_of = texts.moment(header.data_as_of) if header.data_as_of else texts.not_computed
    story: list[Flowable] = [
        para(escape(texts.title.format(group=header.group_name)), "title"),
        Spacer(1, 4),
        para(f"<b>{texts.period}:</b> {escape(texts.period_text(filters.period))}"),
        para(f"<b>{texts.topics}:</b> {topics_text}"),
        para(f"<b>{texts.generated_at}:</b> {texts.moment(generated_at)}"),
        para(f"<b>{texts.data_as_of}:</b> {as_of}"),
        para(texts.kpis, "h2"),
    ]
    # Means over no attempts are not 0: they do not exist.
    measured = kpis.total_attempts > 0
    kpi_rows = [
        [texts.total_attempts, f"{kpis.total_attempts:,}".replace(",", "\u00a0")],
        [texts.total_users, str(kpis.total_users)],
        [texts.avg_accuracy, texts.percent(kpis.avg_accuracy) if measured else "—"],
        [texts.avg_score, texts.number(kpis.avg_score) if measured else "—"],
        [texts.hint_usage_rate, texts.percent(kpis.hint_usage_rate) if measured else "—"],
        [texts.avg_hints, texts.number(kpis.avg_hints) if measured else "—"],
        [texts.avg_time_seconds, texts.number(kpis.avg_time_seconds, 1) if measured else "—"],
    ]
    kpi_table = Table(kpi_rows, colWidths=[75 * mm, 40 * mm], hAlign="LEFT")
    kpi_table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), FONT, 9.5),
                ("FONT", (1, 0), (1, -1), BOLD, 9.5),
                ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, -2), 0.3, colors.HexColor("#d5dbe3")),
            ]
        )
    )
    story.append(kpi_table)

    if not topics:
        story += [Spacer(1, 8), para(texts.no_attempts)]
    else:
        chart: list[Flowable] = [Spacer(1, 10), _chart(topics, texts, width)]
        if len(topics) > CHART_MAX_TOPICS:
            chart.append(
                para(texts.chart_capped.format(shown=CHART_MAX_TOPICS, total=len(topics)), "note")
            )
        story.append(KeepTogether(chart))
        story.append(para(texts.by_topic, "h2"))
        topic_rows: list[list[Any]] = [
            [
                texts.topic,
                texts.level,
                texts.users,
                texts.attempts,
                texts.accuracy,
                texts.score,
                texts.with_hints,
                texts.avg_time,
            ]
        ]
        topic_rows += [
            [
                para(escape(t.topic_name), "cell"),
                para(escape(t.level_name), "cell"),
                str(t.kpis.total_users),
                str(t.kpis.total_attempts),
                texts.percent(t.kpis.avg_accuracy),
                texts.number(t.kpis.avg_score),
                texts.percent(t.kpis.hint_usage_rate),
                texts.number(t.kpis.avg_time_seconds, 1),
            ]
            for t in topics
        ]
        # The level column holds a one-word level name whole (18 mm broke «Натуральн/ые»).
        mm_widths = [44, 28, 17, 16, 17, 15, 23, 18]
        topic_rows[0] = [para(f"<b>{escape(h)}</b>", "cell") for h in topic_rows[0]]
        story.append(_table(topic_rows, [w * mm for w in mm_widths], text_columns=2))

        story.append(para(texts.by_student, "h2"))
        student_rows: list[list[Any]] = [
            [
                para(f"<b>{escape(h)}</b>", "cell")
                for h in (
                    texts.student,
                    texts.attempts,
                    texts.correct,
                    texts.accuracy,
                    texts.score,
                    texts.hints,
                    texts.avg_time,
                    texts.last_attempt,
                )
            ]
        ]
        student_rows += [
            [
                para(escape(s.display_name), "cell"),
                str(s.attempts),
                str(s.correct),
                texts.percent(s.accuracy),
                texts.number(s.score),
                str(s.hints_used),
                texts.number(s.avg_time_seconds, 1),
                texts.short_moment(s.last_attempt_at),
            ]
            for s in students
        ]
        mm_widths = [50, 17, 16, 17, 17, 19, 15, 27]
        story.append(_table(student_rows, [w * mm for w in mm_widths], text_columns=1))

    doc.build(story, canvasmaker=_numbered_canvas(texts.page))
    return int(doc.page)
