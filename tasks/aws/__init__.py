"""The one place that knows where AWS is: clients, filesystems and the embedded endpoint.

Nothing else in updraft builds a boto3 client or an s3fs filesystem; domain code receives
them from here, so switching between real AWS, LocalStack and the embedded endpoint is
one setting.
"""

from tasks.aws.target import Target, resolve_target

__all__ = ["Target", "resolve_target"]
