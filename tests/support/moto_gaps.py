"""Where moto falls short of what CloudFormation does, bridged for the tests that need it.

Each bridge names the gap; remove it when moto closes the gap.
"""

from __future__ import annotations

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
