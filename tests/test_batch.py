"""Batch jobs (gnr.batch): a manifest of 12 edits over 4 images plus a
corrupt image and a missing one, run by the local engine and by Ray Data on
a local Ray instance, each row checked bit for bit against
`gnr.Editor().edit`; inversion sharing, resuming and stopping."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gnr
import gnr.batch
from gnr._manifest import read_manifest

THREADS = 1  # both engines and the reference: bit-identity needs one thread count (DECISIONS.md section 5)
STEPS = 10   # a short schedule keeps 12 edits per engine to seconds on two cores
SOURCE = "a red circle on a blue background"
TARGETS = ["a green circle on a blue background", "a yellow circle on a blue background",
           "a purple circle on a blue background"]
ROOT = str(Path(gnr.__file__).resolve().parent.parent)


def config():
    return gnr.configs.get("nonstyle", num_steps=STEPS)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four images (one of them 96 x 80: cropped and resized like
    gnr.load_image), three targets each, rows interleaved so that no image's
    rows are neighbours, a corrupt PNG and a path that does not exist in
    the middle. Some rows have ids, one names its config explicitly."""
    d = tmp_path_factory.mktemp("batch_data")
    scene, _, _ = gnr.demo.sample_scene()
    images = {"plain.png": scene, "mirror.png": scene[:, ::-1], "upside.png": scene[::-1],
              "wide.png": np.asarray(Image.fromarray(np.rot90(scene).copy()).resize((96, 80)))}
    for name, a in images.items():
        Image.fromarray(np.ascontiguousarray(a)).save(d / name)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    rows = []
    for k, target in enumerate(TARGETS):
        for name in images:
            row = {"image": name, "source_prompt": SOURCE, "target_prompt": target}
            if name == "mirror.png":
                row["id"] = f"mirror-{k}"
            if name == "upside.png" and k == 1:
                row["config"] = config()  # the job's default, written out: still one group with its image
            rows.append(row)
        if k == 0:
            rows.append({"image": "corrupt.png", "source_prompt": SOURCE, "target_prompt": TARGETS[0]})
            rows.append({"image": "nowhere/missing.png", "source_prompt": SOURCE, "target_prompt": TARGETS[0]})
    return d, write_jsonl(d / "manifest.jsonl", rows), rows


@pytest.fixture(scope="module")
def reference(dataset):
    """Row number -> `gnr.Editor(threads=1).edit` of the row's image, one
    fresh edit (inversion included) per row."""
    d, _, rows = dataset
    editor = gnr.Editor(threads=THREADS)
    out = {}
    for i, row in enumerate(rows):
        if (d / row["image"]).is_file() and row["image"] != "corrupt.png":
            image = editor.load_image(str(d / row["image"]))
            out[i] = editor.edit(image, row["source_prompt"], row["target_prompt"], config=config(), progress=False)
    assert len(out) == 12
    return out


@pytest.fixture(scope="module")
def local_run(dataset, tmp_path_factory):
    _, manifest, _ = dataset
    out = tmp_path_factory.mktemp("batch_local")
    return gnr.batch.run(manifest, out, config=config(), threads=THREADS, progress=False)


@pytest.fixture(scope="module")
def ray_instance():
    """A small local Ray instance for this module: two CPUs, no dashboard,
    a modest object store. Its workers, for every job that joins it, import
    this gnr: the instance's processes inherit PYTHONPATH."""
    import ray

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, saved) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2 ** 20, logging_level="WARNING")
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


def check_outputs(result, reference, rows):
    by_row = {r["row"]: r for r in result.records}
    assert sorted(by_row) == list(range(len(rows)))
    for i, row in enumerate(rows):
        record = by_row[i]
        assert record["image"] == row["image"] and record["target_prompt"] == row["target_prompt"]
        if i in reference:
            assert record["error"] is None, record["error"]
            assert np.array_equal(png(record["output"]), reference[i]), f"row {i} differs from Editor().edit"
    errors = {rows[r["row"]]["image"]: r["error"] for r in result.records if r["error"] is not None}
    assert sorted(errors) == ["corrupt.png", "nowhere/missing.png"]
    assert errors["corrupt.png"].startswith("image: ValueError: cannot read")
    assert errors["nowhere/missing.png"].startswith("image: FileNotFoundError: no such image file")
    assert result.failed == 2 and result.rows == 14


def check_inverted_once(result):
    """One inversion per image: the count, the flag, and the times (only the
    row that inverted spent time inverting)."""
    assert result.inversions == 4
    inverted = [r for r in result.records if r["inverted"]]
    assert sorted({Path(r["image"]).name for r in inverted}) == ["mirror.png", "plain.png", "upside.png", "wide.png"]
    assert all(r["inversion_s"] > 0 for r in inverted)
    assert all(r["inversion_s"] == 0.0 for r in result.records if not r["inverted"])


def test_local_engine_matches_editor_row_by_row(dataset, reference, local_run):
    _, _, rows = dataset
    check_outputs(local_run, reference, rows)
    check_inverted_once(local_run)
    assert local_run.done == 14 and local_run.kept == 0 and not local_run.stopped
    names = sorted(os.listdir(local_run.out_dir))
    assert names == sorted(["00000.png", "00002.png", "00003.png", "00006.png", "00008.png", "00009.png",
                            "00010.png", "00012.png", "00013.png", "mirror-0.png", "mirror-1.png", "mirror-2.png",
                            "results.jsonl", "results.parquet"])
    record = local_run.records[0]
    assert record["device"] == "cpu" and record["output"] == os.path.join(local_run.out_dir, "00000.png")
    assert all(record[k] >= 0 for k in ("load_s", "encode_s", "guided_steps_s", "unguided_steps_s", "decode_s"))
    assert record["total_s"] >= record["guided_steps_s"] + record["decode_s"]


def test_output_manifests_hold_every_row_in_order(local_run):
    import pyarrow.parquet as pq

    lines = Path(local_run.out_dir, "results.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == local_run.records
    table = pq.read_table(Path(local_run.out_dir, "results.parquet")).to_pylist()
    assert [r["row"] for r in table] == list(range(14))
    assert [r["error"] for r in table] == [r["error"] for r in local_run.records]
    assert [r["output"] for r in table] == [r["output"] for r in local_run.records]
    # the row whose config was a dict, in a column of preset names and nulls: JSON text in Parquet
    assert json.loads(table[8]["config"]) == config() and table[0]["config"] is None


def test_ray_engine_writes_the_same_files(dataset, reference, local_run, ray_instance, tmp_path):
    _, manifest, rows = dataset
    result = gnr.batch.run(manifest, tmp_path, config=config(), threads=THREADS, progress=False, engine="ray",
                           workers=2)
    check_outputs(result, reference, rows)
    check_inverted_once(result)
    for mine, theirs in zip(result.records, local_run.records):
        if theirs["output"] is not None:
            assert Path(mine["output"]).read_bytes() == Path(theirs["output"]).read_bytes()
        same = {k: v for k, v in mine.items() if not k.endswith("_s") and k not in ("worker", "output")}
        assert same == {k: v for k, v in theirs.items() if not k.endswith("_s") and k not in ("worker", "output")}
    assert len({r["worker"] for r in result.records if r["worker"]}) == 2  # two actors did the work


def test_a_stopped_job_resumes_without_redoing_rows(dataset, local_run, ray_instance, tmp_path):
    """Stopped after 5 rows (locally), started again (on Ray): the finished
    rows are not redone, the rest are, and the folder ends as a clean run's."""
    _, manifest, _ = dataset
    seen = []

    def stop_after_five(record):
        seen.append(record)
        return len(seen) < 5

    first = gnr.batch.run(manifest, tmp_path, config=config(), threads=THREADS, progress=False,
                          callback=stop_after_five)
    assert first.stopped and first.done == 5 and len(first.records) == 5
    finished = {r["output"]: os.stat(r["output"]).st_mtime_ns for r in first.records if r["error"] is None}
    assert len(finished) >= 3
    time.sleep(0.01)
    second = gnr.batch.run(manifest, tmp_path, config=config(), threads=THREADS, progress=False, engine="ray",
                           workers=2)
    assert second.kept == len(finished) and second.done == 14 - len(finished) and not second.stopped
    assert {p: os.stat(p).st_mtime_ns for p in finished} == finished  # not rewritten
    for mine, clean in zip(second.records, local_run.records):
        assert mine["row"] == clean["row"] and mine["error"] == clean["error"]
        if clean["output"] is not None:
            assert Path(mine["output"]).read_bytes() == Path(clean["output"]).read_bytes()
    assert len(Path(tmp_path, "results.jsonl").read_text().splitlines()) == 14


def test_the_command_joins_a_running_ray_cluster_by_its_address(dataset, local_run, ray_instance, tmp_path):
    """`python -m gnr batch --ray ADDRESS`: another process joins this
    module's Ray instance (as a job joins a cluster) and leaves it running."""
    _, manifest, _ = dataset
    address = ray_instance.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "gnr", "batch", str(manifest), "--out", str(tmp_path), "--steps", str(STEPS),
            "--threads", str(THREADS), "--quiet", "--ray", address, "--workers", "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 1, r.stderr  # the two bad rows
    assert "14 rows: 14 edited now, 0 kept from an earlier run, 2 failed, 4 inversions" in r.stdout
    for clean in local_run.records:
        if clean["output"] is not None:
            assert (tmp_path / Path(clean["output"]).name).read_bytes() == Path(clean["output"]).read_bytes()
    assert ray_instance.is_initialized() and ray_instance.cluster_resources().get("CPU") == 2


def test_a_ray_job_whose_workers_lack_gnr_says_to_install_it():
    from gnr._batch_ray import _job_error

    remote = ("The actor died because of an error raised in its creation task\n  File \"x.py\", line 1\n"
              "ModuleNotFoundError: No module named 'gnr'")
    assert str(_job_error(RuntimeError(remote))).startswith("the Ray workers cannot import gnr: install gnr")
    assert str(_job_error(RuntimeError("Traceback ...\nValueError: bad"))) == \
        "the Ray job failed: RuntimeError: ValueError: bad"


def test_a_changed_row_is_redone(dataset, local_run, tmp_path):
    """A finished row whose target changed is not kept: its output is redone."""
    d, _, rows = dataset
    manifest = write_jsonl(tmp_path / "two.jsonl", [dict(rows[0], image=str(d / rows[0]["image"])),
                                                    dict(rows[1], image=str(d / rows[1]["image"]))])
    out = tmp_path / "out"
    first = gnr.batch.run(manifest, out, config=config(), threads=THREADS, progress=False)
    assert first.done == 2
    before = Path(first.records[1]["output"]).read_bytes()
    write_jsonl(manifest, [dict(rows[0], image=str(d / rows[0]["image"])),
                           dict(rows[1], image=str(d / rows[1]["image"]), target_prompt=TARGETS[2])])
    second = gnr.batch.run(manifest, out, config=config(), threads=THREADS, progress=False)
    assert second.kept == 1 and second.done == 1
    assert second.records[1]["target_prompt"] == TARGETS[2]
    after = Path(second.records[1]["output"]).read_bytes()
    assert after != before and after == Path(local_run.out_dir, "mirror-2.png").read_bytes()


def test_keyboard_interrupt_keeps_the_finished_rows(dataset, local_run, tmp_path):
    _, manifest, _ = dataset
    seen = []

    def interrupt_after_two(record):
        seen.append(record)
        if len(seen) == 2:
            raise KeyboardInterrupt

    (tmp_path / ".00009.png.x1.gnr-tmp").write_bytes(b"half a file from a killed run")
    with pytest.raises(KeyboardInterrupt):
        gnr.batch.run(manifest, tmp_path, config=config(), threads=THREADS, progress=False,
                      callback=interrupt_after_two)
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["row"] for r in records] == sorted(r["row"] for r in seen)
    for r in records:
        clean = local_run.records[r["row"]]
        assert Path(r["output"]).read_bytes() == Path(clean["output"]).read_bytes()
    import pyarrow.parquet as pq

    assert len(pq.read_table(tmp_path / "results.parquet")) == 2
    assert not list(tmp_path.glob("*.gnr-tmp"))


def test_ctrl_c_stops_the_command_with_finished_rows_kept(dataset, tmp_path):
    """SIGINT to `python -m gnr batch` while it edits: exit status 130, and
    the rows finished before it are in results.jsonl with their PNGs."""
    _, manifest, _ = dataset
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "gnr", "batch", str(manifest), "--out", str(tmp_path),
                             "--steps", "50", "--threads", "1", "--quiet"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 1):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    records = [json.loads(x) for x in journal.read_text().splitlines()]
    assert 1 <= len(records) < 14
    assert all(Path(r["output"]).is_file() for r in records if r["error"] is None)


def test_bad_rows_record_their_error_and_the_job_goes_on(dataset, tmp_path):
    d, _, _ = dataset
    good = {"image": str(d / "plain.png"), "source_prompt": SOURCE, "target_prompt": TARGETS[0]}
    rows = [dict(good, target_prompt=5), dict(good, source_prompt=None), dict(good, config="fancy"),
            dict(good, config={"num_steps": 10}), dict(good, seed="x"), dict(good, seed=-1),
            dict(good, id="a/b"), dict(good, id="twice"), dict(good, id="twice", target_prompt=TARGETS[1]),
            dict(good, image=""), {"image": str(d / "plain.png"), "source_prompt": SOURCE}]
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n{not json\n")
    result = gnr.batch.run(manifest, tmp_path / "out", config=config(), threads=THREADS, progress=False)
    errors = [r["error"] for r in result.records]
    expected = ["target_prompt must be text, got int 5", "source_prompt is missing", "config: unknown config 'fancy'",
                "config: config has no 'guiders'", "seed must be an integer, got str 'x'",
                "config: seed must be in [0, 2**64), got -1", "id 'a/b' cannot name a file", None,
                "id: the output name twice.png is taken by row 7", "image is an empty path",
                "target_prompt is missing", "line 12 is a JSON list, not an object", "line 13 is not JSON"]
    assert len(errors) == len(expected)
    for got, want in zip(errors, expected):
        assert (got is None) if want is None else (got is not None and got.startswith(want)), (got, want)
    assert result.records[7]["output"] == str(tmp_path / "out" / "twice.png")
    assert png(result.records[7]["output"]).shape == (64, 64, 3)


def test_progress_without_tqdm_is_a_line_with_rows_failures_and_rate(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as where tqdm is not installed
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "source_prompt": "a", "target_prompt": 1}] * 3)
    gnr.batch.run(manifest, tmp_path / "out", progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batch: 3/3 rows, 3 failed, ") and lines[0].endswith(" rows/s")


def test_csv_and_parquet_manifests_read_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": "a.png", "source_prompt": "a cat", "target_prompt": "a dog", "config": "style", "seed": 3,
             "id": "x1", "note": "kept"},
            {"image": "sub/b.png", "source_prompt": "", "target_prompt": "a fox", "config": None, "seed": None,
             "id": None, "note": "also"}]
    write_jsonl(tmp_path / "m.jsonl", rows)
    (tmp_path / "m.csv").write_text("image,source_prompt,target_prompt,config,seed,id,note\n"
                                    "a.png,a cat,a dog,style,3,x1,kept\nsub/b.png,,a fox,,,,also\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    want = [(r.row, r.fields, r.image, r.config, r.seed, r.id, r.error) for r in read_manifest(tmp_path / "m.jsonl")]
    assert want[0][2] == str(tmp_path / "a.png") and want[1][2] == str(tmp_path / "sub" / "b.png")
    assert want[0][3:6] == ("style", 3, "x1") and want[1][3:6] == (None, None, None)
    for name in ("m.csv", "m.parquet"):
        got = [(r.row, r.fields, r.image, r.config, r.seed, r.id, r.error) for r in read_manifest(tmp_path / name)]
        if name == "m.csv":  # CSV has text cells only
            got = [g[:1] + ({**g[1], "seed": None if g[1]["seed"] is None else int(g[1]["seed"])},) + g[2:]
                   for g in got]
        assert got == want, name
    # a dict config in a CSV cell is JSON text
    (tmp_path / "c.csv").write_text('image,source_prompt,target_prompt,config\na.png,a,b,"{""num_steps"": 5}"\n')
    assert read_manifest(tmp_path / "c.csv")[0].config == {"num_steps": 5}


@pytest.mark.parametrize("case", ["missing manifest", "manifest format", "no image column", "no rows",
                                  "engine", "local workers", "local gpus", "threads", "out_dir parent",
                                  "out_dir is a file", "manifest is the output", "default config", "size",
                                  "column clash", "dtype", "ray gpus", "ray workers"])
def test_a_bad_job_is_refused_before_any_work(case, dataset, tmp_path, monkeypatch):
    d, manifest, _ = dataset

    def tripwire(*args, **kwargs):
        raise AssertionError("an Editor was made before every check passed")

    monkeypatch.setattr(gnr.batch, "make_editor", tripwire)
    (tmp_path / "file").write_text("")
    kwargs = {"manifest": manifest, "out_dir": tmp_path / "out", "progress": False}
    want = {
        "missing manifest": ({"manifest": tmp_path / "nope.jsonl"}, FileNotFoundError, "no such manifest file"),
        "manifest format": ({"manifest": tmp_path / "file"}, ValueError, "no extension is not a manifest format"),
        "no image column": ({"manifest": write_jsonl(tmp_path / "m.jsonl", [{"source_prompt": "a",
                                                                            "target_prompt": "b"}])},
                            ValueError, "has no image column"),
        "no rows": ({"manifest": write_jsonl(tmp_path / "e.jsonl", [])}, ValueError, "has no rows"),
        "engine": ({"engine": "spark"}, ValueError, "engine must be one of 'local', 'ray'"),
        "local workers": ({"workers": 2}, ValueError, "the local engine runs one worker"),
        "local gpus": ({"gpus_per_worker": 1}, ValueError, "gpus_per_worker is for engine='ray'"),
        "threads": ({"threads": 0}, ValueError, "threads must be a positive integer"),
        "out_dir parent": ({"out_dir": tmp_path / "no" / "out"}, FileNotFoundError, "does not exist"),
        "out_dir is a file": ({"out_dir": tmp_path / "file"}, NotADirectoryError, "is a file, not a folder"),
        "manifest is the output": ({"manifest": write_jsonl(tmp_path / "results.jsonl", [{"image": "a"}]),
                                    "out_dir": tmp_path}, ValueError, "is where this job writes"),
        "default config": ({"config": "fancy"}, ValueError, "unknown config 'fancy'"),
        "size": ({"size": 60}, ValueError, "size = 60 is not a positive multiple of 16"),
        "column clash": ({"manifest": write_jsonl(tmp_path / "c.jsonl", [{"image": "a", "source_prompt": "a",
                                                                         "target_prompt": "b", "error": 1}])},
                         ValueError, "column(s) error would clash"),
        "dtype": ({"dtype": "float16", "device": "cpu"}, ValueError, "dtype 'float16' needs device='cuda'"),
        "ray gpus": ({"engine": "ray", "gpus_per_worker": 0}, ValueError, "gpus_per_worker must be a positive"),
        "ray workers": ({"engine": "ray", "workers": 0}, ValueError, "workers must be a positive integer"),
    }[case]
    kwargs.update(want[0])
    with pytest.raises(want[1], match=__import__("re").escape(want[2])):
        gnr.batch.run(**kwargs)
    assert not (tmp_path / "out").exists()


def test_the_ray_engine_without_ray_says_how_to_install_it(dataset, tmp_path, monkeypatch):
    _, manifest, _ = dataset
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    with pytest.raises(ImportError, match=r"pip install 'gnr\[ray\]'"):
        gnr.batch.run(manifest, tmp_path / "out", engine="ray", progress=False)
    assert not (tmp_path / "out").exists()


def test_import_gnr_imports_no_optional_extra():
    """ARCHITECTURE.md section 5: `import gnr` (gnr.batch included) never
    imports Ray, pyarrow or pandas; a local job on a JSONL manifest imports
    Ray neither."""
    code = ("import sys, gnr, gnr.batch\n"
            "print(sorted(m for m in ('ray', 'pyarrow', 'pandas') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_failed_write_leaves_no_partial_file(dataset, tmp_path, monkeypatch):
    """Outputs are written to a temporary file, then renamed: a write that
    fails midway (a full disk) leaves neither a PNG nor the temporary file,
    and stops the job."""
    d, _, rows = dataset
    manifest = write_jsonl(tmp_path / "one.jsonl", [dict(rows[0], image=str(d / rows[0]["image"]))])

    calls = []
    fsync = os.fsync

    def full_disk_at_the_png(fd):  # the 1st write is the journal's start, the 2nd the row's PNG
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_at_the_png)
    with pytest.raises(OSError, match="No space left"):
        gnr.batch.run(manifest, tmp_path / "out", config=config(), threads=THREADS, progress=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["results.jsonl", "results.parquet"]
    assert (tmp_path / "out" / "results.jsonl").read_text() == ""
