"""d2l_ext.results: the closing summary table and the committed reference results."""

import json

import pytest

from d2l_ext.results import REFERENCE_RESULTS, load_reference, reference_results, summary_table


def test_summary_table_formats_each_kind_of_value():
    measured = {"validation accuracy": 0.8766, "parameters": 11178378, "spread": 3.456, "note": "x"}
    table = summary_table(measured)
    assert table["this run"].to_dict() == {
        "validation accuracy": "87.7%",
        "parameters": "11,178,378",
        "spread": "3.456",
        "note": "x",
    }


def test_reference_results_label_the_machine_and_keep_the_committed_numbers(capsys):
    committed = json.loads(REFERENCE_RESULTS.read_text())
    table = reference_results(["resnet"])
    line = capsys.readouterr().out
    assert committed["machine"]["cpu"] in line and f"{committed['budget_s']:.0f} s of training" in line
    rows = [r for r in committed["rows"] if r["model"] == "resnet"]
    assert len(table) == len(rows) > 0
    assert list(table["test accuracy"]) == [f"{r['test_acc']:.1%}" for r in rows]


def test_missing_reference_results_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bench"):
        load_reference(tmp_path / "missing.json")
