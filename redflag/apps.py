from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class RedflagConfig(AppConfig):
    name = "redflag"
    verbose_name = "Server"
    default = True


class RedFlagAdminConfig(admin_apps.AdminConfig):
    """Django's admin app, with RedFlag's site (rate-limited log-in) as admin.site."""

    default_site = "redflag.admin_site.RedFlagAdminSite"
    default = False
