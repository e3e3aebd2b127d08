"""Payer bindings and credit holds now live in the payers and holds apps (payers.0001, holds.0001).

State only: the tables (`accounts_apikeybinding`, `accounts_teambinding`, `accounts_runbinding`,
`accounts_enduseralias`, `accounts_credithold`), their rows, constraints and triggers stay where they are.
The content types follow the models, so staff permissions granted on them keep working.
"""

from django.db import migrations

MOVED = {
    "apikeybinding": "payers",
    "teambinding": "payers",
    "runbinding": "payers",
    "enduseralias": "payers",
    "credithold": "holds",
}


def move_content_types(apps, schema_editor, *, forward: bool = True) -> None:  # noqa: ANN001
    content_type = apps.get_model("contenttypes", "ContentType")
    for model, app in MOVED.items():
        old, new = ("accounts", app) if forward else (app, "accounts")
        content_type.objects.using(schema_editor.connection.alias).filter(app_label=old, model=model).update(
            app_label=new
        )


def move_content_types_back(apps, schema_editor) -> None:  # noqa: ANN001
    move_content_types(apps, schema_editor, forward=False)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_held_total"),
        ("payers", "0001_initial"),
        ("holds", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="CreditHold"),
                migrations.DeleteModel(name="ApiKeyBinding"),
                migrations.DeleteModel(name="TeamBinding"),
                migrations.DeleteModel(name="RunBinding"),
                migrations.DeleteModel(name="EndUserAlias"),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]
