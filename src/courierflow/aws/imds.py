"""A stand-in for the EC2 instance metadata service (IMDSv2), serving the instance
role's credentials the way EC2 serves them, so the rehearsed instance's processes find
credentials as they do on EC2: through boto3's credential chain, not the environment.

boto3 and the AWS CLI reach it through ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
(https://docs.aws.amazon.com/sdkref/latest/guide/feature-imds-credentials.html).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: the role name the stand-in reports
ROLE = "rehearsal-instance-role"
#: path prefix of the role credentials
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


class MetadataService:
    """IMDSv2 on 127.0.0.1: a session token, the role's name and its credentials."""

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self.credentials = {"AccessKeyId": access_key, "SecretAccessKey": secret_key}
        self.region = region
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                service.requests.append(f"PUT {self.path}")
                if self.path == "/latest/api/token":
                    self._send(200, "rehearsal-imds-token", "text/plain")
                else:
                    self._send(404, "", "text/plain")

            def do_GET(self) -> None:
                service.requests.append(f"GET {self.path}")
                if self.headers.get("X-aws-ec2-metadata-token") != "rehearsal-imds-token":
                    self._send(401, "", "text/plain")  # IMDSv2 only, as deploy's instances
                elif self.path.rstrip("/") == CREDENTIALS_PATH.rstrip("/"):
                    self._send(200, ROLE, "text/plain")
                elif self.path == CREDENTIALS_PATH + ROLE:
                    self._send(200, json.dumps(service.document()), "application/json")
                elif self.path == "/latest/meta-data/placement/region":
                    self._send(200, service.region, "text/plain")
                else:
                    self._send(404, "", "text/plain")

            def _send(self, status: int, body: str, kind: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def document(self) -> dict[str, str]:
        """Credentials as EC2 hands them: valid for six hours from now."""
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600))
        return {"Code": "Success", "Type": "AWS-HMAC", "Token": "rehearsal-session",
                "Expiration": expires, "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                **self.credentials}  # fmt: skip

    def start(self) -> MetadataService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
