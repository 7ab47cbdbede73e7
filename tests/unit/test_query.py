"""The query module's parsing and the SQL it makes: PS3.4 matching rules, bad
keys named, literal characters kept literal."""

from __future__ import annotations

import datetime as dt

import pytest

from dicomgw.query.search import MAX_LIMIT, QueryError, parse_qido, statement


def test_values_wildcards_and_literals() -> None:
    query = parse_qido("study", {"PatientID": "50%_x*", "AccessionNumber": "A1"}, {})
    sql, args = statement(query)
    # % and _ are the value's own characters; only * and ? are wildcards.
    assert "st.patient_id LIKE $1" in sql
    assert args[0] == "50\\%\\_x%"
    assert "st.accession_number = $2" in sql and args[1] == "A1"


def test_date_ranges_and_uid_lists() -> None:
    query = parse_qido(
        "series", {"StudyDate": "20240101-20240131", "StudyInstanceUID": "1.2.3,1.2.4"}, {}
    )
    sql, args = statement(query)
    assert args[:3] == [dt.date(2024, 1, 1), dt.date(2024, 1, 31), ["1.2.3", "1.2.4"]]
    assert "st.study_date >= $1" in sql and "st.study_date <= $2" in sql
    assert "st.study_instance_uid = ANY($3::text[])" in sql


def test_the_path_restricts_and_newest_versions_answer() -> None:
    query = parse_qido("instance", {}, {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.4"})
    sql, args = statement(query)
    assert args[:2] == [["1.2.3"], ["1.2.4"]]
    assert "n.version > i.version" in sql


def test_limits() -> None:
    assert parse_qido("study", {}, {}).limited_by_server
    asked = parse_qido("study", {"limit": "10"}, {})
    assert (asked.limit, asked.limited_by_server) == (10, False)
    huge = parse_qido("study", {"limit": "99999"}, {})
    assert (huge.limit, huge.limited_by_server) == (MAX_LIMIT, True)


def test_includefield_keeps_what_the_index_holds() -> None:
    query = parse_qido("study", {"includefield": "StudyID,00020010,all"}, {})
    assert query.include_all
    assert "00020010" in query.included


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"Colour": "red"}, "Colour"),
        ({"00091010": "x"}, "00091010"),
        ({"Modality": "CT"}, "Modality"),
        ({"StudyDate": "20240101-20240201-20240301"}, "StudyDate"),
        ({"StudyDate": "-"}, "StudyDate"),
        ({"StudyTime": "25:99"}, "StudyTime"),
        ({"SeriesNumber": "one"}, "SeriesNumber"),
        ({"SOPInstanceUID": "1.02"}, "SOPInstanceUID"),
        ({"offset": "-5"}, "offset"),
        ({"fuzzymatching": "yes"}, "fuzzymatching"),
        ({"PatientID": ["a", "b"]}, "PatientID"),
    ],
)
def test_bad_keys_are_named(params: dict[str, str | list[str]], key: str) -> None:
    level = (
        "study" if "SeriesNumber" not in params and "SOPInstanceUID" not in params else "instance"
    )
    with pytest.raises(QueryError) as raised:
        parse_qido(level, params, {})  # type: ignore[arg-type]
    assert raised.value.key == key
