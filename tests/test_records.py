"""Result records: schema, validation, atomic writes that never clobber another run, scanning."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from detco_bench import records as rec
from detco_bench.records import (
    RECORD_SUFFIX,
    CheckpointInfo,
    RecordError,
    RecordExistsError,
    ResultRecord,
    collect_provenance,
    config_hash,
    new_run_id,
    read_record,
    scan_records,
    write_record,
)

PROV = {
    "versions": {"torch": "2.14.1", "torchvision": "0.29.1", "detectron2": None, "detco_bench": "0.1.0"},
    "git_commit": None, "device": "cpu", "hostname": "test", "wall_clock_s": 1.5,
    "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:00:02+00:00",
}


def make(run_id: str | None = None, **kw: object) -> ResultRecord:
    args: dict = dict(task="coco_fpn_1x", engine="detectron2", metrics={"bbox/AP": 39.5, "segm/AP": 35.9},
                      checkpoint=CheckpointInfo("/ck/detco.pth", "a" * 64, "detco", 200), seed=0,
                      config={"lr": 0.02, "iters": 90000}, provenance=PROV, run_id=run_id)
    args.update(kw)
    return ResultRecord.create(**args)


def test_new_run_id_unique_and_filename_safe() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{12}", i) for i in ids)


def test_config_hash_canonical() -> None:
    a = {"b": 1, "a": [1, 2], "p": Path("/x")}
    b = {"p": "/x", "a": (1, 2), "b": 1}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 64
    assert config_hash({"lr": 0.1}) != config_hash({"lr": 0.2})
    # int keys become strings in JSON: the hash is the same before and after a round trip
    cfg = {10: "a", 2: "b"}
    assert config_hash(cfg) == config_hash(json.loads(json.dumps(cfg)))


def test_collect_provenance() -> None:
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    p = collect_provenance("cuda:0 (H100)", 12.25, started)
    assert set(p["versions"]) == {"torch", "torchvision", "detectron2", "detco_bench"}
    assert p["versions"]["detco_bench"]
    assert p["device"] == "cuda:0 (H100)" and p["wall_clock_s"] == 12.25
    assert p["started_at"] == "2025-01-02T03:04:05+00:00"
    datetime.fromisoformat(p["finished_at"])
    assert p["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", p["git_commit"])
    assert collect_provenance("cpu", 0, 0.0)["started_at"] == "1970-01-01T00:00:00+00:00"
    make(provenance=p)  # valid in a record


def test_roundtrip_and_file_name(tmp_path: Path) -> None:
    r = make(artifacts={"metrics_log": "run/metrics.jsonl"})
    path = write_record(tmp_path, r)
    assert path == tmp_path / f"{r.run_id}{RECORD_SUFFIX}"
    back = read_record(path)
    assert back == r
    assert back.source == path
    assert back.artifact_path("metrics_log") == tmp_path / "run" / "metrics.jsonl"
    data = json.loads(path.read_text())
    assert data["schema"] == "detco-bench.result" and data["schema_version"] == 1
    assert data["config_hash"] == config_hash(data["config"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_same_run_may_update_but_never_overwrite_another(tmp_path: Path) -> None:
    r = make(run_id="run-1", status="running", metrics={})
    path = write_record(tmp_path, r)
    r.status, r.metrics = "success", {"bbox/AP": 40.0}
    assert write_record(tmp_path, r) == path
    assert read_record(path).status == "success"
    # another run aimed at the same file
    other = make(run_id="run-2")
    target = tmp_path / "run-1-and-run-2.record.json"
    write_record(target, make(run_id="run-1"))
    with pytest.raises(RecordExistsError):
        write_record(target, other)
    assert read_record(target).run_id == "run-1"
    with pytest.raises(ValueError, match="must contain the run id"):
        write_record(tmp_path / "elsewhere.record.json", other)


def test_write_refuses_invalid_record(tmp_path: Path) -> None:
    r = make()
    r.config["lr"] = 1.0  # config_hash no longer matches
    with pytest.raises(RecordError, match="config_hash"):
        write_record(tmp_path, r)
    assert list(tmp_path.iterdir()) == []


def _bad(tmp_path: Path, name: str, mutate) -> Path:
    """A record file made from a valid record: `mutate` is raw file text, or edits the dict."""
    data = make().to_dict()
    if callable(mutate):
        mutate(data)
    path = tmp_path / f"{name}{RECORD_SUFFIX}"
    path.write_text(mutate if isinstance(mutate, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ('{"schema": "detco-bench.result", ', "corrupt JSON"),
        ("", "empty file"),
        ("[1, 2]", "not a JSON object"),
        (lambda d: d.pop("schema"), "missing field 'schema'"),
        (lambda d: d.update(schema="other.thing"), "unknown schema 'other.thing'"),
        (lambda d: d.update(schema_version=2), "unsupported schema_version 2"),
        (lambda d: d.update(schema_version="1"), "'schema_version' must be int"),
        (lambda d: d.pop("metrics"), "missing field 'metrics'"),
        (lambda d: d["provenance"].pop("device"), "missing field 'provenance.device'"),
        (lambda d: d["provenance"]["versions"].pop("torch"), "missing field 'provenance.versions.torch'"),
        (lambda d: d["checkpoint"].pop("sha256"), "missing field 'checkpoint.sha256'"),
        (lambda d: d["metrics"].update({"bbox/AP": "39.5"}), "'metrics.bbox/AP' must be number, got str"),
        (lambda d: d["metrics"].update({"bbox/AP": True}), "'metrics.bbox/AP' must be number, got bool"),
        (lambda d: d.update(seed=1.5), "'seed' must be int, got float"),
        (lambda d: d["checkpoint"].update(pretrain_epochs="200"), "'checkpoint.pretrain_epochs' must be int"),
        (lambda d: d["checkpoint"].update(sha256="abc"), "not 64 lowercase hex"),
        (lambda d: d.update(status="done"), "'status' must be one of"),
        (lambda d: d.update(run_id="../evil"), "not filename-safe"),
        (lambda d: d["config"].update(lr=1.0), "'config_hash' does not match"),
        (lambda d: d["provenance"].update(started_at="yesterday"), "not an ISO-8601"),
        (lambda d: d.update(artifacts={"metrics_log": 3}), "'artifacts.metrics_log' must be string"),
    ],
)
def test_read_record_reasons(tmp_path: Path, mutate, reason: str) -> None:
    path = _bad(tmp_path, "bad", mutate)
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert reason in info.value.reason
    assert info.value.path == path


def test_unknown_extra_keys_are_ignored(tmp_path: Path) -> None:
    path = _bad(tmp_path, "extra", lambda d: d.update(future_field={"x": 1}))
    assert read_record(path).run_id


def test_scan_records(tmp_path: Path) -> None:
    good = [make() for _ in range(3)]
    write_record(tmp_path / "a", good[0])
    write_record(tmp_path / "a" / "deep" / "er", good[1])
    write_record(tmp_path / "b", good[2])
    _bad(tmp_path / "a", "corrupt", "{")
    _bad(tmp_path / "b", "v9", lambda d: d.update(schema_version=9))
    (tmp_path / "b" / "notes.json").write_text("{}")               # not a record: ignored
    (tmp_path / "b" / ".x.record.json.123.tmp").write_text("{")     # half-written temp: ignored
    dup = tmp_path / "copy" / f"{good[2].run_id}{RECORD_SUFFIX}"    # the same run copied elsewhere
    dup.parent.mkdir()
    dup.write_bytes((tmp_path / "b" / f"{good[2].run_id}{RECORD_SUFFIX}").read_bytes())

    records, skipped = scan_records([tmp_path, tmp_path / "missing"])
    assert sorted(r.run_id for r in records) == sorted(r.run_id for r in good)
    reasons = {p.name: why for p, why in skipped}
    assert reasons[f"corrupt{RECORD_SUFFIX}"].startswith("corrupt JSON")
    assert reasons[f"v9{RECORD_SUFFIX}"].startswith("unsupported schema_version 9")
    assert "duplicate run_id" in reasons[dup.name]
    assert reasons["missing"] == "path does not exist"
    assert len(skipped) == 4
    # a single file path is read as given
    one, _ = scan_records(tmp_path / "b" / f"{good[2].run_id}{RECORD_SUFFIX}")
    assert [r.run_id for r in one] == [good[2].run_id]


def test_results_store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(rec.RESULTS_ENV, raising=False)
    assert rec.default_results_dir() == Path("results/runs")
    monkeypatch.setenv(rec.RESULTS_ENV, os.fspath(tmp_path))
    assert rec.default_results_dir() == tmp_path


def test_checkpoint_from_file(tmp_path: Path) -> None:
    f = tmp_path / "ck.pth"
    f.write_bytes(b"weights")
    ck = CheckpointInfo.from_file(f, "detco", 200)
    assert ck.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert ck.identity == ck.sha256
    assert CheckpointInfo(None, None, "random").identity == "random:"


def test_notes_and_nan_metrics_roundtrip(tmp_path: Path) -> None:
    import math

    from detco_bench.records import complete_metrics

    metrics, notes = complete_metrics({"bbox/AP": float("nan"), "bbox/AP50": 12.5}, ["bbox/AP", "bbox/AP50", "segm/AP"])
    assert math.isnan(metrics["bbox/AP"]) and math.isnan(metrics["segm/AP"]) and metrics["bbox/AP50"] == 12.5
    assert notes == ["segm/AP: not returned by the evaluator (no predictions?); recorded as NaN",
                     "bbox/AP: the evaluator returned NaN (no predictions?)"]
    r = make(metrics=metrics, notes=notes)
    path = write_record(tmp_path, r)
    assert "NaN" in path.read_text()  # JSON NaN: the number is kept, not dropped
    back = read_record(path)
    assert back.notes == notes and math.isnan(back.metrics["segm/AP"]) and back.status == "success"
    # no notes: the field is absent, the file reads as a version-1 record without it
    plain = make()
    assert "notes" not in plain.to_dict() and read_record(write_record(tmp_path, plain)).notes == []


@pytest.mark.parametrize(("notes", "reason"), [("oops", "'notes' must be a list of strings"),
                                               (["ok", 3], "'notes[1]' must be string")])
def test_bad_notes_are_rejected(tmp_path: Path, notes: object, reason: str) -> None:
    path = _bad(tmp_path, "notes", lambda d: d.update(notes=notes))
    with pytest.raises(RecordError, match=re.escape(reason)):
        read_record(path)


def test_settings_hash_and_rerun_order() -> None:
    a = make(config={"lr": 0.02, "SEED": 1, "OUTPUT_DIR": "/a"}, seed=1)
    b = make(config={"lr": 0.02, "SEED": 2, "OUTPUT_DIR": "/b"}, seed=2)
    assert a.config_hash != b.config_hash and a.settings_hash == b.settings_hash
    assert a.protocol is None
    early = make(provenance={**PROV, "finished_at": "2025-01-01T05:00:00+05:00"})  # 00:00 UTC
    late = make(provenance={**PROV, "finished_at": "2025-01-01T00:30:00+00:00"})
    assert early.finished_sort_key < late.finished_sort_key


def test_baseline_tag_roundtrips_and_is_absent_otherwise(tmp_path: Path) -> None:
    tagged = make(checkpoint=CheckpointInfo("/ck/sup.pth", "b" * 64, "supervised", 90, baseline=True))
    assert tagged.to_dict()["checkpoint"]["baseline"] is True
    assert read_record(write_record(tmp_path, tagged)).checkpoint.baseline is True
    plain = make()
    assert "baseline" not in plain.to_dict()["checkpoint"]  # records of evaluated checkpoints read as before
    assert read_record(write_record(tmp_path, plain)).checkpoint.baseline is False


def test_bad_baseline_tag_is_rejected(tmp_path: Path) -> None:
    path = _bad(tmp_path, "baseline", lambda d: d["checkpoint"].update(baseline="yes"))
    with pytest.raises(RecordError, match=re.escape("'checkpoint.baseline' must be bool, got str")):
        read_record(path)
