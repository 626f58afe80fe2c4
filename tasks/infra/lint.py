"""``updraft infra validate``: cfn-lint and checkov over the templates, as one list of findings.

cfn-lint checks that a template is valid CloudFormation (schemas, references, values);
checkov checks it against security policies (encryption, public access, wildcards in
IAM). A check skipped in a template's ``Metadata.checkov.skip`` must say why there; a skip
without its reason is reported as a finding of its own.

cfn-lint runs in this process (it comes with moto). checkov cannot share updraft's
environment (its pins conflict with updraft's; pip would settle on a 2022 release), so it
lives in a virtual environment of its own (``make checkov``) and runs as a command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tasks.errors import UpdraftError

#: Where ``make checkov`` installs checkov, relative to the environment updraft runs in.
CHECKOV_TOOL_DIR = Path("tools") / "checkov"
CHECKOV_TIMEOUT_S = 600
#: What checkov writes when a skip names no reason.
_NO_COMMENT = "No comment provided"


class ToolMissingError(UpdraftError):
    """A validation tool is not installed where updraft looks for it."""


@dataclass(frozen=True)
class Finding:
    """One problem a tool reported: where (file, line, resource), which rule, and what it says.

    ``severity``: cfn-lint's ``error``, ``warning`` or ``informational``; ``failed`` for a
    checkov check that failed. Errors and failed checks fail the validation.
    """

    tool: str
    path: str
    line: int
    rule: str
    severity: str
    message: str
    resource: str = ""

    @property
    def blocking(self) -> bool:
        return self.severity in ("error", "failed")

    def describe(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        what = f" {self.resource}:" if self.resource else ""
        return f"{where}: {self.tool} {self.rule} ({self.severity}){what} {self.message}"


@dataclass(frozen=True)
class SkippedCheck:
    """A checkov check a template chose to skip, with the reason it gives."""

    path: str
    line: int
    rule: str
    resource: str
    reason: str


@dataclass
class ValidationReport:
    templates: list[str]
    findings: list[Finding] = field(default_factory=list)
    skipped: list[SkippedCheck] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)
    passed_checks: int = 0

    @property
    def ok(self) -> bool:
        return not any(f.blocking for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "templates": self.templates,
            "tools": self.tools,
            "passed_checks": self.passed_checks,
            "findings": [asdict(f) for f in self.findings],
            "skipped": [asdict(s) for s in self.skipped],
        }


def _display(path: Path | str, root: Path | None) -> str:
    path = Path(path).resolve()
    for base in (root, Path.cwd()):
        if base is not None:
            try:
                return str(path.relative_to(base.resolve()))
            except ValueError:
                continue
    return str(path)


# ----------------------------------------------------------------------------- cfn-lint


def run_cfn_lint(templates: Sequence[Path], *, root: Path | None = None) -> tuple[list[Finding], str]:
    """cfn-lint's matches for each template, and cfn-lint's version."""
    from cfnlint.api import lint_file
    from cfnlint.version import __version__

    findings = []
    for template in templates:
        for match in lint_file(Path(template)):
            findings.append(
                Finding(
                    tool="cfn-lint",
                    path=_display(match.filename or template, root),
                    line=int(match.linenumber or 0),
                    rule=match.rule.id,
                    severity=str(match.rule.severity).lower(),
                    message=str(match.message),
                )
            )
    return findings, __version__


# ----------------------------------------------------------------------------- checkov


def find_checkov() -> str:
    """The checkov command: ``UPDRAFT_CHECKOV``, else the one ``make checkov`` installed, else PATH's."""
    override = os.environ.get("UPDRAFT_CHECKOV")
    if override:
        if shutil.which(override) is None:
            raise ToolMissingError(f"UPDRAFT_CHECKOV={override} is not an executable checkov")
        return override
    bundled = Path(sys.prefix) / CHECKOV_TOOL_DIR / "bin" / "checkov"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    on_path = shutil.which("checkov")
    if on_path:
        return on_path
    raise ToolMissingError(
        f"checkov is not installed: run 'make checkov' (it creates {bundled.parent.parent} from "
        "infra/checkov-requirements.txt), or put checkov on PATH, or set UPDRAFT_CHECKOV"
    )


def checkov_command(checkov: str, templates: Iterable[Path]) -> list[str]:
    """checkov over exactly these files, offline (no downloads from Prisma Cloud), as JSON."""
    command = [checkov, "--framework", "cloudformation", "--skip-download", "--compact", "-o", "json"]
    for template in templates:
        command += ["-f", str(Path(template).resolve())]
    return command


def parse_checkov_output(text: str, *, root: Path | None = None) -> tuple[list[Finding], list[SkippedCheck], int, str]:
    """Failed checks, skipped checks, the number passed and checkov's version, from its JSON report.

    A skip without a reason and a template checkov could not parse are findings too: both
    would otherwise let a template through unchecked.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise UpdraftError(f"checkov did not answer JSON: {text.strip()[-500:] or '(no output)'}") from None
    reports = data if isinstance(data, list) else [data]
    findings: list[Finding] = []
    skipped: list[SkippedCheck] = []
    passed = 0
    version = ""
    for report in reports:
        summary = report.get("summary", report)
        version = version or str(summary.get("checkov_version", ""))
        passed += int(summary.get("passed", 0))
        results = report.get("results") or {}
        for check in results.get("failed_checks", []):
            findings.append(_checkov_finding(check, "failed", check.get("check_name", ""), root))
        for check in results.get("skipped_checks", []):
            reason = str((check.get("check_result") or {}).get("suppress_comment") or "").strip()
            path = _display(check.get("file_abs_path") or check.get("file_path", ""), root)
            line = int((check.get("file_line_range") or [0])[0])
            if not reason or reason == _NO_COMMENT:
                findings.append(
                    _checkov_finding(
                        check, "failed", "skipped without a reason: add 'comment:' to the skip in the resource's Metadata", root
                    )
                )
                continue
            skipped.append(SkippedCheck(path=path, line=line, rule=check["check_id"], resource=check.get("resource", ""), reason=reason))
        for failure in results.get("parsing_errors", []):
            findings.append(Finding("checkov", _display(failure, root), 0, "parsing", "failed", "checkov could not parse this file"))
    return findings, skipped, passed, version


def _checkov_finding(check: dict[str, Any], severity: str, message: str, root: Path | None) -> Finding:
    return Finding(
        tool="checkov",
        path=_display(check.get("file_abs_path") or check.get("file_path", ""), root),
        line=int((check.get("file_line_range") or [0])[0]),
        rule=str(check.get("check_id", "")),
        severity=severity,
        message=str(message),
        resource=str(check.get("resource", "")),
    )


def run_checkov(templates: Sequence[Path], *, root: Path | None = None, checkov: str | None = None) -> tuple[list[Finding], list[SkippedCheck], int, str]:
    command = checkov_command(checkov or find_checkov(), templates)
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_NO_OUTPUT_COLOR="1")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECKOV_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise UpdraftError(f"checkov did not finish within {CHECKOV_TIMEOUT_S} s") from None
    # checkov exits 1 when a check failed; anything else with no report is checkov itself failing.
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise UpdraftError(f"checkov failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
    return parse_checkov_output(done.stdout, root=root)


# ----------------------------------------------------------------------------- both


def validate_templates(templates: Sequence[Path], *, root: Path | None = None, checkov: str | None = None) -> ValidationReport:
    """cfn-lint and checkov over ``templates``; the report's ``ok`` is False on any error or failed check."""
    report = ValidationReport(templates=[_display(t, root) for t in templates])
    lint_findings, lint_version = run_cfn_lint(templates, root=root)
    check_findings, skipped, passed, checkov_version = run_checkov(templates, root=root, checkov=checkov)
    report.findings = sorted(lint_findings + check_findings, key=lambda f: (f.path, f.line, f.tool, f.rule))
    report.skipped = skipped
    report.passed_checks = passed
    report.tools = {"cfn-lint": lint_version, "checkov": checkov_version}
    return report
