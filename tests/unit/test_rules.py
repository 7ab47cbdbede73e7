"""Routing rules: patterns, attribute names, order and de-duplication of destinations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicomgw.index.records import JobRoute
from dicomgw.ingest.routing import Rule, RuleError, route
from tests.records import record

CT = record(1, modality="CT")


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, True),
        ({"modality": "CT"}, True),
        ({"modality": "ct"}, False),
        ({"modality": "glob:C?"}, True),
        ({"modality": "glob:M*"}, False),
        ({"modality": "re:^(CT|MR)$"}, True),
        ({"modality": ["MR", "CT"]}, True),
        ({"modality": ["MR", "re:^US"]}, False),
        ({"calling_ae": "MODALITY", "called_ae": "DICOMGW"}, True),
        ({"calling_ae": "MODALITY", "called_ae": "OTHER"}, False),
        ({"source_ip": "cidr:127.0.0.0/8"}, True),
        ({"source_ip": "cidr:10.0.0.0/8"}, False),
        ({"patient_name": "glob:DOE^*"}, True),
        ({"series_number": 1}, True),
        ({"study_description": "glob:*"}, False),  # absent: matches nothing
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}, True),
    ],
)
def test_patterns(match: dict[str, object], expected: bool) -> None:
    assert Rule.build(1, "r", match, [7]).matches(CT) is expected


@pytest.mark.parametrize(
    ("match", "fragment"),
    [
        ({"colour": "red"}, "cannot match on 'colour'"),
        ({"modality": "re:("}, "bad regular expression"),
        ({"source_ip": "cidr:300.0.0.0/8"}, "match.source_ip"),
        ({"modality": {"a": 1}}, "must be a string or a list"),
    ],
)
def test_bad_rules_are_refused_with_the_rule_and_key(
    match: dict[str, object], fragment: str
) -> None:
    with pytest.raises(RuleError, match="rule 'bad'") as info:
        Rule.build(1, "bad", match, [7])
    assert fragment in str(info.value)


def test_rules_in_order_each_destination_once() -> None:
    rules = [
        Rule.build(1, "ct", {"modality": "CT"}, [10, 11]),
        Rule.build(2, "all", {}, [11, 12], granularity="study", quiet_period_s=60),
        Rule.build(3, "mr", {"modality": "MR"}, [13]),
    ]
    assert route(rules, CT) == [
        JobRoute(1, 10),
        JobRoute(1, 11),
        JobRoute(2, 12, 60, f"study:{CT.study_instance_uid}"),
    ]
    assert route(rules, replace(CT, modality="MR")) == [
        JobRoute(2, 11, 60, f"study:{CT.study_instance_uid}"),
        JobRoute(2, 12, 60, f"study:{CT.study_instance_uid}"),
        JobRoute(3, 13),
    ]


@pytest.mark.parametrize("kind", ["retrieve", "reindex"])
def test_retrieved_and_reindexed_instances_go_only_where_a_rule_names_their_source(
    kind: str,
) -> None:
    everything = Rule.build(1, "everything", {}, [7])
    named = Rule.build(2, "named", {"source": kind}, [8])
    fetched = replace(CT, source_kind=kind)
    assert route([everything], fetched) == []
    assert route([everything, named], fetched) == [JobRoute(2, 8)]
    # A C-STORE still goes everywhere its rules say; "named" is not its source.
    assert route([everything, named], CT) == [JobRoute(1, 7)]


def test_source_matches_the_way_in() -> None:
    assert Rule.build(1, "r", {"source": "dimse"}, [7]).matches(CT)
    assert not Rule.build(1, "r", {"source_kind": "stow"}, [7]).matches(CT)
