"""ScopedAdminMixin: an admin page that shows and touches only the agents its user's roles reach.

Add it first among a ModelAdmin's bases and say how a row reaches its agent::

    class CommandAdmin(ScopedAdminMixin, admin.ModelAdmin):
        scope_agent_path = "agent"          # "" for Agent itself; None when rows belong to no agent

It narrows, through ``redflag.access`` (whose policy accounts_app plugs in):

- the rows: the list, its counts, facets and date drill-down, search, the change, delete and history
  pages (a row outside the scope is "not found": the admin's redirect with its message), and the
  autocomplete and raw-id pop-ups of other pages, which read this admin's rows;
- object permissions: change and delete of a row need the row inside the scope of that permission
  (a user may read agents fleet-wide and approve only on the web servers);
- actions: an action whose selection reaches an agent outside the scope of the action's permission
  is refused as a whole (nothing runs) with a message; ``permissions=["operate"]`` and
  ``["approve"]`` name the two capabilities of redflag.access;
- choices: a foreign key or many-to-many to Agent or AgentGroup on the form offers only the agents
  and groups in the scope of the model's change permission, and a list filter on an agent lists only
  the agents of the rows the user may see.

Rows that are agent groups, or target some (a policy, a report), set ``scope_group_path`` ("" for
the group itself): a scoped user sees the rows whose every group is one their grants name (whose
agents are in their scope by definition; a row of no group is the whole fleet's), a fleet-wide user
every row.

Rows that reach agents only through a many-valued relation (a bulk operation and its commands) set
``scope_owner_field`` instead: a scoped user sees the rows they created (whose agents the action
check kept inside their scope), a fleet-wide user sees all. Pages whose actions reach agents some
other way (a group's agents) override ``scope_action_agents``.
"""

from __future__ import annotations

from functools import wraps

from django.apps import apps
from django.contrib import messages
from django.contrib.admin import RelatedOnlyFieldListFilter, helpers
from django.core.exceptions import FieldDoesNotExist

from redflag.access import (
    AGENT_MODEL,
    APPROVE_UPDATES,
    GROUP_MODEL,
    OPERATE_AGENTS,
    agent_model,
    is_fleet_wide,
    may_act_on,
    scope_by_groups,
    scope_queryset,
)

CAPABILITIES = {"operate": OPERATE_AGENTS, "approve": APPROVE_UPDATES}


class ScopedChoicesMixin:
    """A form's foreign keys and many-to-manys to Agent or AgentGroup offer only what the user may change
    here (the scope of this model's change permission): no policy aimed at a group outside one's roles."""

    def _model_perm(self, action: str) -> str:
        opts = self.model._meta
        return f"{opts.app_label}.{action}_{opts.model_name}"

    def _scoped_choices(self, db_field, request):
        label, perm = db_field.related_model._meta.label, self._model_perm("change")
        if label == AGENT_MODEL:
            return scope_queryset(agent_model()._default_manager.all(), request.user, "", perm)
        if label == GROUP_MODEL:
            return scope_by_groups(apps.get_model(GROUP_MODEL)._default_manager.all(), request.user, "", perm)
        return None

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        choices = None if "queryset" in kwargs else self._scoped_choices(db_field, request)
        if choices is not None:
            kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        choices = None if "queryset" in kwargs else self._scoped_choices(db_field, request)
        if choices is not None:
            kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)


class ScopedAdminMixin(ScopedChoicesMixin):
    scope_agent_path: str | None = "agent"
    scope_owner_field: str | None = None
    scope_group_path: str | None = None

    # -- rows

    def scope_rows(self, request, queryset, perm: str | None = None):
        """``queryset`` narrowed to what ``request.user`` may see, or act on with ``perm``."""
        if self.scope_owner_field is not None:
            if is_fleet_wide(request.user, perm):
                return queryset
            return queryset.filter(**{self.scope_owner_field: request.user.pk})
        if self.scope_group_path is not None:
            return scope_by_groups(queryset, request.user, self.scope_group_path, perm)
        if self.scope_agent_path is None:
            return queryset
        return scope_queryset(queryset, request.user, self.scope_agent_path, perm)

    def get_queryset(self, request):
        # Seen through the grants that let the user read this list: a fleet-wide auditor who approves on
        # one group reads every agent, and only that group's updates.
        return self.scope_rows(request, super().get_queryset(request), self._model_perm("view"))

    def _object_in_scope(self, request, obj, perm: str) -> bool:
        return self.scope_rows(request, self.model._default_manager.filter(pk=obj.pk), perm).exists()

    # -- permissions

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm(OPERATE_AGENTS)

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm(APPROVE_UPDATES)

    def has_change_permission(self, request, obj=None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or self._object_in_scope(request, obj, self._model_perm("change")))

    def has_delete_permission(self, request, obj=None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or self._object_in_scope(request, obj, self._model_perm("delete")))

    # -- actions

    def scope_action_agents(self, request, queryset):
        """The agents an action on ``queryset`` reaches (a queryset of Agent), or None when the rows
        themselves carry the scope (scope_agent_path, scope_group_path or scope_owner_field)."""
        return None

    def _action_perm(self, func) -> str:
        """The permission whose scope an action runs in: the one it asks for, or reading the list."""
        for name in getattr(func, "allowed_permissions", ()):
            return CAPABILITIES.get(name) or self._model_perm(name)
        return self._model_perm("view")

    def _scoped_action(self, func):
        perm = self._action_perm(func)

        @wraps(func)
        def guarded(modeladmin, request, queryset):
            # Rows ticked on the list that the user may not even see are already gone from ``queryset``:
            # count them too (an action called on a one-row queryset, from a row's button, ticks nothing).
            selected = set(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))
            select_across = request.POST.get("select_across") == "1" or not selected
            agents = self.scope_action_agents(request, queryset)
            if agents is not None:
                inside = may_act_on(request.user, agents.values_list("pk", flat=True), perm)
            else:
                inside = self.scope_rows(request, queryset, perm).count() == queryset.count()
            inside = inside and (select_across or queryset.count() == len(selected))
            if not inside:
                self.message_user(request, "Nothing was done: the selection reaches agents outside what your "
                                           "roles allow for this action.", messages.ERROR)
                return None
            return func(modeladmin, request, queryset)

        return guarded

    def get_actions(self, request):
        return {name: (self._scoped_action(func), action_name, description)
                for name, (func, action_name, description) in super().get_actions(request).items()}

    # -- list filters

    def get_list_filter(self, request):
        return [(entry, RelatedOnlyFieldListFilter) if self._is_agent_field(entry) else entry
                for entry in super().get_list_filter(request)]

    def _is_agent_field(self, entry) -> bool:
        if not isinstance(entry, str):
            return False
        model = self.model
        field = None
        for part in entry.split("__"):
            try:
                field = model._meta.get_field(part)
            except FieldDoesNotExist:
                return False
            model = field.related_model
            if model is None:
                return False
        return field is not None and model._meta.label == AGENT_MODEL


class ScopedInlineMixin(ScopedChoicesMixin):
    """An inline on a scoped page: editable only where the parent's agent is inside the scope of the
    inline model's change permission (a user may read an agent fleet-wide and operate only some), its
    agent and group choices narrowed like the page's."""

    # From the parent row to its agent; "" when the parent is the Agent; None when the parent page's own
    # scope already decides (a policy's rollout rings).
    scope_parent_agent_path: str | None = ""

    def _parent_in_scope(self, request, obj, action: str) -> bool:
        if obj is None or self.scope_parent_agent_path is None:
            return True
        opts = self.model._meta
        parent = type(obj)._default_manager.filter(pk=obj.pk)
        perm = f"{opts.app_label}.{action}_{opts.model_name}"
        return scope_queryset(parent, request.user, self.scope_parent_agent_path, perm).exists()

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and self._parent_in_scope(request, obj, "change")

    def has_add_permission(self, request, obj=None) -> bool:
        return super().has_add_permission(request, obj) and self._parent_in_scope(request, obj, "add")

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and self._parent_in_scope(request, obj, "delete")
