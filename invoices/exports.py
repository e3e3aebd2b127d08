"""The invoice as CSV lines: the same numbers, in the same order, as the page."""

import csv
import io
from collections.abc import Iterator

from invoices.formatting import usd_plain
from invoices.selectors import Invoice

CSV_HEADER = [
    "period",
    "account",
    "section",
    "item",
    "count",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "credits",
    "usd",
    "added_credits",
    "closing_balance_credits",
    "label",
    "others_count",
]


def invoice_csv_rows(invoice: Invoice) -> Iterator[list[str]]:
    """Sections: balance (opening/closing), added (by reason), used, model_group, day, api_key, end_user.

    `count` is calls for usage lines and entries for added lines; `credits` is
    what the line adds or uses (used credits are positive numbers). The
    api_key (item: the key hash) and end_user sections list the top N, then an
    "others" line whose item is empty and whose `others_count` says how many it folds.
    """
    head = [invoice.period.label, str(invoice.account.public_id)]

    def line(section: str, item: str, *values: object) -> list[str]:
        row = [*head, section, item, *("" if v is None else str(v) for v in values)]
        return row + [""] * (len(CSV_HEADER) - len(row))

    yield line("balance", "opening", None, None, None, None, invoice.opening_credits, usd_plain(invoice.opening_usd))
    for reason in invoice.added_by_reason:
        yield line("added", reason.reason, reason.entries, None, None, None, reason.credits, usd_plain(reason.usd))
    yield line("added", "total", None, None, None, None, invoice.added_credits, usd_plain(invoice.added_usd))
    totals = invoice.totals
    yield line(
        "used",
        "total",
        totals.calls,
        totals.prompt_tokens,
        totals.completion_tokens,
        totals.total_tokens,
        invoice.used_credits,
        usd_plain(invoice.used_usd),
    )
    yield line("balance", "closing", None, None, None, None, invoice.closing_credits, usd_plain(invoice.closing_usd))
    for group in invoice.by_model_group:
        yield line(
            "model_group",
            group.model_group,
            group.calls,
            group.prompt_tokens,
            group.completion_tokens,
            group.total_tokens,
            group.credits,
            usd_plain(group.usd),
        )
    for day in invoice.by_day:
        yield line(
            "day",
            day.day.isoformat(),
            day.calls,
            day.prompt_tokens,
            day.completion_tokens,
            day.total_tokens,
            day.used_credits,
            usd_plain(day.used_usd),
            day.added_credits,
            day.closing_balance_credits,
        )
    for section, lines in (("api_key", invoice.by_api_key), ("end_user", invoice.by_end_user)):
        for payer in lines:
            yield line(
                section,
                payer.key or "",
                payer.calls,
                payer.prompt_tokens,
                payer.completion_tokens,
                payer.total_tokens,
                payer.credits,
                usd_plain(payer.usd),
                None,
                None,
                payer.label,
                payer.others_count if payer.is_others else None,
            )


def invoice_csv(invoice: Invoice) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(invoice_csv_rows(invoice))
    return buffer.getvalue()
