"""The languages the service speaks to people: Russian first, English on request (CONTRACT §1).

The dashboard, the PDF and the notifications each hold their own words; this is only which
languages there are. The database's CHECK on report_exports.locale (migration 0001) says the same.
"""

from typing import Literal, get_args

Locale = Literal["ru", "en"]
LOCALES: tuple[Locale, ...] = get_args(Locale)
DEFAULT_LOCALE: Locale = "ru"
