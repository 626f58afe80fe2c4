"""ECR for ``updraft images push``: registry logins and the project's repositories.

Clients come from :meth:`tasks.aws.target.Target.client`, like every AWS call in updraft.
The registry password that ``get_authorization_token`` returns is handed to ``docker login``
on its standard input by :mod:`tasks.images`; it is kept out of reprs and never logged.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

import botocore.exceptions

from tasks.aws.errors import error_code, error_message
from tasks.aws.target import Target
from tasks.errors import TargetError

#: ``<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository name>``: a private ECR repository.
_REPOSITORY_URI = re.compile(
    r"^(?P<registry>(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?)"
    r"/(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)$"
)
_REGISTRY = re.compile(r"^\d{12}\.dkr\.ecr(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$")

#: What creates the repositories, for the message when one is missing.
INFRA_HINT = "deploy updraft's infrastructure first ('updraft infra deploy --stack NAME' creates it from infra/)"


@dataclass(frozen=True)
class EcrRepository:
    """One private ECR repository, as the parts of its URI."""

    registry: str
    account: str
    region: str
    name: str

    @property
    def uri(self) -> str:
        return f"{self.registry}/{self.name}"


@dataclass(frozen=True)
class RegistryLogin:
    """What ``docker login`` needs for one registry; the password never shows in a repr."""

    registry: str
    username: str
    password: str = dataclasses.field(repr=False)


def parse_repository_uri(uri: str) -> EcrRepository:
    """The parts of an ECR repository URI (no tag); a clear error for anything else."""
    text = uri.strip().removeprefix("https://").rstrip("/")
    found = _REPOSITORY_URI.match(text)
    if found is None:
        raise TargetError(
            f"{uri!r} is not a private ECR repository URI; expected "
            "<account>.dkr.ecr.<region>.amazonaws.com/<repository>"
        )
    return EcrRepository(found["registry"], found["account"], found["region"], found["name"])


def normalize_registry(registry: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com`` from what a user may paste (a scheme, a slash)."""
    text = registry.strip().removeprefix("https://").rstrip("/")
    if not _REGISTRY.match(text):
        raise TargetError(
            f"--registry {registry!r} is not a private ECR registry; expected "
            "<account>.dkr.ecr.<region>.amazonaws.com (the part of a repository URI before the '/')"
        )
    return text


def _for_region(target: Target, region: str) -> Target:
    """The same target in the registry's region: a repository's region is in its URI."""
    return target if target.region == region else dataclasses.replace(target, region=region)


def _fail(exc: botocore.exceptions.ClientError, action: str, permission: str) -> TargetError:
    code = error_code(exc)
    if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
        return TargetError(f"{action} was denied ({code}): the current AWS identity needs {permission}")
    return TargetError(f"{action} failed: {code}: {error_message(exc)}")


def _no_credentials() -> TargetError:
    return TargetError(
        "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "(pushing images talks to your account's ECR)"
    )


def registry_login(target: Target, registry: str) -> RegistryLogin:
    """A ``docker login`` for ``registry`` from ECR's ``GetAuthorizationToken`` (valid 12 hours).

    The token is base64 of ``AWS:<password>``; both halves go to docker, the password on stdin.
    """
    repo = parse_repository_uri(f"{registry}/x")
    ecr = _for_region(target, repo.region).client("ecr")
    try:
        answer = ecr.get_authorization_token(registryIds=[repo.account])
    except botocore.exceptions.NoCredentialsError:
        raise _no_credentials() from None
    except botocore.exceptions.ClientError as exc:
        raise _fail(exc, f"logging in to {registry}", "ecr:GetAuthorizationToken") from None
    data = answer.get("authorizationData") or []
    if not data:
        raise TargetError(f"ECR returned no authorization data for {registry}")
    try:
        username, password = base64.b64decode(data[0]["authorizationToken"]).decode().split(":", 1)
    except (KeyError, ValueError, UnicodeDecodeError):
        raise TargetError(f"ECR returned an authorization token for {registry} that is not base64 of user:password") from None
    return RegistryLogin(registry=registry, username=username, password=password)


def check_repositories(target: Target, repositories: Iterable[EcrRepository], *, hint: str = INFRA_HINT) -> None:
    """Fail, naming every missing one and what creates them, unless all ``repositories`` exist."""
    by_place: dict[tuple[str, str], list[EcrRepository]] = {}
    for repo in repositories:
        by_place.setdefault((repo.account, repo.region), []).append(repo)
    missing: list[EcrRepository] = []
    for (account, region), repos in sorted(by_place.items()):
        ecr = _for_region(target, region).client("ecr")
        for repo in repos:
            try:
                ecr.describe_repositories(registryId=account, repositoryNames=[repo.name])
            except botocore.exceptions.NoCredentialsError:
                raise _no_credentials() from None
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "RepositoryNotFoundException":
                    missing.append(repo)
                    continue
                raise _fail(exc, f"looking up ECR repository {repo.name}", "ecr:DescribeRepositories") from None
    if missing:
        names = ", ".join(repo.name for repo in missing)
        where = f"account {missing[0].account}, region {missing[0].region}"
        raise TargetError(f"ECR repository {names} does not exist ({where}): {hint}")

