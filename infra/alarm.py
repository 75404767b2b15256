"""The CloudWatch alarm that rolls a blue/green endpoint update back: server errors on the endpoint."""

from __future__ import annotations

from typing import Any

from infra.changes import Action
from infra.context import Stack
from infra.names import VARIANT
from infra.tags import as_list


def desired_alarm(stack: Stack) -> dict[str, Any]:
    return {
        "AlarmName": stack.names.rollback_alarm,
        "AlarmDescription": f"memefly {stack.settings.prefix}: rolls back a blue/green endpoint update",
        "Namespace": "AWS/SageMaker",
        "MetricName": "Invocation5XXErrors",
        "Dimensions": [
            {"Name": "EndpointName", "Value": stack.names.endpoint},
            {"Name": "VariantName", "Value": VARIANT},
        ],
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 0.0,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
    }


def ensure_rollback_alarm(stack: Stack) -> str:
    cloudwatch = stack.aws.client("cloudwatch")
    desired = desired_alarm(stack)
    found = cloudwatch.describe_alarms(AlarmNames=[desired["AlarmName"]], AlarmTypes=["MetricAlarm"])["MetricAlarms"]
    if found and all(found[0].get(key) == value for key, value in desired.items()):
        stack.report.record(Action.UNCHANGED, "cloudwatch alarm", desired["AlarmName"])
        return desired["AlarmName"]
    action = Action.UPDATE if found else Action.CREATE
    stack.report.record(action, "cloudwatch alarm", desired["AlarmName"], "Invocation5XXErrors > 0 for 2 minutes")
    if stack.apply:
        cloudwatch.put_metric_alarm(**desired, Tags=as_list(stack.tags()))
    return desired["AlarmName"]
