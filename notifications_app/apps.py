import logging

from django.apps import AppConfig


class NotificationsAppConfig(AppConfig):
    name = "notifications_app"
    verbose_name = "Notifications"

    def ready(self):
        # Receivers connect on import, and only once the app registry is ready.
        from notifications_app import hooks, senders  # noqa: F401, PLC0415

        senders.install_log_filters()

        # Apprise's own log lines name destination URLs (its privacy mode still shows an ntfy token given
        # as the user name); keep them out of the server's log. What a failure says is captured per
        # delivery, scrubbed of secrets (senders.send_apprise, vault.scrub). The HTTP libraries' request
        # lines are dropped while a notification is sent (senders.install_log_filters).
        logging.getLogger("apprise").propagate = False
