"""`scorestream topics create`: the whole set of topics, with the partition rule applied."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from workers.commands.shared import (
    EXIT_ERROR,
    EXIT_OK,
    add_kafka_options,
    add_logging_options,
    positive_int,
)
from workers.kafka_io.admin import create_topics, list_topics
from workers.kafka_io.clients import AdminAccess
from workers.settings import add_option, kafka_config

log = structlog.get_logger("scorestream.topics")

# A dead letter is its source value plus headers: room for any input value the broker takes.
DLQ_CONFIG = {"max.message.bytes": "2097152"}


@dataclass(frozen=True, slots=True)
class TopicPlan:
    name: str
    role: str
    partitions: int
    config: dict[str, str]


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401 - argparse's
    topics = commands.add_parser(
        "topics",
        help="create the topics the workers use, partitioned right",
        description="Manage the topics scorestream reads and writes.",
    )
    actions = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create every topic that is missing, with the partition rule applied",
        description="Create the features, predictions and labels topics with --partitions each "
        "(run as many infer workers as features has partitions; the monitor's join needs no "
        "particular count of labels, it re-keys them), the dead-letter topic with room for "
        "any input value plus headers, and the alerts topic. Topics that exist are left as "
        "they are. Names default to the workers' defaults; pass the same names you pass to "
        "infer and monitor.",
    )
    add_kafka_options(create, environ)
    add_option(create, "--partitions", environ=environ, type=positive_int, default=4,
               help="partitions of features, predictions and labels")  # fmt: skip
    add_option(create, "--replication-factor", environ=environ, type=int, default=-1,
               help="replicas per partition (-1: the broker's default)")  # fmt: skip
    add_option(create, "--features-topic", environ=environ, default="features",
               help="FeatureEvents (infer --input-topic)")  # fmt: skip
    add_option(create, "--predictions-topic", environ=environ, default="predictions",
               help="Predictions (infer --output-topic)")  # fmt: skip
    add_option(create, "--labels-topic", environ=environ, default="labels", help="Labels")
    add_option(create, "--dlq-topic", environ=environ, default="features.dlq",
               help="dead letters (infer --dlq-topic)")  # fmt: skip
    add_option(create, "--alerts-topic", environ=environ, default="alerts", help="Alerts")
    add_logging_options(create, environ)
    create.set_defaults(handler=run_create)


def plan(args: argparse.Namespace) -> list[TopicPlan]:
    n = args.partitions
    return [
        TopicPlan(args.features_topic, "features", n, {}),
        TopicPlan(args.predictions_topic, "predictions", n, {}),
        TopicPlan(args.labels_topic, "labels", n, {}),
        TopicPlan(args.dlq_topic, "dead letters", 1, DLQ_CONFIG),
        TopicPlan(args.alerts_topic, "alerts", 1, {}),
    ]


def run_create(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    admin = AdminAccess(args.bootstrap_servers, kafka_config(args.kafka_config,
                        args.kafka_config_file, environ))  # fmt: skip
    wanted = plan(args)
    existing: dict[str, int] = {}

    def look(config: dict[str, Any]) -> None:
        listed = list_topics(args.bootstrap_servers, config, timeout_s=10).topics
        existing.update(
            {t.name: len(listed[t.name].partitions) for t in wanted if t.name in listed}
        )

    if not admin.retry_until_ready(look, threading.Event(), what="topics"):
        return EXIT_ERROR
    for topic in wanted:
        if topic.name in existing:
            continue
        create_topics(
            args.bootstrap_servers,
            {topic.name: topic.partitions},
            replication_factor=args.replication_factor,
            config=topic.config,
            client_config=admin.config,
        )
    print(f"{'topic':<30} {'role':<13} {'partitions':>10}  state")
    for topic in wanted:
        state = "exists" if topic.name in existing else "created"
        count = existing.get(topic.name, topic.partitions)
        print(f"{topic.name:<30} {topic.role:<13} {count:>10}  {state}")
    log.info(
        "topics_ready",
        created=sorted(t.name for t in wanted if t.name not in existing),
        existing=sorted(existing),
    )
    return EXIT_OK
