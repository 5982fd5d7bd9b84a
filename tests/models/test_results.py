"""pplvi.models.results: the machine description and the atomic results writer shared by the reproduce commands."""

from __future__ import annotations

import json

from pplvi.models import results


def test_write_json_creates_the_folder_and_leaves_no_temporary_file(tmp_path):
    out = results.write_json(tmp_path / "new" / "x.json", {"a": 1.5, "rows": [{"b": 2}]})
    assert json.loads(out.read_text()) == {"a": 1.5, "rows": [{"b": 2}]}
    results.write_json(out, {"a": 2})  # replaces the old file whole
    assert json.loads(out.read_text()) == {"a": 2}
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.json"]


def test_machine_description_names_the_device():
    assert results.device_name().startswith(("cpu: ", "gpu: ", "cuda: ", "tpu: "))
    assert results.cpu_name()
