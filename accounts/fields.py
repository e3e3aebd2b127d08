"""The API field for an account: its public UUID in, the BillingAccount out."""

from rest_framework import serializers

from accounts.models import BillingAccount
from accounts.selectors import account_lookup


class AccountField(serializers.UUIDField):
    """An account's public UUID, turned into the BillingAccount (400 on the field if there is none)."""

    def to_internal_value(self, data: object) -> BillingAccount:
        account = account_lookup(reference=super().to_internal_value(data))
        if account is None:
            raise serializers.ValidationError("no billing account has this id")
        return account

    def to_representation(self, value: object) -> str:
        return str(value.public_id if isinstance(value, BillingAccount) else value)
