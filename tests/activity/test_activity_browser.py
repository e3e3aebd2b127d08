"""A real browser opens the activity page, filters by model and downloads the CSV (Playwright + Chromium)."""

import csv
import io
from typing import Any

import pytest

from tests.activity.test_activity import _bill, _record
from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory
from tests.invoices.test_browser import LAUNCH_ARGS, PASSWORD, chromium_path

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_activity_page_filters_by_model_and_downloads_the_csv(live_server: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    owner = UserFactory(username="grace")
    owner.set_password(PASSWORD)
    owner.save()
    account = BillingAccountFactory(owner=owner)
    EndUserAliasFactory(account=account, end_user="act-user")
    _bill([_record(n, model="gpt-4o" if n < 2 else "claude-haiku") for n in range(5)])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS, headless=True)
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.goto(f"{live_server.url}/billing/activity/")
            page.fill("input[name=username]", "grace")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Activity")
            expect(page.locator("tr[data-row=billed]")).to_have_count(5)

            page.fill("input#model", "gpt-4o")
            page.click("button[data-action=filter]")
            expect(page.locator("tr[data-row=billed]")).to_have_count(2)
            assert set(page.locator("tr[data-row=billed]").evaluate_all("rows => rows.map(r => r.dataset.model)")) == {
                "gpt-4o"
            }

            with page.expect_download() as download_info:
                page.click("a[data-link=csv]")
            download = download_info.value
            rows = list(csv.DictReader(io.StringIO(open(download.path(), encoding="utf-8").read())))
            assert [r["model_group"] for r in rows] == ["gpt-4o", "gpt-4o"]
            assert download.suggested_filename == f"activity-{account.public_id}.csv"
        finally:
            browser.close()
