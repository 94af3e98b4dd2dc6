"""The SAM template as data: read with CloudFormation's short tags, and transformed the
way CloudFormation's ``AWS::Serverless-2016-10-31`` transform does it.

`deploy` sends the template as it is and CloudFormation transforms it. A stand-in
account without the transform (moto's server, in `courierflow rehearse`) is sent the
template transformed here by aws-sam-translator, the library behind AWS's transform.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation's short tags (``!Ref``, ``!Sub``, ...) into
    their long form (``{"Ref": ...}``, ``{"Fn::Sub": ...}``)."""


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(
            None, None, f"!{suffix} on a {type(node).__name__}", node.start_mark
        )
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def parse(text: str) -> dict[str, Any]:
    """A template's YAML (or JSON) text as a dict, short tags in their long form."""
    doc: dict[str, Any] = yaml.load(text, Loader=_CfnLoader)
    return doc


class _NoManagedPolicies:
    """The managed-policy loader the translator asks for; the template names ARNs itself."""

    def load(self) -> dict[str, str]:
        return {}


def transform(template: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """The template after the SAM transform, as CloudFormation would run it."""
    from samtranslator.translator.transform import transform as sam_transform

    result: dict[str, Any] = sam_transform(
        copy.deepcopy(dict(template)), dict(parameters), _NoManagedPolicies()
    )
    return result


def transform_text(text: str, parameters: Mapping[str, str]) -> str:
    """``transform`` from template text to JSON text."""
    return json.dumps(transform(parse(text), parameters))
