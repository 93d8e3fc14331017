"""The deterministic graders of agents/reflexion.py and the lexical terms they and recall use."""

from __future__ import annotations

import pytest

from agents.lexical import rank, terms
from agents.patterns_config import GraderConfig
from agents.reflexion import from_predicate, parse_json, present, schema_problems

SCHEMA = {"type": "object", "required": ["order_id", "items"],
          "properties": {"order_id": {"type": "string", "minLength": 2},
                         "items": {"type": "array", "items": {
                             "type": "object", "required": ["sku"],
                             "properties": {"qty": {"type": "integer", "minimum": 1}}}}}}


def test_json_in_a_fence_parses_and_broken_json_says_where() -> None:
    assert parse_json('```json\n{"a": 1}\n```') == ({"a": 1}, None)
    data, error = parse_json('{"a": 1,}')
    assert data is None and error is not None and "line 1" in error


def test_required_paths_reach_into_lists_and_refuse_nulls() -> None:
    data = {"order": {"id": "A1"}, "items": [{"price": 2}, {"price": None}]}
    assert present(data, "order.id")
    assert not present(data, "items[*].price") and not present(data, "order.total")
    assert present({"items": [{"price": 2}]}, "items[*].price")


def test_schema_problems_name_the_path_and_the_rule() -> None:
    assert schema_problems({"order_id": "A1", "items": [{"sku": "x", "qty": 2}]}, SCHEMA) == []
    problems = schema_problems({"order_id": "A", "items": [{"qty": 0}, 3]}, SCHEMA)
    assert problems == ["$.order_id is shorter than 2 characters", "$.items[0].sku is required",
                        "$.items[0].qty must be ≥ 1", "$.items[1] must be object, not int"]
    assert schema_problems(True, {"type": "integer"}) == ["$ must be integer, not bool"]


def test_a_predicate_passes_with_none_or_true_and_explains_with_a_string() -> None:
    assert from_predicate(None).passed and from_predicate(True).passed
    assert from_predicate("no date").feedback == "no date" and not from_predicate(False).passed


def test_a_grader_without_what_it_checks_is_refused_with_the_field_to_add() -> None:
    with pytest.raises(ValueError, match="needs `fields`"):
        GraderConfig(kind="required")
    with pytest.raises(ValueError, match="module:function"):
        GraderConfig(kind="predicate", predicate="no_colon")


def test_terms_meet_across_plural_and_tense_and_rank_prefers_the_matching_fact() -> None:
    assert terms("Refunds were refunded") == terms("refund refund")
    facts = {1: "Prefers answers in Spanish", 2: "Allergic to peanuts", 3: "Has a dog"}
    assert [i for i, _ in rank("what language should my answer be in", facts, limit=3)] == [1]
