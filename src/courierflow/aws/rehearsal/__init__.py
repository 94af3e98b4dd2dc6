"""`courierflow rehearse`: everything `deploy` ships, run together on one machine.

The real artifacts are deployed with the real `courierflow deploy` to moto's server as a
stand-in account (the SAM transform run here, since moto has none), and then run as the
stack describes them:

- every function of the stack is served by the local Lambda service with the handler,
  environment, timeout, memory and layers the stack gave it, under an interpreter that
  has only boto3 (what the Lambda Python runtime ships), with nothing else on its path;
  async retries and on-failure destinations and event source mappings as the stack
  declares them;
- the upload bucket's notification is read from the deployed stack and wired to the
  function it names (through a queue on moto, which delivers S3 notifications to SQS);
- the instance's user data, read from the deployed instance, runs into a scratch root
  (real pip installs of the real wheel; with RabbitMQ, the bootstrap configures a private
  node the way it configures the instance's), and the manager runs with exactly its
  systemd unit's ExecStart, EnvironmentFile and Environment;
- then `courierflow submit FILE --aws` must deliver every order; a second deploy with a
  changed delivery handler must run the change.

What is added to the stack's own configuration is only what stands in for the network:
the endpoint variables pointing at the stand-ins, dummy credentials (given to functions in
their environment as Lambda gives them, and to the instance through a stand-in of the
instance metadata service as EC2 gives them), and the broker's address (the instance's
private IP is 127.0.0.1 and a free port here).
"""

from courierflow.aws.rehearsal.account import RehearsalError
from courierflow.aws.rehearsal.flow import rehearsal, rehearse, succeeded
from courierflow.aws.rehearsal.session import Rehearsal, RehearsalOptions

__all__ = [
    "Rehearsal",
    "RehearsalError",
    "RehearsalOptions",
    "rehearsal",
    "rehearse",
    "succeeded",
]
