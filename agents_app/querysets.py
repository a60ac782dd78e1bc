from __future__ import annotations

import datetime

from django.db import models
from django.utils import timezone


class AgentQuerySet(models.QuerySet):
    def online(self, now: datetime.datetime | None = None):
        from redflag.models import ServerSettings

        now = now or timezone.now()
        return self.filter(last_seen_at__gte=now - ServerSettings.current().offline_threshold)

    def offline(self, now: datetime.datetime | None = None):
        return self.exclude(pk__in=self.online(now).values("pk"))
