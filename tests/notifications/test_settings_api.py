"""Webhook endpoints and balance alerts through the internal API, the owners' page and the admin; bad input is a
400 naming the field and saves nothing; private addresses are refused unless BILLING_WEBHOOKS_ALLOW_PRIVATE."""

import pytest
from django.test import Client

from accounts.models import BillingAccount
from notifications.models import BalanceAlert, BillingEvent, WebhookDelivery, WebhookEndpoint
from notifications.services import webhook_endpoint_create
from tests.factories import BillingAccountFactory, UserFactory

pytestmark = pytest.mark.django_db
ENDPOINTS = "/api/internal/billing/webhook-endpoints"
ALERTS = "/api/internal/billing/balance-alerts"


@pytest.fixture
def target(db) -> BillingAccount:
    return BillingAccountFactory()


def test_endpoints_are_created_listed_and_deleted(internal_client, target: BillingAccount) -> None:
    made = internal_client.post(
        ENDPOINTS,
        {"account": str(target.public_id), "url": "http://127.0.0.1:9/hook", "events": ["balance.low"]},
        format="json",
    )
    assert made.status_code == 201, made.json()
    body = made.json()
    assert body["secret"].startswith("whsec_") and body["events"] == ["balance.low"]
    listed = internal_client.get(ENDPOINTS, {"account": str(target.public_id)}).json()
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
    assert internal_client.delete(f"{ENDPOINTS}/{body['id']}").status_code == 204
    assert internal_client.get(ENDPOINTS, {"account": str(target.public_id)}).json() == []
    assert internal_client.delete(f"{ENDPOINTS}/{body['id']}").status_code == 404


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "http://" + "a" * 2000 + ".com/"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"events": ["balance.lowish"]}, "events"),
        ({"events": []}, "events"),
        ({"account": "00000000-0000-0000-0000-000000000000"}, "account"),
    ],
)
def test_bad_endpoints_name_the_field_and_save_nothing(internal_client, target, changes, field) -> None:
    body = {"account": str(target.public_id), "url": "http://127.0.0.1:9/hook", "events": ["balance.low"], **changes}
    refused = internal_client.post(ENDPOINTS, body, format="json")
    assert refused.status_code == 400
    answer = refused.json()
    assert answer.get("field") == field or field in answer.get("fields", {}), answer
    assert not WebhookEndpoint.objects.exists()


def test_private_addresses_are_refused_unless_allowed(internal_client, target, settings) -> None:
    settings.BILLING_WEBHOOKS_ALLOW_PRIVATE = False
    for url in ("http://127.0.0.1/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest", "http://[::1]/x"):
        refused = internal_client.post(
            ENDPOINTS, {"account": str(target.public_id), "url": url, "events": ["balance.low"]}, format="json"
        )
        assert refused.status_code == 400 and refused.json()["field"] == "url", url
        assert "private" in refused.json()["error"] or "loopback" in refused.json()["error"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("threshold", [0, -5, "5", 1.5, True, None, 2**63])
def test_thresholds_must_be_positive_integers(internal_client, target, threshold) -> None:
    refused = internal_client.post(
        ALERTS, {"account": str(target.public_id), "threshold_credits": threshold}, format="json"
    )
    assert refused.status_code == 400
    answer = refused.json()
    assert answer.get("field") == "threshold_credits" or "threshold_credits" in answer.get("fields", {}), answer
    assert not BalanceAlert.objects.exists()


def test_alerts_are_created_listed_and_deleted(internal_client, target) -> None:
    made = internal_client.post(ALERTS, {"account": str(target.public_id), "threshold_credits": 500}, format="json")
    assert made.status_code == 201
    again = internal_client.post(ALERTS, {"account": str(target.public_id), "threshold_credits": 500}, format="json")
    assert again.status_code == 400 and again.json()["field"] == "threshold_credits"
    listed = internal_client.get(ALERTS, {"account": str(target.public_id)}).json()
    assert [a["threshold_credits"] for a in listed] == [500]
    assert internal_client.delete(f"{ALERTS}/{listed[0]['id']}").status_code == 204
    assert not BalanceAlert.objects.exists()


def test_owners_manage_their_own_on_the_settings_page(target: BillingAccount) -> None:
    owner = Client()
    owner.force_login(target.owner)
    page = "/billing/settings/notifications"
    assert owner.get(page).status_code == 200
    added = owner.post(page, {"action": "add_alert", "threshold_credits": "2500"}, follow=True)
    assert added.status_code == 200 and 'data-alert="2500"' in added.content.decode()
    bad = owner.post(page, {"action": "add_alert", "threshold_credits": "-1"})
    assert bad.status_code == 400 and 'data-error-field="threshold_credits"' in bad.content.decode()
    made = owner.post(
        page, {"action": "add_endpoint", "url": "http://127.0.0.1:9/h", "events": ["balance.low"]}, follow=True
    )
    assert "whsec_" in made.content.decode()  # the secret, shown once
    other = Client()
    other.force_login(UserFactory())
    assert other.get(page, {"account": str(target.public_id)}).status_code == 404
    assert list(BalanceAlert.objects.values_list("threshold_credits", flat=True)) == [2500]


def test_staff_replay_a_delivery_from_the_admin(target: BillingAccount) -> None:
    endpoint = webhook_endpoint_create(account=target, url="http://127.0.0.1:9/h", events=["payment.succeeded"])
    event = BillingEvent.objects.create(
        account=target, type="payment.succeeded", data={}, created_at="2026-12-01T00:00Z"
    )
    delivery = WebhookDelivery.objects.create(
        event=event, endpoint=endpoint, status="failed", attempts=12, created_at=event.created_at
    )
    staff = Client()
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    listing = "/admin/notifications/webhookdelivery/"
    assert staff.get(listing).status_code == 200
    staff.post(listing, {"action": "replay", "_selected_action": [delivery.pk]})
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.next_attempt_at is not None
    assert staff.get(f"/admin/notifications/billingevent/{event.pk}/change/").status_code == 200
    refused = staff.post(
        "/admin/notifications/webhookendpoint/add/",
        {"account": target.pk, "url": "gopher://x", "events": ["balance.low"]},
    )
    assert refused.status_code == 200 and "http(s)" in refused.content.decode()
