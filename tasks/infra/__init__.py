"""Infrastructure for a customer's account: the CloudFormation templates in ``infra/``.

- :mod:`tasks.infra.templates`: find and read templates, the body CloudFormation gets;
- :mod:`tasks.infra.lint`: cfn-lint and checkov over them (``updraft infra validate``);
- :mod:`tasks.infra.deploy`: create or update a stack and wait (``updraft infra deploy``);
- :mod:`tasks.infra.iam_policy`: evaluate IAM policy documents (what a role may do);
- :mod:`tasks.infra.roles`: a deployed role's policies, read back from IAM.

Stack outputs are read through :func:`tasks.aws.stacks.stack_outputs`.
"""
