"""Export rendering (events_app/rendering.py): a CSV cell never becomes a spreadsheet formula.

The export views are tested in test_views.py.
"""

from __future__ import annotations

import csv
import io

from django.http import StreamingHttpResponse

from tests.server.events_app.helpers import bulk_events


def body(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


def test_csv_cells_cannot_become_spreadsheet_formulas(auditor_client):
    bulk_events(1, event_type="agent_reboot", message='=HYPERLINK("http://evil")')
    response = auditor_client.get("/audit/events/export.csv?event_type=agent_reboot")
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert rows[0]["message"] == "'=HYPERLINK(\"http://evil\")"
