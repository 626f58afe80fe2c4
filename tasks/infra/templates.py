"""The CloudFormation templates under ``infra/``: finding them, reading them, and the body sent to AWS.

Templates are YAML with CloudFormation's short-form tags (``!Sub``, ``!GetAtt``...), which
plain YAML loaders reject; cfn-lint's decoder reads them (and JSON) into plain mappings
with the long forms (``Fn::Sub``), the shape CloudFormation itself works on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tasks.errors import ConfigError

#: CloudFormation's limit for a template passed inline (``TemplateBody``), in bytes.
TEMPLATE_BODY_LIMIT = 51_200
#: The template ``updraft infra deploy`` uses when none is named.
DEFAULT_TEMPLATE = "updraft.yaml"
_SUFFIXES = (".yaml", ".yml", ".json", ".template")


def infra_dir() -> Path:
    """``UPDRAFT_INFRA_DIR``, else the ``infra/`` folder of this checkout."""
    override = os.environ.get("UPDRAFT_INFRA_DIR")
    return Path(override).expanduser().resolve() if override else Path(__file__).resolve().parents[2] / "infra"


def _looks_like_template(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:20000]
    except OSError:
        return False
    return "AWSTemplateFormatVersion" in head or "\nResources:" in head or '"Resources"' in head


def find_templates(root: Path | None = None) -> list[Path]:
    """Every CloudFormation template under ``root`` (default :func:`infra_dir`), sorted.

    Other YAML or JSON files there (pins, configs) are not templates and are left out.
    """
    root = root or infra_dir()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConfigError(f"{root} does not exist: name a template or a folder of templates (default: infra/, or UPDRAFT_INFRA_DIR)")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _SUFFIXES and _looks_like_template(p))
    if not found:
        raise ConfigError(f"{root} holds no CloudFormation template (*.yaml, *.yml, *.json with Resources)")
    return found


def resolve_template(name: str | os.PathLike[str] | None = None) -> Path:
    """A template path: ``name`` as given if it exists, else inside :func:`infra_dir`; default ``updraft.yaml``."""
    if name is None:
        path = infra_dir() / DEFAULT_TEMPLATE
    else:
        path = Path(name).expanduser()
        if not path.exists() and not path.is_absolute():
            path = infra_dir() / path
    if not path.is_file():
        raise ConfigError(f"template {path} does not exist (templates: {', '.join(p.name for p in find_templates())})")
    return path


def load_template(path: Path) -> dict[str, Any]:
    """The template as a mapping, intrinsic functions in long form; a ConfigError names a broken file."""
    from cfnlint.decode import decode_str

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read template {path}: {exc.strerror}") from None
    template, problems = decode_str(text)
    if problems or not isinstance(template, dict):
        detail = problems[0].message if problems else "not a mapping"
        raise ConfigError(f"template {path} cannot be read: {detail}")
    return json.loads(json.dumps(template))  # plain dicts and lists, not cfn-lint's node classes


@dataclass(frozen=True)
class TemplateParameter:
    """One parameter of a template, as its ``Parameters`` section declares it."""

    name: str
    type: str
    default: str | None = None
    allowed_values: tuple[str, ...] = ()
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class Template:
    """A template read from disk, with what deploying it needs."""

    path: Path
    body: str
    document: Mapping[str, Any] = field(repr=False)

    @classmethod
    def read(cls, path: Path) -> Template:
        return cls(path=path, body=path.read_text(), document=load_template(path))

    @property
    def parameters(self) -> dict[str, TemplateParameter]:
        out = {}
        for name, spec in (self.document.get("Parameters") or {}).items():
            default = spec.get("Default")
            out[name] = TemplateParameter(
                name=name,
                type=str(spec.get("Type", "String")),
                default=None if default is None else _parameter_text(default),
                allowed_values=tuple(str(v) for v in spec.get("AllowedValues") or ()),
                description=str(spec.get("Description", "")),
            )
        return out

    @property
    def outputs(self) -> list[str]:
        return list((self.document.get("Outputs") or {}).keys())

    @property
    def resource_types(self) -> dict[str, str]:
        """Logical id -> resource type."""
        return {name: str(spec.get("Type")) for name, spec in (self.document.get("Resources") or {}).items()}

    def capabilities(self) -> list[str]:
        """The capabilities CloudFormation demands: IAM resources need CAPABILITY_IAM, named ones CAPABILITY_NAMED_IAM."""
        named_keys = {"RoleName", "ManagedPolicyName", "UserName", "GroupName", "InstanceProfileName"}
        iam = [spec for spec in (self.document.get("Resources") or {}).values() if str(spec.get("Type", "")).startswith("AWS::IAM::")]
        if not iam:
            return []
        if any(named_keys & set(spec.get("Properties") or {}) for spec in iam):
            return ["CAPABILITY_NAMED_IAM"]
        return ["CAPABILITY_IAM"]

    def deploy_body(self) -> str:
        """What ``TemplateBody`` carries: the file as written, or compact JSON when comments push it over the limit.

        Both are the same template to CloudFormation; the JSON form drops comments and layout.
        """
        if len(self.body.encode()) <= TEMPLATE_BODY_LIMIT:
            return self.body
        compact = json.dumps(self.document, separators=(",", ":"))
        if len(compact.encode()) > TEMPLATE_BODY_LIMIT:
            raise ConfigError(
                f"template {self.path} is {len(compact.encode())} bytes even without comments; CloudFormation takes "
                f"at most {TEMPLATE_BODY_LIMIT} inline: split it into nested stacks"
            )
        return compact


def _parameter_text(value: Any) -> str:
    """A default as CloudFormation passes it: lists joined by commas, everything else as text."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
