from typing import Any

from django.http import HttpRequest


class ReadOnlyMixin:
    """Admin for immutable records (ledger entries, receipts): view only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
