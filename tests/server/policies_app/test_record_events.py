"""events_app.services.record_events, the bulk twin of record_event the sweep uses: same rows, insertion order
kept in ``seq``, refused outside a transaction, a constant number of queries."""

from __future__ import annotations

import pytest
from django.db import transaction

from events_app.choices import Component, EventSubtype, EventType
from events_app.models import SystemEvent
from events_app.services import EventOutsideTransaction, record_event, record_events
from tests.server.policies_app.helpers import make_fleet

pytestmark = pytest.mark.django_db


def decision(agent, n: int) -> dict:
    return {"event_type": EventType.POLICY_DECISION, "subtype": EventSubtype.INFO, "component": Component.POLICY,
            "message": f"decision {n}", "agent": agent, "metadata": {"n": n}}


def test_bulk_events_keep_their_order_after_earlier_ones(django_assert_max_num_queries):
    agents = make_fleet(30)
    with transaction.atomic():
        record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO, component=Component.SERVER,
                     message="before")
        with django_assert_max_num_queries(4):
            assert record_events([decision(agent, n) for n, agent in enumerate(agents)]) == 30
    rows = list(SystemEvent.objects.order_by("seq").values_list("message", "hostname", "seq"))
    assert [m for m, _, _ in rows] == ["before"] + [f"decision {n}" for n in range(30)]
    assert rows[1][1] == "web-000"
    seqs = [s for _, _, s in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 31


@pytest.mark.django_db(transaction=True)
def test_bulk_events_refuse_to_be_written_outside_a_transaction():
    (agent,) = make_fleet(1)
    with pytest.raises(EventOutsideTransaction):
        record_events([decision(agent, 0)])
    assert record_events([]) == 0
