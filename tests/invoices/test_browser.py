"""A real browser (Playwright driving Debian's Chromium) against a live server.

A user logs in and reads the invoice; a staff member logs in to the admin,
lists receipts, finds one by call id and grants credits. The totals shown are
checked against the ledger, and screenshots go to artifacts/screenshots/
(git-ignored). Playwright cannot download its own browser here: the test
uses /usr/bin/chromium (or $CHROMIUM_PATH), which bin/test installs through
bin/bootstrap-browser. Without it the test fails and says so; it never skips.
"""

import csv
import io
import os
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import grant_credits
from integrations.litellm.records import parse_usage_record
from invoices.formatting import format_credits, format_usd
from invoices.selectors import Invoice, current_period, invoice_for_account
from receipts.facts import UsageFact
from receipts.models import ChargeReceipt
from receipts.services import commit_usage_facts
from tests.books import ledger_total
from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory, litellm_record

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"
PASSWORD = "correct-horse-battery"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium_path() -> str:
    candidate = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(candidate).is_file() or not os.access(candidate, os.X_OK):
        pytest.fail(
            f"Chromium is not installed (looked for {candidate!r}). The browser test needs Debian's chromium: "
            "run bin/bootstrap-browser (as root it runs `apt-get install chromium`), or install it yourself and "
            "set CHROMIUM_PATH to its executable.",
            pytrace=False,
        )
    return candidate


def bill(end_user: str, cost: str, model_group: str, tokens: int) -> None:
    fact = parse_usage_record(
        litellm_record(
            end_user=end_user,
            cost=Decimal(cost),
            model_group=model_group,
            prompt_tokens=tokens // 2,
            completion_tokens=tokens - tokens // 2,
            total_tokens=tokens,
        )
    )
    assert isinstance(fact, UsageFact)
    [outcome] = commit_usage_facts(facts=[fact])
    assert outcome.outcome == "processed"


@pytest.fixture
def books() -> dict[str, Any]:
    """A user with an account that has credits and usage this month, and a staff member."""
    owner = UserFactory(username="ada")
    account = BillingAccountFactory(owner=owner, name="Analytical Engines Ltd")
    EndUserAliasFactory(account=account, end_user="ada-gateway")
    grant_credits(account=account, amount_credits=250_000, reason="top_up", idempotency_key="browser-top-up")
    for cost, group, tokens in [
        ("0.012345", "gpt-4o", 1200),
        ("0.000135", "gpt-4o-mini", 300),
        ("0.03", "claude-3-5-sonnet", 4000),
        ("0.0000135", "gpt-4o-mini", 30),
    ]:
        bill("ada-gateway", cost, group, tokens)
    staff = UserFactory(username="operator", is_staff=True, is_superuser=True)
    return {"owner": owner, "account": account, "staff": staff}


def test_invoice_and_admin_in_a_real_browser(live_server: Any, books: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    account: BillingAccount = books["account"]
    period = current_period()
    invoice: Invoice = invoice_for_account(account=account, period=period)
    assert invoice.used_credits == 12_345 + 135 + 30_000 + 14
    receipts = list(ChargeReceipt.objects.filter(account=account).order_by("id"))
    target = receipts[2]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shots = {
        "invoice": SCREENSHOTS / "invoice.png",
        "receipts": SCREENSHOTS / "admin-receipts.png",
        "search": SCREENSHOTS / "admin-receipt-search.png",
        "grant": SCREENSHOTS / "admin-grant-credits.png",
    }
    for shot in shots.values():
        shot.unlink(missing_ok=True)
    grant_key = ""

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS, headless=True)
        try:
            # --- the user: log in, read the invoice --------------------------------------------
            user = browser.new_context(viewport={"width": 1280, "height": 900})
            page = user.new_page()
            page.goto(f"{live_server.url}/billing/invoice/")
            expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/billing/invoice/")
            page.fill("input[name=username]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{live_server.url}/billing/invoice/")
            expect(page.locator("h1")).to_have_text(f"Invoice {period.label}")

            def shown(field: str) -> tuple[str, str]:
                cell = page.locator(f"[data-field={field}]")
                return cell.get_attribute("data-value") or "", cell.inner_text().strip()

            assert shown("opening_credits") == (str(invoice.opening_credits), format_credits(invoice.opening_credits))
            assert shown("added_credits") == (str(invoice.added_credits), format_credits(invoice.added_credits))
            assert shown("used_credits") == (str(invoice.used_credits), format_credits(invoice.used_credits))
            assert shown("closing_credits") == (str(invoice.closing_credits), format_credits(invoice.closing_credits))
            assert shown("used_usd")[1] == format_usd(invoice.used_usd) == "$0.042494"
            assert shown("closing_usd")[1] == format_usd(invoice.closing_usd)
            expect(page.locator("[data-field=total_used_credits]")).to_have_text(format_credits(invoice.used_credits))
            rows = page.locator("tr[data-line=model_group]")
            expect(rows).to_have_count(3)
            assert sum(int(rows.nth(i).get_attribute("data-credits") or 0) for i in range(3)) == invoice.used_credits
            bars = page.locator("svg[data-chart=daily-usage] rect.bar")
            expect(bars).to_have_count(len(invoice.by_day))
            today = datetime.now(UTC).date().isoformat()
            assert page.locator(f"rect.bar[data-day='{today}']").get_attribute("data-credits") == str(
                invoice.used_credits
            )
            assert page.locator(f"rect.bar[data-day='{today}']").bounding_box()["height"] > 10
            page.screenshot(path=str(shots["invoice"]), full_page=True)

            # The CSV link and the JSON API (same session) give the same totals.
            csv_href = page.locator("a[data-link=csv]").get_attribute("href") or ""
            csv_text = user.request.get(f"{live_server.url}{csv_href}").text()
            lines = {(r["section"], r["item"]): r for r in csv.DictReader(io.StringIO(csv_text))}
            assert int(lines["used", "total"]["credits"]) == invoice.used_credits
            assert int(lines["balance", "closing"]["credits"]) == invoice.closing_credits
            api = user.request.get(f"{live_server.url}/api/billing/invoice?period={period.label}").json()
            assert api["used_credits"] == invoice.used_credits
            assert api["closing_balance_credits"] == invoice.closing_credits
            balance = user.request.get(f"{live_server.url}/billing/balance").json()
            assert balance["balance_credits"] == invoice.closing_credits

            # A user is not staff: the admin sends them to its login page.
            page.goto(f"{live_server.url}/admin/")
            assert "/admin/login/" in page.url
            user.close()

            # --- staff: the receipt list, a search by call id, a grant -------------------------
            staff = browser.new_context(viewport={"width": 1600, "height": 900})
            admin = staff.new_page()
            admin.goto(f"{live_server.url}/admin/receipts/chargereceipt/")
            expect(admin).to_have_url(f"{live_server.url}/admin/login/?next=/admin/receipts/chargereceipt/")
            admin.fill("input[name=username]", "operator")
            admin.fill("input[name=password]", PASSWORD)
            admin.click("input[type=submit]")
            expect(admin).to_have_url(f"{live_server.url}/admin/receipts/chargereceipt/")
            result_rows = admin.locator("#result_list tbody tr")
            # Playwright's expect waits for the page to settle; a bare count() raced the admin's render.
            expect(result_rows).to_have_count(len(receipts))
            charged = [int(cell.inner_text()) for cell in admin.locator("#result_list td.field-charged_credits").all()]
            assert sum(charged) == invoice.used_credits
            expect(admin.locator("#changelist-filter")).to_contain_text("claude-3-5-sonnet")
            admin.screenshot(path=str(shots["receipts"]), full_page=True)

            admin.fill("#searchbar", target.litellm_call_id)
            admin.press("#searchbar", "Enter")
            expect(admin.locator("#result_list tbody tr")).to_have_count(1)
            expect(admin.locator("#result_list")).to_contain_text(target.litellm_call_id)
            admin.screenshot(path=str(shots["search"]), full_page=True)

            admin.goto(f"{live_server.url}/admin/accounts/billingaccount/{account.pk}/change/")
            admin.click("a.grant-credits")
            grant_key = admin.locator("input[name=idempotency_key]").get_attribute("value") or ""
            admin.select_option("select[name=reason]", "grant")
            admin.fill("input[name=amount_credits]", "1000")
            admin.fill("textarea[name=memo]", "goodwill after an outage")
            admin.screenshot(path=str(shots["grant"]), full_page=True)
            admin.click("#grant-credits-form input[type=submit]")
            expect(admin.locator("ul.messagelist")).to_contain_text("Recorded: Grant of +1,000 credits")
            staff.close()
        finally:
            browser.close()

    for shot in shots.values():
        assert shot.is_file() and shot.stat().st_size > 10_000, shot
    entry = CreditLedgerEntry.objects.get(idempotency_key=grant_key)
    assert entry.amount_credits == 1000 and entry.created_by == books["staff"]
    account.refresh_from_db()
    assert account.balance_credits == invoice.closing_credits + 1000 == ledger_total(account=account)
