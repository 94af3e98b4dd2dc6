"""`courierflow lab DIR`: the AWS lab's own three programs, unmodified, on one machine.

A student's ``lambda_order_publisher.py``, ``lambda_delivery.py`` and ``manager.py`` run
against the same stand-ins courierflow's own code runs against (a private RabbitMQ node,
moto's S3, the local Lambda service), with nothing of courierflow's in between: their
orders are followed through the Lambda service's own log (START/END/REPORT lines) and
RabbitMQ's management API, and what went wrong is explained in plain words.

Modules: ``stack`` starts and stops the stand-ins and the student's manager, ``relay``
is the S3 notification's last hop (SQS -> the publisher, unwrapped, as S3 invokes it),
``follow`` reads what happened, ``diagnose`` explains it, ``starter`` writes a starter
trio for ``--init``, ``cli`` is the command.
"""
