"""The contract of a job type: what ``workers/<type>.py`` declares and what the platform uses.

A job-type module declares four things (:class:`JobTypeModule`): ``JOB_TYPE``, a pydantic
``Params`` model, an ``EXAMPLE`` of valid parameters and ``run(ctx, params) -> dict``. It may
declare two hooks; leaving one out means its default:

``DEMO`` (default: none)
    Parameter sets on the sample tables (:mod:`geojobs.samples`) that ``geojobs demo`` queues.
``warm_up`` (default: none)
    A function the worker process calls once before it claims its first job, however it is
    started (``python -m workers.<type>``, ``geojobs worker <type>``, the systemd unit), e.g. to
    compile numba kernels so that no job pays for them.
``DEFAULT_TIMEOUT_SECONDS`` (default: none, the platform's 6 h)
    Time limit of a job of this type whose row sets no ``timeout_seconds``;
    ``GEOJOBS_TIMEOUT_<TYPE>`` overrides it.
``TIMEOUTS_ARE_TRANSIENT`` (default: false)
    Whether a job that timed out is retried (by default the same input would time out again).

:func:`geojobs.registry.load` checks a module against this contract and returns a
:class:`JobType`, the one object the runner, the CLI, ``geojobs types``, the demo and the
bad-input cases read. Its module docstring is the type's description: the first paragraph is
the one-line summary.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel

from geojobs.context import JobContext
from geojobs.params import JobParams

__all__ = ["JobTypeModule", "JobType", "Parameter", "plain_text", "from_module"]

REQUIRED = ("JOB_TYPE", "Params", "EXAMPLE", "run")


class JobTypeModule(Protocol):
    """The required part of a job-type module (the hooks are optional: see the module doc)."""

    JOB_TYPE: str
    Params: type[JobParams]
    EXAMPLE: dict[str, Any]

    def run(self, ctx: JobContext, params: Any) -> dict[str, Any]:
        """Do the job inside ``ctx.conn``'s transaction; return the job's ``result``."""
        ...


@dataclass(frozen=True)
class Parameter:
    """One parameter as ``geojobs types`` shows it (nested models as ``outer.inner``)."""

    name: str
    type: str
    required: bool
    default: Any
    description: str


@dataclass(frozen=True)
class JobType:
    """A job-type module checked against the contract, its optional hooks filled in."""

    JOB_TYPE: str
    Params: type[JobParams]
    EXAMPLE: dict[str, Any]
    run: Callable[[JobContext, Any], Mapping[str, Any] | None]
    module: str
    doc: str = ""
    DEMO: Sequence[dict[str, Any]] = field(default=())
    warm_up: Callable[[], object] | None = None
    DEFAULT_TIMEOUT_SECONDS: float | None = None
    TIMEOUTS_ARE_TRANSIENT: bool = False

    @property
    def summary(self) -> str:
        """The docstring's first paragraph in plain text on one line, without a leading
        ``<name> job type:``."""
        first = plain_text(self.doc.strip().split("\n\n")[0]) if self.doc.strip() else ""
        for lead in (f"{self.JOB_TYPE} job type:", f"{self.JOB_TYPE}:"):
            if first.startswith(lead):
                first = first[len(lead):].strip()
                break
        return first[:1].upper() + first[1:]

    @property
    def description(self) -> str:
        """The whole docstring in plain text, paragraphs kept."""
        return "\n\n".join(plain_text(p) for p in self.doc.strip().split("\n\n") if p.strip())

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of ``Params``."""
        return self.Params.model_json_schema()

    def parameters(self) -> list[Parameter]:
        """Every parameter with its type, default and description, nested ones dotted."""
        schema = self.params_schema()
        found = _parameters(schema, schema.get("$defs", {}), "")
        fields = self.Params.model_fields
        for i, parameter in enumerate(found):
            info = fields.get(parameter.name)
            if info is not None and info.default_factory is not None:  # not in the JSON Schema
                value = info.get_default(call_default_factory=True)
                if isinstance(value, BaseModel):
                    value = value.model_dump(mode="json", exclude_none=True)
                found[i] = dataclasses.replace(parameter, default=value)
        return found


def from_module(module: ModuleType, job_type: str | None = None) -> JobType:
    """Check ``module`` against the contract; ``job_type`` is the name it is registered under."""
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise TypeError(f"{module.__name__} does not define {', '.join(missing)}")
    if job_type is not None and module.JOB_TYPE != job_type:
        raise TypeError(f"{module.__name__} declares JOB_TYPE {module.JOB_TYPE!r}, registered as "
                        f"{job_type!r}")
    if not (isinstance(module.Params, type) and issubclass(module.Params, JobParams)):
        raise TypeError(f"{module.__name__}.Params does not derive from geojobs.params.JobParams")
    hooks = vars(module)
    return JobType(
        JOB_TYPE=module.JOB_TYPE,
        Params=module.Params,
        EXAMPLE=module.EXAMPLE,
        run=module.run,
        module=module.__name__,
        doc=module.__doc__ or "",
        DEMO=tuple(hooks.get("DEMO", ())),
        warm_up=hooks.get("warm_up"),
        DEFAULT_TIMEOUT_SECONDS=hooks.get("DEFAULT_TIMEOUT_SECONDS"),
        TIMEOUTS_ARE_TRANSIENT=bool(hooks.get("TIMEOUTS_ARE_TRANSIENT", False)),
    )


_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")


def plain_text(rst: str) -> str:
    """A reStructuredText paragraph as plain text on one line: ````x```` and ``:mod:`a.b``` as x
    and a.b (``~a.b`` as b), line breaks as spaces."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).split("`")[1].startswith("~") else target

    text = _ROLE.sub(role, rst)
    text = _LITERAL.sub(r"\1", text)
    return " ".join(text.split())


def _parameters(schema: Mapping[str, Any], defs: Mapping[str, Any], prefix: str) -> list[Parameter]:
    required = set(schema.get("required", ()))
    found = []
    for name, prop in schema.get("properties", {}).items():
        nested = _model_of(prop, defs)
        found.append(Parameter(
            name=prefix + name,
            type="object" if nested is not None else _type_name(prop, defs),
            required=name in required,
            default=prop.get("default"),
            description=plain_text(prop.get("description", "")
                                   or (nested or {}).get("description", "")),
        ))
        if nested is not None:
            found.extend(_parameters(nested, defs, f"{prefix}{name}."))
    return found


def _resolve(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = prop.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else prop


def _model_of(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The nested model's schema, when the parameter is one (or one or null)."""
    options = [_resolve(o, defs) for o in prop.get("anyOf", [prop])]
    models = [o for o in options if o.get("type") == "object" and "properties" in o]
    rest = [o for o in options if o.get("type") != "null" and o not in models]
    return models[0] if len(models) == 1 and not rest else None


def _type_name(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """A short readable type: ``integer 0..99999``, ``square|hexagon``, ``list of string``."""
    prop = _resolve(prop, defs)
    if "anyOf" in prop:
        options = [o for o in prop["anyOf"] if o.get("type") != "null"]
        names = [_type_name(o, defs) for o in options]
        nullable = len(options) < len(prop["anyOf"])
        text = " or ".join(dict.fromkeys(names)) or "null"
        return f"{text} or null" if nullable and prop.get("default", ...) is not None else text
    if "enum" in prop or "const" in prop:
        return "|".join(str(v) for v in prop.get("enum", [prop.get("const")]))
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items")
        text = f"list of {_type_name(items, defs)}" if items else "list"
        if "prefixItems" in prop:
            text = f"list of {len(prop['prefixItems'])} {_type_name(prop['prefixItems'][0], defs)}"
        return text
    if kind == "object":
        return str(prop.get("title", "object")) if "properties" in prop else "object"
    if kind is None:
        return "any"
    return f"{kind}{_bounds(prop)}"


def _bounds(prop: Mapping[str, Any]) -> str:
    """`` 0..999``, `` > 0``, `` >= 1, < 4294967296``, ``, at most 500 characters``."""
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        return f" {low}..{high}"
    parts = [f"{sign} {prop[key]}" for key, sign in (
        ("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in prop]
    if "maxLength" in prop:
        parts.append(f"at most {prop['maxLength']} characters")
    return (" " + ", ".join(parts)) if parts else ""
