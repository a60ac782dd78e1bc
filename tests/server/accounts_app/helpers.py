"""Helpers of the accounts_app tests: agents in two groups, users holding roles on a scope."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model

from accounts_app.services import role_grants_replace
from agents_app.models import Agent, AgentGroup

PASSWORD = "correct horse battery staple"


def make_agent(hostname: str, **fields) -> Agent:
    return Agent.objects.create(hostname=hostname, machine_id_hash=uuid.uuid4().hex * 2, os_family="linux", **fields)


def make_group(name: str, *members: Agent, **rule) -> AgentGroup:
    group = AgentGroup.objects.create(name=name, **rule)
    group.members.set(members)
    return group


def make_user(username: str, grants=(), **fields):
    user = get_user_model().objects.create_user(username, password=PASSWORD, **fields)
    if grants:
        role_grants_replace(user=user, grants=list(grants), actor="root", source="admin")
        user.refresh_from_db()
    return user
