"""LocalStack READY hook: the bucket(s) and the SageMaker execution role updraft expects.

LocalStack runs every ``.py`` file in ``/etc/localstack/init/ready.d`` once it serves
requests, inside its own Python (which has boto3), with ``exec`` and empty globals: so
this file is a plain script without a ``__main__`` guard, and it also runs by hand against
any LocalStack (``python localstack/init/ready.d/10-updraft-resources.py`` with
``AWS_ENDPOINT_URL`` set). It is idempotent: a second run changes nothing that exists.

Settings (environment; the compose file and ``localstack/host.py`` pass them through):

- ``UPDRAFT_LOCALSTACK_BUCKETS``: comma-separated bucket names; default ``updraft-demo``,
  the bucket of ``updraft demo`` and of the sample config (``tasks/sample.py``).
- ``UPDRAFT_LOCALSTACK_PROJECT``: the project name (config ``name``); the role is
  ``<project>-sagemaker-execution``. Default ``claims-fraud``, the sample's project.

LocalStack names the account after the access key (``test`` gives ``000000000000``), so
the hook uses ``AWS_ACCESS_KEY_ID`` when it is set and ``test`` otherwise: the same
identity updraft uses against LocalStack.
"""

import json
import os

import boto3
import botocore.config

DEFAULT_BUCKETS = "updraft-demo"
DEFAULT_PROJECT = "claims-fraud"
ROLE_SUFFIX = "-sagemaker-execution"


def _endpoint_url():
    """AWS_ENDPOINT_URL when set (a run by hand), else LocalStack's own gateway on loopback.

    GATEWAY_LISTEN is ``host:port[,host:port...]``; inside a container it may be unset
    (4566) or name a wildcard address, which loopback reaches as well.
    """
    explicit = os.environ.get("AWS_ENDPOINT_URL")
    if explicit:
        return explicit
    listen = (os.environ.get("GATEWAY_LISTEN") or ":4566").split(",")[0].strip()
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port or 4566}"


def _client(service, region):
    return boto3.client(
        service,
        endpoint_url=_endpoint_url(),
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "test",
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "test",
        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )


def create_bucket(s3, name, region):
    """Create ``name`` unless this account already owns it; block public access as infra/ does."""
    if name in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        print(f"updraft init: bucket {name} already exists")
    elif region == "us-east-1":
        s3.create_bucket(Bucket=name)
        print(f"updraft init: created bucket {name}")
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        print(f"updraft init: created bucket {name}")
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def execution_role_policy(buckets):
    """What the SageMaker execution role may do: read and write the project's buckets, write logs."""
    arns = [f"arn:aws:s3:::{b}" for b in buckets]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListProjectBuckets", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": arns},
            {
                "Sid": "ReadWriteProjectObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"{arn}/*" for arn in arns],
            },
            {
                "Sid": "WriteTrainingLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": "arn:aws:logs:*:*:log-group:/aws/sagemaker/*",
            },
        ],
    }


def create_execution_role(iam, project, buckets):
    """The role SageMaker would assume for the project's jobs and endpoints; returns its ARN."""
    name = f"{project}{ROLE_SUFFIX}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    try:
        arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"SageMaker execution role of the updraft project {project} (LocalStack)",
            Tags=[{"Key": "updraft:project", "Value": project}],
        )["Role"]["Arn"]
        print(f"updraft init: created role {arn}")
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        print(f"updraft init: role {arn} already exists")
    iam.put_role_policy(
        RoleName=name, PolicyName="updraft-project-data", PolicyDocument=json.dumps(execution_role_policy(buckets))
    )
    return arn


def main():
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    buckets = [b.strip() for b in os.environ.get("UPDRAFT_LOCALSTACK_BUCKETS", DEFAULT_BUCKETS).split(",") if b.strip()]
    project = os.environ.get("UPDRAFT_LOCALSTACK_PROJECT", "").strip() or DEFAULT_PROJECT
    s3 = _client("s3", region)
    for bucket in buckets:
        create_bucket(s3, bucket, region)
    create_execution_role(_client("iam", region), project, buckets)


# No __main__ guard: LocalStack exec()s this file with empty globals.
main()
