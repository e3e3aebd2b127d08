import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")

# A task that lost the database retries after this long (max_retries on each task).
DB_RETRY_COUNTDOWN_SECONDS = 10

app = Celery("billing_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
