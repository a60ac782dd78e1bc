from django.apps import AppConfig


class EventsAppConfig(AppConfig):
    name = "events_app"
    verbose_name = "System events"

    def ready(self):
        from events_app import signals  # noqa: F401  (connects the log-in receivers)
        from events_app.api import schema  # noqa: F401  (registers the audit API's OpenAPI security scheme)
