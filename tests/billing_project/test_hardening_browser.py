"""The Content-Security-Policy breaks nothing: Chromium reports no violation on the admin and invoice pages,
and the admin's own JavaScript (the inline "Add another" link) still runs."""

from typing import Any

import pytest

from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory
from tests.invoices.test_browser import LAUNCH_ARGS, PASSWORD, chromium_path

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_pages_run_under_the_content_security_policy(live_server: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    owner = UserFactory(username="grace")
    account = BillingAccountFactory(owner=owner, name="Compilers Ltd")
    EndUserAliasFactory(account=account, end_user="grace-gateway")
    UserFactory(username="csp-operator", is_staff=True, is_superuser=True)
    violations: list[str] = []

    def logged_in(browser: Any, login_path: str, username: str) -> Any:
        """A new page, watched for CSP violations, logged in as `username` at `login_path`."""
        page = browser.new_page()
        page.on(
            "console",
            lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
        )
        page.goto(f"{live_server.url}{login_path}")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("[type=submit]")
        return page

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS)
        try:
            user = logged_in(browser, "/accounts/login/", "grace")
            expect(user.locator("body")).to_contain_text("Compilers Ltd")
            invoice = user.goto(f"{live_server.url}/billing/invoice/")
            assert invoice is not None and "default-src 'self'" in invoice.headers["content-security-policy"]

            admin = logged_in(browser, "/admin/login/", "csp-operator")
            admin.goto(f"{live_server.url}/admin/accounts/billingaccount/{account.pk}/change/")
            # inlines.js adds these links (one per editable inline): admin scripts run under script-src 'self'.
            expect(admin.locator("#aliases-group .add-row a")).to_be_visible()
            admin.goto(f"{live_server.url}/admin/receipts/chargereceipt/")
            expect(admin.locator("#changelist")).to_be_visible()
        finally:
            browser.close()
    assert violations == []
