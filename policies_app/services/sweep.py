"""The window sweep: opens due maintenance windows per machine exactly once and follows each turn.

Runs from a django-q2 schedule every minute (migration 0002), on any number of clusters at once.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, F, Max, When
from django.utils import timezone

from agents_app.choices import CommandSource, CommandStatus, CommandType, UpdateStatus, names_in_words
from agents_app.models import Agent, Command, PackageUpdate
from agents_app.services.commands import command_build
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_events
from policies_app.choices import (
    ACTIVE_TURN_STATES,
    FAILED_TURN_STATES,
    OPEN_ROLLOUT_STATUSES,
    SUCCEEDED_TURN_STATES,
    MissedWindowRule,
    PolicyAction,
    RebootRule,
    RolloutStatus,
    TurnState,
)
from policies_app.models import MachineTurn, Policy, Rollout
from policies_app.selection import Ring, enabled_policies, policy_agent_ids, policy_rings, taken_updates
from policies_app.windows import Occurrence, last_ended, open_at
from redflag.models import ServerSettings
from tokens_app.signing import primary_key

logger = logging.getLogger(__name__)

INSTALLED_STATUSES = (UpdateStatus.INSTALLED, UpdateStatus.CLOSED)
MOVING_STATUSES = (UpdateStatus.APPROVED, UpdateStatus.INSTALLING)
FINISHED_COMMAND_STATUSES = (CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.TIMED_OUT,
                             CommandStatus.CANCELLED)
TURN_FIELDS = ["state", "update_ids", "packages", "command_ids", "reboot_command", "note", "changed_at",
               "stage_position", "rollout"]


class PolicySweep:
    """One policy's pass in one transaction: the decisions, then the events that explain them."""

    def __init__(self, policy: Policy, now: datetime, signing_key) -> None:
        self.policy = policy
        self.now = now
        self.key = signing_key
        self.spec = policy.window.spec(list(policy.window.blackouts.all()))
        self.events: list[dict[str, Any]] = []
        self.changed: dict[Any, MachineTurn] = {}
        self.commands: list[Command] = []
        self.offline_threshold = ServerSettings.current().offline_threshold

    # -- the record ---------------------------------------------------------------------------------------

    def context(self, *, occurrence_start=None, occurrence_end=None, rollout=None, stage=None) -> dict[str, Any]:
        return {
            "policy_id": self.policy.pk, "policy": self.policy.name,
            "window_id": self.policy.window_id, "window": self.policy.window.name,
            "occurrence_start": occurrence_start.isoformat() if occurrence_start else None,
            "occurrence_end": occurrence_end.isoformat() if occurrence_end else None,
            "rollout_id": rollout.pk if rollout else None, "stage": stage, "source": CommandSource.POLICY,
        }

    def event(self, event_type: str, subtype: str, message: str, *, agent: Agent | None = None,
              severity: str = Severity.INFO, metadata: dict[str, Any]) -> None:
        self.events.append({"event_type": event_type, "subtype": subtype, "component": Component.POLICY,
                            "severity": severity, "message": message, "agent": agent, "metadata": metadata})

    def turn_event(self, turn: MachineTurn, decision: str, message: str, *, subtype=EventSubtype.INFO,
                   severity=Severity.INFO, **extra) -> None:
        metadata = self.context(occurrence_start=turn.occurrence_start, occurrence_end=turn.occurrence_end,
                                rollout=turn.rollout, stage=turn.stage_position)
        metadata.update({"turn_id": str(turn.pk), "decision": decision, "packages": turn.packages, **extra})
        self.event(EventType.POLICY_DECISION, subtype, f"Policy {self.policy.name}: {message} on "
                   f"{turn.agent.hostname}", agent=turn.agent, severity=severity, metadata=metadata)

    def move(self, turn: MachineTurn, state: str, note: str = "") -> None:
        turn.state, turn.note, turn.changed_at = state, note[:255], self.now
        self.changed[turn.pk] = turn

    def command(self, agent: Agent, command_type: str, params: dict[str, Any]) -> Command:
        command = command_build(agent_id=agent.pk, command_type=command_type, params=params,
                                source=CommandSource.POLICY, now=self.now, key=self.key)
        command.agent = agent
        self.commands.append(command)
        return command

    def online(self, agent: Agent) -> bool:
        return agent.last_seen_at is not None and agent.last_seen_at >= self.now - self.offline_threshold

    def flush_commands(self) -> set:
        """Insert the planned commands in one statement; the ids that exist now (an open command of the same
        kind for the machine wins over ours: the partial unique index decides)."""
        if not self.commands:
            return set()
        Command.objects.bulk_create(self.commands, ignore_conflicts=True)
        created = set(Command.objects.filter(pk__in=[c.pk for c in self.commands]).values_list("pk", flat=True))
        for command in self.commands:
            if command.pk in created:
                self.event(EventType.COMMAND_CREATED, EventSubtype.INITIATED,
                           f"{command.title} queued for {command.agent.hostname}", agent=command.agent,
                           metadata={"command_id": str(command.pk), "command_type": command.command_type,
                                     "params": command.params, "source": CommandSource.POLICY,
                                     "policy_id": self.policy.pk})
        self.commands = []
        return created

    def finish(self) -> int:
        if self.changed:
            MachineTurn.objects.bulk_update(list(self.changed.values()), TURN_FIELDS)
        record_events(self.events)
        return len(self.changed)

    # -- the rollout --------------------------------------------------------------------------------------

    def open_rollout(self, rings: list[Ring], start: bool) -> Rollout | None:
        rollout = Rollout.objects.filter(policy=self.policy, status__in=OPEN_ROLLOUT_STATUSES).first()
        if rollout is not None or not start:
            return rollout
        try:
            with transaction.atomic():
                rollout = Rollout.objects.create(policy=self.policy, stage_position=rings[0].position,
                                                 stage_started_at=self.now, started_at=self.now)
        except IntegrityError:  # another sweep started it first
            return Rollout.objects.filter(policy=self.policy, status__in=OPEN_ROLLOUT_STATUSES).first()
        self.event(EventType.ROLLOUT, EventSubtype.INITIATED,
                   f"Policy {self.policy.name}: rollout started with ring {rings[0].name}",
                   metadata={**self.context(rollout=rollout, stage=rollout.stage_position), "ring": rings[0].name,
                             "machines": len(rings[0].agent_ids)})
        return rollout

    def rollout_advance(self, rollout: Rollout, rings: list[Ring]) -> None:
        """Halt on too many failures; after a finished, soaked, successful ring start the next one."""
        if rollout.status != RolloutStatus.RUNNING:
            return
        positions = [ring.position for ring in rings]
        ring = next((r for r in rings if r.position == rollout.stage_position), None)
        if ring is None:
            return
        latest: dict[Any, str] = {}
        for pk, agent_id, state in (MachineTurn.objects.filter(rollout=rollout, stage_position=ring.position)
                                    .order_by("occurrence_start").values_list("pk", "agent_id", "state")):
            state = self.changed[pk].state if pk in self.changed else state  # this sweep's moves are saved last
            if latest.get(agent_id) not in SUCCEEDED_TURN_STATES:
                latest[agent_id] = state
        machines = len(ring.agent_ids)
        succeeded = sum(1 for a, s in latest.items() if a in ring.agent_ids and s in SUCCEEDED_TURN_STATES)
        failed = sum(1 for a, s in latest.items() if a in ring.agent_ids and s in FAILED_TURN_STATES)
        figures = {"ring": ring.name, "machines": machines, "succeeded": succeeded, "failed": failed}
        if machines and failed * 100 > ring.halt_failure_percent * machines:
            self.rollout_halt(rollout, f"{failed} of {machines} machine(s) failed in ring {ring.name}, above "
                                       f"the {ring.halt_failure_percent} % halt threshold", figures)
            return
        if succeeded + failed < machines:
            return
        if rollout.stage_finished_at is None:
            rollout.stage_finished_at = self.now
            rollout.save(update_fields=["stage_finished_at"])
        if machines and (succeeded * 100 < ring.success_percent * machines or succeeded < ring.minimum_machines):
            self.rollout_halt(rollout, f"ring {ring.name} succeeded on {succeeded} of {machines} machine(s); it "
                                       f"needs {ring.success_percent} % and at least {ring.minimum_machines}",
                              figures)
            return
        if self.now < rollout.stage_finished_at + timedelta(hours=ring.soak_hours):
            return
        later = [p for p in positions if p > ring.position]
        context = self.context(rollout=rollout, stage=ring.position)
        if not later:
            rollout.status, rollout.finished_at = RolloutStatus.COMPLETED, self.now
            rollout.save(update_fields=["status", "finished_at"])
            self.event(EventType.ROLLOUT, EventSubtype.SUCCESS, f"Policy {self.policy.name}: rollout completed",
                       metadata={**context, **figures})
            return
        rollout.stage_position, rollout.stage_started_at, rollout.stage_finished_at = later[0], self.now, None
        rollout.save(update_fields=["stage_position", "stage_started_at", "stage_finished_at"])
        following = next(r for r in rings if r.position == later[0])
        self.event(EventType.ROLLOUT, EventSubtype.INFO,
                   f"Policy {self.policy.name}: ring {ring.name} soaked and succeeded; ring {following.name} starts",
                   metadata={**context, **figures, "next_stage": following.position, "next_ring": following.name})

    def rollout_halt(self, rollout: Rollout, reason: str, figures: dict[str, Any]) -> None:
        claimed = Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.RUNNING).update(
            status=RolloutStatus.HALTED, halted_reason=reason)
        if claimed:
            rollout.status, rollout.halted_reason = RolloutStatus.HALTED, reason
            self.event(EventType.ROLLOUT, EventSubtype.FAILED, f"Policy {self.policy.name}: rollout halted: {reason}",
                       severity=Severity.WARNING,
                       metadata={**self.context(rollout=rollout, stage=rollout.stage_position), **figures,
                                 "reason": reason})

    # -- opening turns ------------------------------------------------------------------------------------

    def occurrence_claim(self, occurrence: Occurrence) -> bool:
        """Mark the occurrence handled (conditional UPDATE): True for the one sweep that moved it forward."""
        previous = self.policy.last_occurrence_start
        if previous is not None and previous >= occurrence.start:
            return False
        rows = Policy.objects.filter(pk=self.policy.pk)
        rows = rows.filter(last_occurrence_start__isnull=True) if previous is None else rows.filter(
            last_occurrence_start=previous)
        claimed = bool(rows.update(last_occurrence_start=occurrence.start))
        if claimed:
            self.policy.last_occurrence_start = occurrence.start
        return claimed

    def turns_open(self, occurrence: Occurrence, rollout: Rollout, rings: list[Ring], *, catch_up: bool) -> None:
        """Claim a turn for each machine of the rings the rollout has reached, by INSERT: the unique (policy,
        agent, occurrence) lets exactly one sweep insert it, and only that sweep (``claim``) starts it."""
        if rollout.status != RolloutStatus.RUNNING:
            return
        stage_of = {agent_id: ring.position for ring in rings if ring.position <= rollout.stage_position
                    for agent_id in ring.agent_ids}
        if not stage_of:
            return
        claim = uuid.uuid4()
        MachineTurn.objects.bulk_create([
            MachineTurn(policy=self.policy, agent_id=agent_id, occurrence_start=occurrence.start,
                        occurrence_end=occurrence.end, rollout=rollout, stage_position=position,
                        state=TurnState.OPENED, claim=claim, created_at=self.now, changed_at=self.now)
            for agent_id, position in stage_of.items()
        ], ignore_conflicts=True)
        mine = list(MachineTurn.objects.filter(policy=self.policy, claim=claim).select_related("agent", "rollout"))
        self.turns_start(mine, catch_up=catch_up)

    def turns_reclaim(self, open_occurrence: Occurrence | None) -> None:
        """Missed turns whose machine is back: in the same occurrence always, in a later one when the policy
        catches up as soon as the machine is back. Only a machine's latest turn counts."""
        missed = list(MachineTurn.objects.filter(policy=self.policy, state=TurnState.MISSED)
                      .select_related("agent").order_by("occurrence_start"))
        back = [turn for turn in missed if self.online(turn.agent)]
        if not back:
            return
        latest_start = dict(MachineTurn.objects.filter(policy=self.policy, agent_id__in={t.agent_id for t in back})
                            .values("agent_id").annotate(latest=Max("occurrence_start"))
                            .values_list("agent_id", "latest"))
        chosen = []
        for turn in back:
            if turn.occurrence_start != latest_start.get(turn.agent_id):
                continue
            in_window = open_occurrence is not None and turn.occurrence_start == open_occurrence.start
            if in_window or self.policy.missed_window == MissedWindowRule.AS_SOON_AS_BACK:
                chosen.append(turn.pk)
        if not chosen:
            return
        claim = uuid.uuid4()
        MachineTurn.objects.filter(pk__in=chosen, state=TurnState.MISSED).update(
            state=TurnState.OPENED, claim=claim, changed_at=self.now)
        mine = list(MachineTurn.objects.filter(claim=claim).select_related("agent", "rollout"))
        for catch_up in (False, True):
            turns = [turn for turn in mine if catch_up == (open_occurrence is None
                                                           or turn.occurrence_start != open_occurrence.start)]
            for turn in turns:
                self.turn_event(turn, "caught_up", "machine is back; its missed turn starts now", catch_up=catch_up)
            if turns:
                self.turns_start(turns, catch_up=catch_up, announce=False)

    def turns_start(self, turns: list[MachineTurn], *, catch_up: bool, announce: bool = True) -> None:
        """Offline machines miss the turn; online ones get the policy's updates approved and dry-runs queued."""
        online = [turn for turn in turns if self.online(turn.agent)]
        online_pks = {turn.pk for turn in online}
        for turn in turns:
            if turn.pk not in online_pks:
                self.move(turn, TurnState.MISSED, "machine offline when the window opened")
                rule = MissedWindowRule(self.policy.missed_window).label.lower()
                self.turn_event(turn, "missed", f"machine offline, window missed ({rule})",
                                subtype=EventSubtype.WARNING, severity=Severity.WARNING)
        if not online:
            return
        updates: dict[Any, list[PackageUpdate]] = defaultdict(list)
        for update in taken_updates(self.policy, [t.agent_id for t in online], self.now):
            updates[update.agent_id].append(update)
        planned: dict[Any, list[tuple[Command, list[PackageUpdate]]]] = {}
        for turn in online:
            rows = updates.get(turn.agent_id, [])
            turn.update_ids = [row.pk for row in rows]
            turn.packages = sorted({row.name for row in rows})
            if not rows:
                self.move(turn, TurnState.NOTHING_TO_DO)
                if announce:
                    self.turn_event(turn, "nothing_to_do", "window opened, no update matches the policy")
                continue
            by_type: dict[str, list[PackageUpdate]] = defaultdict(list)
            for row in rows:
                by_type[row.package_type].append(row)
            planned[turn.pk] = [
                (self.command(turn.agent, CommandType.DRY_RUN_UPDATE,
                              {"package_type": package_type, "packages": sorted(r.name for r in typed)}), typed)
                for package_type, typed in sorted(by_type.items())
            ]
        if not planned:
            return
        PackageUpdate.objects.filter(pk__in=[pk for t in online for pk in t.update_ids],
                                     status=UpdateStatus.PENDING).update(status=UpdateStatus.APPROVED,
                                                                         status_changed_at=self.now)
        created = self.flush_commands()
        links = {}
        for turn in online:
            if turn.pk not in planned:
                continue
            ours = [(command, typed) for command, typed in planned[turn.pk] if command.pk in created]
            turn.command_ids = [str(command.pk) for command, _ in ours]
            if self.policy.action != PolicyAction.DRY_RUN:
                # Linked updates follow agents_app's workflow: installed automatically after a dry-run that pulls
                # in nothing extra, or parked in pending_dependencies. A dry-run-only policy links nothing.
                links.update({row.pk: command.pk for command, typed in ours for row in typed})
            verb = "dry-run only" if self.policy.action == PolicyAction.DRY_RUN else "dry-run, then install"
            if not ours:
                self.move(turn, TurnState.WAITING_ADMIN, "another package operation was already open")
                self.turn_event(turn, "busy", "another package operation is already open; waits for an admin",
                                subtype=EventSubtype.WARNING, severity=Severity.WARNING)
                continue
            self.move(turn, TurnState.DRY_RUN, "catching up outside the window" if catch_up else "")
            self.turn_event(turn, "approved",
                            f"approved {len(turn.packages)} update(s) ({names_in_words(turn.packages)}), {verb}",
                            subtype=EventSubtype.INITIATED, commands=turn.command_ids, action=self.policy.action,
                            catch_up=catch_up)
        if links:
            PackageUpdate.objects.filter(pk__in=list(links)).update(operation_command_id=Case(
                *[When(pk=pk, then=command_pk) for pk, command_pk in links.items()], default=F("operation_command_id")))

    # -- following turns ----------------------------------------------------------------------------------

    def turns_follow(self, open_occurrence: Occurrence | None) -> None:
        """Dry-run → install → reboot → done, from what the agents answered since the last sweep."""
        turns = list(MachineTurn.objects.filter(policy=self.policy, state__in=ACTIVE_TURN_STATES)
                     .select_related("agent", "rollout", "reboot_command"))
        turns = [turn for turn in turns if turn.pk not in self.changed] + [
            turn for turn in self.changed.values() if turn.state in ACTIVE_TURN_STATES]
        if not turns:
            return
        updates = PackageUpdate.objects.in_bulk([pk for turn in turns for pk in turn.update_ids])
        commands = Command.objects.in_bulk([pk for turn in turns for pk in turn.command_ids])
        confirm: list[tuple[MachineTurn, list[PackageUpdate]]] = []
        for turn in turns:
            if turn.state in (TurnState.DRY_RUN, TurnState.INSTALLING):
                self.turn_operation(turn, updates, commands, confirm)
            elif turn.state == TurnState.REBOOTING:
                self.turn_rebooted(turn)
        if confirm:
            self.dependencies_confirm(confirm)
        self.reboots_start([t for t in turns if t.state == TurnState.REBOOT_WAITING], open_occurrence)

    def turn_operation(self, turn, updates, commands, confirm) -> None:
        if self.policy.action == PolicyAction.DRY_RUN:
            ran = [commands[pk] for pk in map(uuid.UUID, turn.command_ids) if pk in commands]
            if any(command.status not in FINISHED_COMMAND_STATUSES for command in ran):
                return
            if all(command.status == CommandStatus.SUCCEEDED for command in ran):
                extra = sorted({name for c in ran for name in (c.result or {}).get("dependencies", [])})
                self.move(turn, TurnState.WAITING_ADMIN, "dry-run done; an admin installs")
                self.turn_event(turn, "dry_run_done", "dry-run succeeded; the updates wait for an admin to install",
                                dependencies=extra)
            else:
                self.move(turn, TurnState.FAILED, "dry-run failed")
                self.turn_event(turn, "failed", "dry-run failed", subtype=EventSubtype.FAILED,
                                severity=Severity.WARNING)
            return
        rows = [updates[pk] for pk in turn.update_ids if pk in updates]
        statuses = {row.status for row in rows}
        if statuses & set(MOVING_STATUSES):
            if UpdateStatus.INSTALLING in statuses and turn.state != TurnState.INSTALLING:
                self.move(turn, TurnState.INSTALLING)
            return
        waiting = [row for row in rows if row.status == UpdateStatus.PENDING_DEPENDENCIES]
        if waiting:
            extra = sorted({name for row in waiting for name in row.dependencies})
            if self.policy.action == PolicyAction.INSTALL_WITH_EXTRA:
                confirm.append((turn, waiting))
            else:
                self.move(turn, TurnState.WAITING_ADMIN, "the dry-run pulls in extra packages")
                self.turn_event(turn, "waiting_admin", f"dry-run pulls in {names_in_words(extra)}; the policy "
                                "installs only without extra packages, so an admin decides", dependencies=extra)
            return
        if rows and statuses <= set(INSTALLED_STATUSES):
            self.turn_installed(turn)
            return
        failed = sorted(row.name for row in rows if row.status not in INSTALLED_STATUSES)
        self.move(turn, TurnState.FAILED, f"not installed: {names_in_words(failed)}")
        self.turn_event(turn, "failed", f"install failed ({names_in_words(failed)})", subtype=EventSubtype.FAILED,
                        severity=Severity.WARNING, failed_packages=failed)

    def dependencies_confirm(self, confirm: list[tuple[MachineTurn, list[PackageUpdate]]]) -> None:
        """The policy installs also with the extra packages its dry-run found (agents_app's confirm step)."""
        planned = []
        for turn, rows in confirm:
            by_type: dict[str, list[PackageUpdate]] = defaultdict(list)
            for row in rows:
                by_type[row.package_type].append(row)
            for package_type, typed in sorted(by_type.items()):
                dependencies = sorted({name for row in typed for name in row.dependencies})
                command = self.command(turn.agent, CommandType.CONFIRM_DEPENDENCIES, {
                    "package_type": package_type, "packages": sorted(r.name for r in typed),
                    "dependencies": dependencies})
                planned.append((turn, command, typed, dependencies))
        created = self.flush_commands()
        links = {}
        for turn, command, typed, dependencies in planned:
            if command.pk not in created:
                continue
            links.update({row.pk: command.pk for row in typed})
            turn.command_ids = [*turn.command_ids, str(command.pk)]
            self.move(turn, TurnState.INSTALLING)
            self.turn_event(turn, "install_with_dependencies",
                            f"installs also with extra packages {names_in_words(dependencies)}",
                            subtype=EventSubtype.INITIATED, dependencies=dependencies, command_id=str(command.pk))
        if links:
            PackageUpdate.objects.filter(pk__in=list(links), status=UpdateStatus.PENDING_DEPENDENCIES).update(
                status=UpdateStatus.INSTALLING, status_changed_at=self.now,
                operation_command_id=Case(*[When(pk=pk, then=c) for pk, c in links.items()]))

    def turn_installed(self, turn: MachineTurn) -> None:
        reboot = self.policy.reboot
        if reboot == RebootRule.ALWAYS or (reboot == RebootRule.WHEN_REQUIRED and turn.agent.reboot_required):
            self.move(turn, TurnState.REBOOT_WAITING, "installed; reboot follows inside the window")
            self.turn_event(turn, "installed", "installed; a reboot follows inside the window",
                            subtype=EventSubtype.SUCCESS, reboot=reboot)
        else:
            self.move(turn, TurnState.DONE, "installed")
            self.turn_event(turn, "installed", "installed, no reboot", subtype=EventSubtype.SUCCESS, reboot=reboot)

    def reboots_start(self, waiting: list[MachineTurn], open_occurrence: Occurrence | None) -> None:
        """Reboot inside a window only, at most ``reboot_max_concurrent`` machines of each group at once."""
        if not waiting or open_occurrence is None:
            return
        limit = self.policy.reboot_max_concurrent
        involved = {turn.agent_id for turn in waiting}
        # Machines rebooting now, less those this sweep just saw come back (their rows are saved at the end).
        back = {turn.agent_id for turn in self.changed.values() if turn.state != TurnState.REBOOTING}
        rebooting = set(MachineTurn.objects.filter(state=TurnState.REBOOTING).values_list("agent_id", flat=True)) - back
        groups = {group.pk: set(Agent.objects.filter(group.agents_q(), pk__in=list(involved | rebooting))
                                .values_list("pk", flat=True)) for group in self.policy.groups.all()}
        busy = {pk: len(members & rebooting) for pk, members in groups.items()}
        delay = self.policy.reboot_delay_minutes
        planned = []
        for turn in sorted(waiting, key=lambda t: t.agent.hostname):
            mine = [pk for pk, members in groups.items() if turn.agent_id in members]
            if any(busy[pk] >= limit for pk in mine):
                continue
            for pk in mine:
                busy[pk] += 1
            message = f"RedFlag policy {self.policy.name}: this machine reboots in {delay} minute(s) to finish updates"
            planned.append((turn, self.command(turn.agent, CommandType.REBOOT,
                                               {"delay_minutes": delay, "message": message})))
        created = self.flush_commands()
        for turn, command in planned:
            if command.pk not in created:
                continue
            turn.reboot_command = command
            self.move(turn, TurnState.REBOOTING)
            self.turn_event(turn, "reboot", f"reboot queued, announced {delay} minute(s) ahead",
                            subtype=EventSubtype.INITIATED, command_id=str(command.pk), delay_minutes=delay,
                            max_concurrent=self.policy.reboot_max_concurrent)

    def turn_rebooted(self, turn: MachineTurn) -> None:
        command = turn.reboot_command
        if command is None or command.status in (CommandStatus.FAILED, CommandStatus.TIMED_OUT,
                                                 CommandStatus.CANCELLED):
            self.move(turn, TurnState.FAILED, "reboot did not happen")
            self.turn_event(turn, "failed", "reboot failed", subtype=EventSubtype.FAILED, severity=Severity.WARNING)
            return
        seen = turn.agent.last_seen_at
        if command.status == CommandStatus.SUCCEEDED and seen and command.completed_at and seen > command.completed_at:
            self.move(turn, TurnState.DONE, "rebooted")
            self.turn_event(turn, "done", "rebooted and back", subtype=EventSubtype.SUCCESS)


def policy_sweep(*, policy: Policy, now: datetime, signing_key=None) -> int:
    """One policy's pass (see policies_sweep); returns the number of turns it changed."""
    with transaction.atomic():
        sweep = PolicySweep(policy, now, signing_key or primary_key())
        agent_ids = policy_agent_ids(policy)
        rings = policy_rings(policy, agent_ids)
        occurrence = open_at(sweep.spec, now)
        missed = last_ended(sweep.spec, now)
        server_missed = (missed is not None and missed.start > (policy.last_occurrence_start or policy.created_at)
                         and sweep.occurrence_claim(missed))
        catch_up = server_missed and policy.missed_window == MissedWindowRule.AS_SOON_AS_BACK
        rollout = sweep.open_rollout(rings, start=occurrence is not None or catch_up)
        sweep.turns_follow(occurrence)
        if rollout is not None:
            sweep.rollout_advance(rollout, rings)
        if server_missed:
            context = sweep.context(occurrence_start=missed.start, occurrence_end=missed.end, rollout=rollout)
            verb = "catching up now" if catch_up else "machines catch up in the next window"
            sweep.event(EventType.MAINTENANCE_WINDOW, EventSubtype.WARNING,
                        f"Window {policy.window.name} of policy {policy.name} passed while the server was down; {verb}",
                        severity=Severity.WARNING, metadata={**context, "missed_window": policy.missed_window})
            if catch_up:
                sweep.turns_open(missed, rollout, rings, catch_up=True)
        if occurrence is not None:
            if sweep.occurrence_claim(occurrence):
                sweep.event(EventType.MAINTENANCE_WINDOW, EventSubtype.INFO,
                            f"Window {policy.window.name} opened for policy {policy.name}",
                            metadata={**sweep.context(occurrence_start=occurrence.start,
                                                      occurrence_end=occurrence.end, rollout=rollout),
                                      "machines": len(agent_ids)})
            sweep.turns_open(occurrence, rollout, rings, catch_up=False)
        sweep.turns_reclaim(occurrence)
        return sweep.finish()


def policies_sweep(*, now: datetime | None = None) -> int:
    """Open due windows and follow every turn, policy by policy.

    1. For each enabled policy, in its own transaction (one failing policy is logged, the others run):
    2. Follow its moving turns from what the agents answered: a dry-run with nothing extra was installed
       by agents_app's workflow; with extra packages the policy installs too (confirm_dependencies) or
       leaves them to an admin; installed machines reboot per the policy, inside a window, at most N per
       group at once, announced ``reboot_delay_minutes`` ahead.
    3. Judge the rollout's current ring: halt above the failure threshold; once every machine finished,
       the ring succeeded on X % (and M machines) and soaked, the next ring starts.
    4. A window that ended while no sweep ran (server down): catch up now or wait, per the missed rule.
    5. The open window: a turn per machine of the rings reached, claimed by INSERT (unique policy, agent,
       occurrence), so with several clusters each machine's window opens once. Offline machines miss it;
       online ones get the policy's updates approved and dry-runs queued (source policy).
    6. Missed turns whose machine is back start, in the same window, or at once when the policy says so.
    Every decision is a SystemEvent (component policy) naming policy, window occurrence, rollout, ring and
    packages. Queries grow with policies, groups and rings, not with machines.
    """
    now = now or timezone.now()
    key = primary_key()
    changed = 0
    for policy in enabled_policies():
        try:
            changed += policy_sweep(policy=policy, now=now, signing_key=key)
        except Exception:
            logger.exception("policy sweep failed for policy %s", policy.pk)
    return changed
