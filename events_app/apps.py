from django.apps import AppConfig


class EventsAppConfig(AppConfig):
    name = "events_app"
    verbose_name = "System events"

    def ready(self):
        # Receivers connect on import, and only once the app registry is ready.
        from events_app import signals  # noqa: F401, PLC0415
