"""The fleet's write paths, one module per behaviour. Each public function is keyword-only, named
``<entity>_<action>``, validates, writes and records its SystemEvent in one transaction.

Imports flow downwards in this list; nothing imports a module above it:

- ``groups``: agent groups (save, delete) and fleet actions on the agents of groups.
- ``checkin``: one check-in, assembled (alive, heartbeat, due scans, delivery) into a reply.
- ``bulk``: fleet-wide actions run as a django-q2 task, one agent at a time.
- ``agents``: registration and re-enrolment, machine binding, revocation, admin edits of an agent.
- ``results``: answers, time-outs and cancels — the one place where a command ends.
- ``package_updates``: approve / ignore / install (dry-run first) of package updates.
- ``agent_upgrade``: the agent's own signed upgrade (update_agent and its nonce).
- ``heartbeat``: 5-second polling for a while.
- ``scheduling``: which scans are due, as signed commands.
- ``subsystems``: what an agent scans and how often.
- ``commands``: build, sign, create and deliver commands (a leaf).
- ``credentials``: access and refresh tokens of agents.
- ``reports``: ingestion of scan reports, system reports and agent-side events.
- ``presence``: online/offline transitions.
- ``releases``: agent releases (build, upload, revoke) and version order.
- ``server_settings``: the run-time settings row.
"""
