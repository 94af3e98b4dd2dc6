"""Where moto falls short of the AWS behaviour courierflow's stand-ins rely on, bridged.

Applied in the moto server courierflow starts (``python -m courierflow.local.moto_gaps``
runs moto's server with every bridge in place) and by tests that use moto in process.
Each bridge names the gap; remove it when moto closes the gap.
"""

from __future__ import annotations

import sys
from typing import Any


def layer_version_ref_is_its_arn() -> None:
    """``Ref`` of an ``AWS::Lambda::LayerVersion`` is the version's ARN in CloudFormation
    (aws-resource-lambda-layerversion, "Return values"). moto 5.2's model has no
    ``physical_resource_id``, so its ``Ref`` yields the model object: creating a function
    drops its layers, and updating one raises ``AttributeError`` in
    ``LambdaFunction._get_layers_data``. A stack update that ships a new layer (every
    deploy of new code) needs the ARN."""
    from moto.awslambda.models import LayerVersion

    if "physical_resource_id" not in vars(LayerVersion):

        def physical_resource_id(self: Any) -> str:
            return str(self.arn)

        LayerVersion.physical_resource_id = property(physical_resource_id)  # type: ignore[attr-defined]


def apply_all() -> None:
    """Every bridge of this module."""
    layer_version_ref_is_its_arn()


def main() -> None:
    """moto's standalone server (same arguments), with every bridge applied."""
    from moto.server import main as moto_main

    apply_all()
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
