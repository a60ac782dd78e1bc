from django.apps import AppConfig


class AdvisoriesAppConfig(AppConfig):
    name = "advisories_app"
    verbose_name = "Advisories"
