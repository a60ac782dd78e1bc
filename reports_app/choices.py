"""Reports vocabulary: the only place these strings are defined."""

from django.db import models


class ReportStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ReportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    PDF = "pdf", "PDF"


# The content type each download is served with, and that a delivered attachment carries.
FORMAT_MIME = {ReportFormat.CSV: "text/csv", ReportFormat.PDF: "application/pdf"}
