from tests.servers import http_capture, smtp_server  # noqa: F401
