"""Owners' and staff's notification settings: webhook endpoints and balance alerts."""

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import BillingAccount
from accounts.money import BIGINT_MAX
from notifications.exceptions import InvalidNotificationSetting
from notifications.models import WEBHOOK_URL_MAX_LENGTH, BalanceAlert, EventType, WebhookEndpoint


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def endpoint_address_problem(url: str) -> str | None:
    """Why a webhook may not go to `url` now (no server-side request forgery), or None.

    Every address the host resolves to must be public, unless BILLING_WEBHOOKS_ALLOW_PRIVATE. Checked when the
    endpoint is saved and again before each delivery (a name may come to resolve elsewhere).
    """
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        return f"host {host!r} does not resolve ({exc})"
    if settings.BILLING_WEBHOOKS_ALLOW_PRIVATE:
        return None
    private = sorted({info[4][0] for info in infos if not _is_public(info[4][0])})
    if private:
        return f"host {host!r} resolves to a loopback, private or link-local address ({', '.join(private)})"
    return None


def validate_endpoint_url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidNotificationSetting("url must be an http(s) URL", field="url")
    if len(url) > WEBHOOK_URL_MAX_LENGTH:
        raise InvalidNotificationSetting(f"url must be at most {WEBHOOK_URL_MAX_LENGTH} characters", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise InvalidNotificationSetting(f"url does not parse: {exc}", field="url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidNotificationSetting("url must be an http(s) URL with a host", field="url")
    if parts.username or parts.password:
        raise InvalidNotificationSetting("url must not carry credentials", field="url")
    problem = endpoint_address_problem(url)
    if problem:
        raise InvalidNotificationSetting(f"url refused: {problem}", field="url")
    return url


def validate_event_types(events: object) -> list[str]:
    if not isinstance(events, list | tuple) or not events:
        raise InvalidNotificationSetting("events must be a non-empty list of event names", field="events")
    unknown = [e for e in events if e not in EventType.values]
    if unknown:
        raise InvalidNotificationSetting(
            f"unknown events {unknown!r}; known: {sorted(EventType.values)}", field="events"
        )
    return sorted(set(events))


@transaction.atomic
def webhook_endpoint_create(*, account: BillingAccount, url: str, events: Iterable[str]) -> WebhookEndpoint:
    """A new endpoint with its own `whsec_` secret (shown once to whoever made it)."""
    return WebhookEndpoint.objects.create(
        account=account, url=validate_endpoint_url(url), events=validate_event_types(list(events))
    )


@transaction.atomic
def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Stop sending to it; the endpoint and its delivery log stay (deliveries name it), disabled."""
    now = timezone.now()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        is_active=False, disabled_at=now, deleted_at=now, disabled_reason="deleted by its owner"
    )
    endpoint.deliveries.filter(status="pending").update(status="disabled", next_attempt_at=None)


def validate_threshold(threshold_credits: object) -> int:
    if isinstance(threshold_credits, bool) or not isinstance(threshold_credits, int):
        raise InvalidNotificationSetting("threshold_credits must be a positive integer", field="threshold_credits")
    if not 0 < threshold_credits <= BIGINT_MAX:
        raise InvalidNotificationSetting(
            f"threshold_credits must be between 1 and {BIGINT_MAX}", field="threshold_credits"
        )
    return threshold_credits


def balance_alert_create(*, account: BillingAccount, threshold_credits: int) -> BalanceAlert:
    threshold = validate_threshold(threshold_credits)
    try:
        with transaction.atomic():
            return BalanceAlert.objects.create(account=account, threshold_credits=threshold)
    except IntegrityError as exc:
        raise InvalidNotificationSetting(
            f"account already has an alert at {threshold} credits", field="threshold_credits"
        ) from exc


@transaction.atomic
def balance_alert_delete(*, alert: BalanceAlert) -> None:
    alert.delete()
