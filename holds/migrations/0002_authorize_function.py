"""billing_authorize_hold(): a new call's authorization in one statement (sql/0002_authorize_function.sql)."""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [("holds", "0001_initial")]

    operations = [sql_file(__file__, "0002_authorize_function")]
