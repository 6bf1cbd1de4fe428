from tests.servers import s3_bucket, s3_server  # noqa: F401
