"""Migrations that move data between apps keep every row (agents_app/migrations, tokens_app/migrations)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("agents_app", "0005_bulk_update_agent"), ("tokens_app", "0002_signing_key_endorsement")]
AFTER = [("agents_app", "0006_refreshtoken_moved_from_tokens_app"),
         ("tokens_app", "0003_refreshtoken_moved_to_agents_app")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_refresh_tokens_move_to_agents_app_with_their_chain_and_agent():
    old = migrate(BEFORE)
    agent = old.get_model("agents_app", "Agent").objects.create(hostname="web-01", machine_id_hash="a" * 64)
    tokens = old.get_model("tokens_app", "RefreshToken").objects
    family, now = uuid.uuid4(), timezone.now()
    first = tokens.create(agent=agent, family=family, token_hash="1" * 64, expires_at=now + timedelta(days=30),
                          rotated_at=now)
    second = tokens.create(agent=agent, family=family, token_hash="2" * 64, expires_at=now + timedelta(days=30))
    tokens.filter(pk=first.pk).update(replaced_by=second)

    new = migrate(AFTER)
    moved = new.get_model("agents_app", "RefreshToken")
    assert moved._meta.db_table == "agents_app_refreshtoken"
    rows = {row.token_hash: row for row in moved.objects.select_related("agent", "replaced_by")}
    assert set(rows) == {"1" * 64, "2" * 64}
    assert rows["1" * 64].replaced_by.pk == second.pk and rows["1" * 64].agent.hostname == "web-01"
    assert {row.family for row in rows.values()} == {family}
    # New rows get fresh ids after the old ones (the sequence moved with the table).
    third = moved.objects.create(agent_id=agent.pk, family=family, token_hash="3" * 64,
                                 expires_at=now + timedelta(days=30))
    assert third.pk > second.pk
    with pytest.raises(LookupError):
        new.get_model("tokens_app", "RefreshToken")
    # And back: the table returns to tokens_app with its rows.
    back = migrate(BEFORE)
    assert back.get_model("tokens_app", "RefreshToken").objects.count() == 3
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
