from django.apps import AppConfig


class AccountsAppConfig(AppConfig):
    name = "accounts_app"
    verbose_name = "People and access"

    def ready(self):
        # A deleted agent group narrows role grants: recorded as role changes.
        from accounts_app import signals as role_signals  # noqa: F401, PLC0415

        # Sign-in: allauth's MFA signals become events; the role-map check runs with manage.py check.
        from accounts_app.signin import checks, signals  # noqa: F401, PLC0415
