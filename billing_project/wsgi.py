import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")
application = get_wsgi_application()

# gunicorn does not run Django's system checks; a service with missing or weak
# secrets must not start serving, so run them here and refuse to boot.
from django.core import checks  # noqa: E402

_errors = [m for m in checks.run_checks(include_deployment_checks=False) if m.is_serious()]
if _errors:
    raise SystemExit("Refusing to start:\n" + "\n".join(f"  {m.id}: {m.msg} {m.hint or ''}" for m in _errors))
