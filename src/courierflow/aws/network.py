"""Which network paths each compute resource of the stack needs, and a check that the
template gives it one.

The table says what each function and the instance talk to; :func:`missing_paths` reads a
CloudFormation template (after the SAM transform, with parameter values) and names every
need without a path. The rules follow AWS's documentation:

- A function without ``VpcConfig`` reaches AWS APIs over Lambda's own network, and
  nothing inside the VPC (configuration-vpc.html).
- In a VPC, an interface endpoint with private DNS takes the service's default name for
  the whole VPC, so its security group must admit 443 from the caller, whatever the
  routes say (privatelink-access-aws-services.html); otherwise a gateway endpoint on the
  subnet's route table (gateway-endpoints.html), a default route to a NAT gateway or to a
  NAT instance (source/destination check off, its group admitting the caller, itself on
  a subnet routed to an internet gateway), or, for an instance with a public address, a
  default route to the internet gateway.
- A port on the broker instance is reachable when the instance's security group admits
  it from one of the caller's groups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: the AWS APIs (by endpoint service name) and instance ports each resource uses, per
#: transport; "internet" is the Debian mirrors the instance installs from
NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "PublisherFunction": {
        # reads the upload, writes rejects; the ledger; the broker's URL from SSM
        "rabbitmq": ("s3", "dynamodb", "ssm", "BrokerInstance:5672"),
        "sqs": ("s3", "dynamodb", "sqs"),
    },
    "DeliveryFunction": {"rabbitmq": ("dynamodb",), "sqs": ("dynamodb", "sqs")},
    # the failure queue, the ledger, and re-dispatches
    "ReconcilerFunction": {
        "rabbitmq": ("dynamodb", "sqs", "lambda"),
        "sqs": ("dynamodb", "sqs", "lambda"),
    },
    # the artifacts, the broker secret, Invoke, the ledger, the readiness signal, apt
    "BrokerInstance": {
        "rabbitmq": ("s3", "ssm", "lambda", "dynamodb", "cloudformation", "internet"),
        "sqs": ("s3", "lambda", "dynamodb", "sqs", "cloudformation", "internet"),
    },
}
HTTPS = 443
ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class Need:
    """One thing a resource must reach."""

    resource: str
    target: str  # an endpoint service name, "internet", or "Resource:port"


def resolve(template: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """The resources that exist with these parameters, with ``Fn::If``, parameter
    ``Ref`` and ``AWS::NoValue`` resolved. References to resources stay ``{"Ref": name}``."""
    values = {
        name: parameters.get(name, str(spec.get("Default", "")))
        for name, spec in template.get("Parameters", {}).items()
    }
    conditions: dict[str, bool] = {}
    pending = dict(template.get("Conditions", {}))

    def condition(name: str) -> bool:
        if name not in conditions:
            conditions[name] = bool(evaluate(pending[name]))
        return conditions[name]

    def evaluate(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return values.get(arg, node)
            if key == "Condition":
                return condition(arg)
            if key == "Fn::Equals":
                return evaluate(arg[0]) == evaluate(arg[1])
            if key == "Fn::And":
                return all(evaluate(a) for a in arg)
            if key == "Fn::Or":
                return any(evaluate(a) for a in arg)
            if key == "Fn::Not":
                return not evaluate(arg[0])
        return node

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if list(node) == ["Fn::If"]:
                name, yes, no = node["Fn::If"]
                return walk(yes if condition(name) else no)
            if list(node) == ["Ref"]:
                if node["Ref"] == "AWS::NoValue":
                    return _NO_VALUE
                return values.get(node["Ref"], node)
            out = {k: walk(v) for k, v in node.items()}
            return {k: v for k, v in out.items() if v is not _NO_VALUE}
        if isinstance(node, list):
            return [item for item in (walk(v) for v in node) if item is not _NO_VALUE]
        return node

    resources = {
        name: walk(resource)
        for name, resource in template["Resources"].items()
        if "Condition" not in resource or condition(resource["Condition"])
    }
    return resources


_NO_VALUE = object()


def needs(resources: Mapping[str, Any], transport: str) -> Iterator[Need]:
    """Every need of every compute resource that exists in ``resources``."""
    for resource, by_transport in NEEDS.items():
        if resource in resources:
            for target in by_transport[transport]:
                yield Need(resource, target)


def missing_paths(resources: Mapping[str, Any], transport: str) -> list[str]:
    """One line per need that has no path, naming the resource, the target and why."""
    net = _Network(resources)
    return [
        f"{need.resource} -> {need.target}: {why}"
        for need in needs(resources, transport)
        if (why := net.why_not(need))
    ]


def _ref(node: Any) -> str:
    """The resource a ``Ref`` or ``Fn::GetAtt`` names, or the node as text."""
    if isinstance(node, dict):
        if "Ref" in node:
            return str(node["Ref"])
        if "Fn::GetAtt" in node:
            return str(node["Fn::GetAtt"][0])
    return str(node)


def _service(endpoint: Mapping[str, Any]) -> str:
    name = endpoint["Properties"]["ServiceName"]
    text = name.get("Fn::Sub", "") if isinstance(name, dict) else str(name)
    return text.rsplit(".", 1)[-1]


class _Network:
    """The VPC as the resolved template describes it."""

    def __init__(self, resources: Mapping[str, Any]) -> None:
        self.resources = resources
        self.of_type: dict[str, dict[str, Any]] = {}
        for name, resource in resources.items():
            self.of_type.setdefault(resource["Type"], {})[name] = resource

    def _all(self, kind: str) -> dict[str, Any]:
        return self.of_type.get(kind, {})

    # --- where a resource sits ---------------------------------------------------------

    def placement(self, resource: str) -> tuple[list[str], list[str]] | None:
        """(subnets, security groups) of a resource in the VPC; None outside it."""
        props = self.resources[resource].get("Properties", {})
        if self.resources[resource]["Type"] == "AWS::EC2::Instance":
            return [_ref(props["SubnetId"])], [_ref(g) for g in props.get("SecurityGroupIds", [])]
        vpc = props.get("VpcConfig")
        if not vpc:
            return None
        return [_ref(s) for s in vpc["SubnetIds"]], [_ref(g) for g in vpc["SecurityGroupIds"]]

    def route_table(self, subnet: str) -> str | None:
        for assoc in self._all("AWS::EC2::SubnetRouteTableAssociation").values():
            if _ref(assoc["Properties"]["SubnetId"]) == subnet:
                return _ref(assoc["Properties"]["RouteTableId"])
        return None

    def default_route(self, table: str | None) -> dict[str, Any] | None:
        for route in self._all("AWS::EC2::Route").values():
            props = route["Properties"]
            if (
                _ref(props["RouteTableId"]) == table
                and props.get("DestinationCidrBlock") == ANYWHERE
            ):
                return dict(props)
        return None

    def admits(self, group: str, port: int, sources: list[str], cidrs: list[str]) -> bool:
        """Whether security group ``group`` admits ``port`` from one of ``sources`` (groups)
        or from an address in ``cidrs``."""
        rules = list(self.resources[group]["Properties"].get("SecurityGroupIngress", []))
        rules += [
            r["Properties"]
            for r in self._all("AWS::EC2::SecurityGroupIngress").values()
            if _ref(r["Properties"]["GroupId"]) == group
        ]
        for rule in rules:
            if not int(rule["FromPort"]) <= port <= int(rule["ToPort"]):
                continue
            if "SourceSecurityGroupId" in rule and _ref(rule["SourceSecurityGroupId"]) in sources:
                return True
            if "CidrIp" in rule:
                allowed = ipaddress.ip_network(str(rule["CidrIp"]))
                if any(ipaddress.ip_network(c).subnet_of(allowed) for c in cidrs):  # type: ignore[arg-type]
                    return True
        return False

    def cidr(self, subnet: str) -> str:
        return str(self.resources[subnet]["Properties"]["CidrBlock"])

    # --- the verdict ---------------------------------------------------------------------

    def why_not(self, need: Need) -> str:
        """Empty when ``need`` has a path; otherwise what is missing."""
        placed = self.placement(need.resource)
        if ":" in need.target:
            target, port = need.target.split(":")
            if placed is None:
                return "outside the VPC, it cannot reach an address inside it"
            if target not in self.resources:
                return f"{target} does not exist"
            groups = self.placement(target)
            assert groups is not None
            cidrs = [self.cidr(s) for s in placed[0]]
            if any(self.admits(g, int(port), placed[1], cidrs) for g in groups[1]):
                return ""
            return f"no security group of {target} admits port {port} from it"
        if placed is None:
            return ""  # Lambda's own network reaches AWS APIs and the internet
        return next(
            (why for subnet in placed[0] if (why := self._why_not_from(subnet, placed[1], need))),
            "",
        )

    def _why_not_from(self, subnet: str, groups: list[str], need: Need) -> str:
        cidrs = [self.cidr(subnet)]
        table = self.route_table(subnet)
        if need.target != "internet":
            for name, endpoint in self._all("AWS::EC2::VPCEndpoint").items():
                props = endpoint["Properties"]
                if _service(endpoint) != need.target:
                    continue
                if props.get("VpcEndpointType") == "Interface" and props.get("PrivateDnsEnabled"):
                    # the service's name now resolves to this endpoint in the whole VPC
                    if any(
                        self.admits(_ref(g), HTTPS, groups, cidrs)
                        for g in props.get("SecurityGroupIds", [])
                    ):
                        return ""
                    return f"{name} takes its DNS name but its security group refuses 443"
                if props.get("VpcEndpointType") == "Gateway" and table in [
                    _ref(t) for t in props.get("RouteTableIds", [])
                ]:
                    return ""
        route = self.default_route(table)
        if route is None:
            return f"subnet {subnet} has no default route, endpoint or gateway for it"
        if "GatewayId" in route:
            public = self.resources[subnet]["Properties"].get("MapPublicIpOnLaunch", False)
            return "" if public else f"subnet {subnet} gives no public address"
        if "NatGatewayId" in route:
            return ""
        if "InstanceId" in route:
            nat = _ref(route["InstanceId"])
            props = self.resources[nat]["Properties"]
            if props.get("SourceDestCheck", True) not in (False, "false"):
                return f"{nat} is the default route but forwards nothing (SourceDestCheck)"
            nat_groups = [_ref(g) for g in props.get("SecurityGroupIds", [])]
            if not any(self.admits(g, HTTPS, groups, cidrs) for g in nat_groups):
                return f"{nat} is the default route but its security group refuses 443"
            return self._why_not_from(_ref(props["SubnetId"]), nat_groups, need)
        return f"subnet {subnet}'s default route leads nowhere known"
