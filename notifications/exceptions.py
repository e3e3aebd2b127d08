from accounts.exceptions import FieldError


class InvalidNotificationSetting(FieldError):
    """An endpoint or alert the service refuses; `field` names the input at fault."""
