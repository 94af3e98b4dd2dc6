"""The stand-in account every part of a rehearsal agrees on: the stack's name, the
region, dummy credentials (moto accepts any) and the AMI, and the rehearsal's error."""

from __future__ import annotations

from courierflow.config import DEFAULT_REGION
from courierflow.errors import CourierflowError

#: the stand-in stack's name and region
STACK = "rehearsal"
REGION = DEFAULT_REGION
#: the stand-in account's credentials (moto accepts any)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal"}
#: the SSM parameter standing in for Debian's public AMI parameter, and a moto AMI
AMI_PARAMETER = "/courierflow/rehearsal/debian-12-ami"
STAND_IN_AMI = "ami-12c6146b"


class RehearsalError(CourierflowError):
    """Raised when a step of the rehearsal fails; the message names the step."""
