"""Where moto falls short of the AWS behaviour courierflow's stand-ins rely on, bridged.

Applied in the moto server courierflow starts (``python -m courierflow.local.moto_gaps``
runs moto's server with every bridge in place) and by tests that use moto in process.
Each bridge names the gap; remove it when moto closes the gap.
"""

from __future__ import annotations

import sys
import threading
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


def ssm_typed_parameters_resolve_once() -> None:
    """A parameter of type ``AWS::SSM::Parameter::Value<...>`` holds a parameter's name;
    CloudFormation looks it up once. moto 5.2 looks it up again when it executes a
    change set, with the value it already resolved as the name, and fails
    (``AttributeError`` in ``ResourceMap.parse_ssm_parameter``): a value that names no
    parameter is taken as already resolved."""
    from moto.cloudformation.parsing import ResourceMap
    from moto.ssm.models import ssm_backends

    original = ResourceMap.parse_ssm_parameter
    if getattr(original, "_courierflow_bridge", False):
        return

    def parse_ssm_parameter(self: Any, value: str, value_type: str) -> Any:
        backend = ssm_backends[self._account_id][self._region_name]
        if backend.get_parameter(value) is None:
            return value
        return original(self, value, value_type)

    parse_ssm_parameter._courierflow_bridge = True  # type: ignore[attr-defined]
    ResourceMap.parse_ssm_parameter = parse_ssm_parameter  # type: ignore[method-assign]


def change_sets_set_the_stacks_outputs() -> None:
    """A stack created or updated through a change set has the outputs of its new
    template. moto 5.2 builds a stack's outputs when the stack object is made (from an
    empty template, for a CREATE change set) and not when a change set is executed, so
    ``DescribeStacks`` shows none."""
    from moto.cloudformation.models import ChangeSet

    original = ChangeSet.apply
    if getattr(original, "_courierflow_bridge", False):
        return

    def apply(self: Any) -> None:
        original(self)
        self.stack.template_dict = self.template_dict
        self.stack.output_map = self.stack._create_output_map()

    apply._courierflow_bridge = True  # type: ignore[attr-defined]
    ChangeSet.apply = apply  # type: ignore[method-assign]


def functions_keep_their_layers() -> None:
    """A function created by CloudFormation has the ``Layers`` its template lists. moto
    5.2 leaves ``Layers`` out of the properties it reads when CloudFormation creates a
    function (it honours them only on update)."""
    from moto.awslambda.models import LambdaFunction

    original = LambdaFunction.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    if getattr(original, "_courierflow_bridge", False):
        return

    def create(
        cls: Any, resource_name: str, cloudformation_json: Any, *args: Any, **kw: Any
    ) -> Any:
        function = original(cls, resource_name, cloudformation_json, *args, **kw)
        layers = cloudformation_json.get("Properties", {}).get("Layers")
        if layers:
            function.layers = function._get_layers_data(layers)
        return function

    create._courierflow_bridge = True  # type: ignore[attr-defined]
    LambdaFunction.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment]


def updates_leave_resources_whose_condition_is_false() -> None:
    """A stack update leaves alone a resource whose ``Condition`` is false: CloudFormation
    does not create it, so there is nothing to update (conditions-section-structure).
    moto 5.2 marks a resource for update when a parameter it references changes value,
    whatever its condition, and then fails on its references to resources the condition
    also left out ("Fn::GetAtt references undefined resource"). The rehearsal meets it:
    its first deploy reads the account's concurrency from moto (which does not answer,
    so deploy plans for 10), the redeploy from the local Lambda service (1,000), and the
    SQS trigger's concurrency, a resource of serverless mode only, references it."""
    from moto.cloudformation.parsing import ResourceMap

    original = ResourceMap.build_resource_diff
    if getattr(original, "_courierflow_bridge", False):
        return

    def build_resource_diff(self: Any, other_template: Any, *args: Any, **kw: Any) -> Any:
        actions = original(self, other_template, *args, **kw)
        resources = other_template["Resources"]
        actions["Modify"] = [
            name
            for name in actions["Modify"]
            if "Condition" not in resources[name]
            or self.lazy_condition_map[resources[name]["Condition"]]
        ]
        return actions

    build_resource_diff._courierflow_bridge = True  # type: ignore[attr-defined]
    ResourceMap.build_resource_diff = build_resource_diff  # type: ignore[method-assign]


def dynamodb_requests_are_atomic() -> None:
    """Every DynamoDB write of one item is atomic and a conditional write checks its
    condition and writes as one step (Amazon DynamoDB Developer Guide, "Condition
    expressions" and "Read consistency"): no reader sees half an item, and of two
    conditional creates of one key only one succeeds. moto 5.2 checks a condition, then
    stores an empty item for a new key, then applies the update to it in place, with no
    lock, and its server answers on many threads: a reader could see an item with its
    key alone (CI met it once: ``courierflow submit`` read a file record without its
    bucket) and two ``attribute_not_exists`` creates could both pass. One request at a
    time is enough for moto's in-memory tables."""
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action
    if getattr(original, "_courierflow_bridge", False):
        return
    one_at_a_time = threading.RLock()

    def call_action(self: Any) -> Any:
        with one_at_a_time:
            return original(self)

    call_action._courierflow_bridge = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = call_action  # type: ignore[method-assign]


def apply_all() -> None:
    """Every bridge of this module."""
    layer_version_ref_is_its_arn()
    ssm_typed_parameters_resolve_once()
    change_sets_set_the_stacks_outputs()
    functions_keep_their_layers()
    updates_leave_resources_whose_condition_is_false()
    dynamodb_requests_are_atomic()


def main() -> None:
    """moto's standalone server (same arguments), with every bridge applied."""
    from moto.server import main as moto_main

    apply_all()
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
