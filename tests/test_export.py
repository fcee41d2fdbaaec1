"""vggtl export: every format written, run by its own runtime in a subprocess,
compared with model.keras on the test images, and handed over with labels."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest

from conftest import make_dataset, needs_extra, run_pipeline, write_config
from vggtl import export as export_command
from vggtl.exports import formats


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = write_config(tmp / "c.yaml", make_dataset(tmp / "data"), tmp)
    run_pipeline(tmp, cfg, [[str(cfg)]])
    return tmp / "experiments" / "tiny" / "v1"


CORE_MODES = ("none", "float16", "dynamic", "int8")


@pytest.fixture(scope="module")
def core_exports(trained, tmp_path_factory):
    """Every format of the core install, in every quantization, written by one
    ``vggtl export``: ``(exit status, printed table, out)``. (One command
    decodes the test images once; each export is still verified by its own
    runtime in its own subprocess.)"""
    out = tmp_path_factory.mktemp("core-exports") / "out"
    modes = [a for mode in CORE_MODES for a in ("--quantize", mode)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), counted_savedmodels() as written:
        code = export_command.main([str(trained), "--format", "savedmodel", "--format", "tflite", *modes,
                                    "--out", str(out), "--min-agreement", "0.9"])
    return code, printed.getvalue(), out, written


@contextlib.contextmanager
def counted_savedmodels():
    """A list that receives the directory of every SavedModel written meanwhile."""
    import tensorflow as tf

    written, save = [], tf.saved_model.save

    def counting(obj, export_dir, *args, **kwargs):
        written.append(str(export_dir))
        return save(obj, export_dir, *args, **kwargs)

    tf.saved_model.save = counting
    try:
        yield written
    finally:
        tf.saved_model.save = save


def test_one_command_writes_each_savedmodel_once(core_exports):
    """The savedmodel export, and one float SavedModel for LiteRT none, float16
    and int8 (dynamic, probabilities only, needs its own): 3, not 5."""
    written = core_exports[3]
    assert len(written) == 3 and len(set(written)) == 3
    assert sum(w.endswith("savedmodel") for w in written) == 1


def exported(request, trained, tmp_path, fmt: str, mode: str):
    """``(exit status, printed, out)`` of ``fmt`` in ``mode``: from :func:`core_exports`
    for a core format, else exported here (an optional extra's format)."""
    if fmt in ("savedmodel", "tflite"):
        return request.getfixturevalue("core_exports")[:3]
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = export_command.main([str(trained), "--format", fmt, "--quantize", mode, "--out", str(out), "--min-agreement", "0.9"])
    return code, printed.getvalue(), out


@pytest.mark.parametrize("fmt, mode", [("savedmodel", "none"), ("tflite", "none"), ("tflite", "float16"),
                                       ("tflite", "dynamic"), ("tflite", "int8"),
                                       pytest.param("onnx", "none", marks=needs_extra("onnx")),
                                       pytest.param("openvino", "none", marks=needs_extra("openvino"))])
def test_each_format_is_verified_by_its_own_runtime(request, trained, tmp_path, fmt, mode):
    code, printed, out = exported(request, trained, tmp_path, fmt, mode)
    name = fmt if mode == "none" else f"{fmt}-{mode}"
    record = json.loads((out / name / "export.json").read_text())
    check = record["verification"]
    assert code == 0, printed
    assert check["verified"] and check["agreement"] >= 0.9 and check["images_per_second"] > 0
    assert record["format"] == fmt and record["quantize"] == mode and record["input"]["channel_order"] == "RGB"
    assert (out / name / "labels.txt").read_text().split() == ["blue", "green", "red"]
    assert all((out / name / f).is_file() for f in record["files"])
    assert f"| {fmt} | {mode} |" in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_int8_tflite_is_smaller_than_float(core_exports, trained):
    out = core_exports[2]
    sizes = {m: json.loads((out / f"tflite{'' if m == 'none' else '-' + m}" / "export.json").read_text())["verification"]["size_bytes"]
             for m in ("none", "int8")}
    # The unknown score's distance matrices stay float32 in both (what int8 cannot hold): compare the rest.
    with np.load(trained / "unknown.npz") as arrays:
        unknown = sum(a.nbytes for name, a in arrays.items() if name.startswith(("kernel", "references")))
    assert (sizes["none"] - unknown) / (sizes["int8"] - unknown) > 3.5
    # int8: the convolutions and max pooling, the head kept in float, and both say so
    check = json.loads((out / "tflite-int8" / "export.json").read_text())["verification"]
    assert "FULLY_CONNECTED" in check["float_ops"] and not {"CONV_2D", "MAX_POOL_2D"} & set(check["float_ops"])
    assert check["note"].startswith("convolutions and max pooling in int8; in float: ") and "FULLY_CONNECTED x" in check["note"]
    assert "tflite int8: convolutions and max pooling in int8" in core_exports[1]


def test_a_later_export_with_low_agreement_exits_1_keeps_its_files_unverified_and_adds_its_report_row(
        trained, core_exports, tmp_path, capsys, monkeypatch):
    """An export below --min-agreement is kept, marked unverified, and still
    gets its row in the artifact's exports section after the earlier ones."""
    from vggtl.training import artifact

    assert core_exports[0] == 0  # the first export wrote the section
    before = json.loads((trained / "exports.json").read_text())
    monkeypatch.chdir(tmp_path)  # --out relative to the working directory
    assert export_command.main([str(trained), "--format", "tflite", "--quantize", "dynamic", "--out", "rel/out",
                                "--min-agreement", "1.01"]) == 1
    record = json.loads((tmp_path / "rel/out/tflite-dynamic/export.json").read_text())
    assert record["verification"]["verified"] is False and "< --min-agreement 1.01" in record["verification"]["note"]
    assert "NO" in capsys.readouterr().out
    rows = json.loads((trained / "exports.json").read_text())
    assert rows[:-1] == before and rows[-1]["path"] == str(tmp_path / "rel/out/tflite-dynamic")
    report, page = (trained / "report.md").read_text(), (trained / "report.html").read_text()
    assert report.count("## Exports") == 1 and all(f"| {r['path']} |" in report for r in rows)
    assert page.count('<tr class="export-row">') == len(rows) and all(r["path"] in page for r in rows)
    artifact.load(trained)  # checksums still match


def test_an_export_its_runtime_cannot_run_is_removed_and_the_others_are_published(trained, tmp_path, capsys, monkeypatch):
    import dataclasses

    tflite = formats.FORMATS["tflite"]

    def write(sources, out, labels, quantize, representative, threshold=None):
        if quantize != "float16":
            return tflite.write(sources, out, labels, quantize, representative, threshold)
        (out / "model.tflite").write_bytes(b"not a flatbuffer")
        return out / "model.tflite"

    monkeypatch.setitem(formats.FORMATS, "tflite", dataclasses.replace(tflite, write=write))
    out = tmp_path / "out"
    assert export_command.main([str(trained), "--format", "tflite", "--quantize", "none", "--quantize", "float16",
                                "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the tflite-float16 export could not be run by its runtime:" in err and "Traceback" not in err
    assert f"(published: {out / 'tflite'})" in err
    assert json.loads((out / "tflite" / "export.json").read_text())["verification"]["verified"]
    assert sorted(p.name for p in out.iterdir()) == ["tflite"]  # no staging, no half export


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "nonsense"], "--format: got 'nonsense'; allowed: savedmodel, tflite, onnx, openvino"),
        (["--format", "savedmodel", "--quantize", "int8"], "--quantize int8: none of the formats savedmodel takes it"),
        (["--format", "tflite", "--quantize", "int4"], "--quantize: got 'int4'; allowed: none, float16, dynamic, int8"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(trained, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert export_command.main([str(trained), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_or_tampered_artifact_exits_2(trained, tmp_path, capsys):
    assert export_command.main([str(tmp_path / "nope"), "--format", "savedmodel"]) == 2
    assert "does not exist" in capsys.readouterr().err
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with open(copy / "labels.json", "a") as f:
        f.write(" ")
    assert export_command.main([str(copy), "--format", "savedmodel", "--out", str(tmp_path / "out")]) == 2
    assert "checksum mismatch for labels.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, extra, module", [("onnx", "onnx", "onnxruntime"), ("openvino", "openvino", "openvino")])
def test_missing_runtime_names_the_extra(trained, tmp_path, monkeypatch, capsys, fmt, extra, module):
    monkeypatch.setitem(sys.modules, module, None)
    assert export_command.main([str(trained), "--format", fmt, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'vggtl[{extra}]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def docs_snippets() -> dict[str, str]:
    """The ```python blocks of the docs' "Use it without vggtl", by format (their first comment)."""
    from conftest import REPO

    section = (REPO / "docs" / "artifacts.md").read_text().split("## Use it without vggtl", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    return {b.split(":", 1)[0].lstrip("# "): b for b in blocks}


def test_docs_have_a_snippet_per_format():
    assert set(docs_snippets()) == set(formats.FORMATS)
    for code in docs_snippets().values():
        lines = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
        assert len(lines) <= 14 and "vggtl" not in code.replace("vggtl/labels", "")


def run_without_vggtl(programs: list[tuple[str, list[str]]], cwd) -> list[str]:
    """Run each ``(source, argv)`` of ``programs`` in turn in one fresh interpreter
    where vggtl cannot be imported (TensorFlow imported once for all of them,
    each program with its own ``sys.argv`` and globals): what each printed.

    The programs run a docs snippet once per image, and the snippet loads its
    model each time, as it does for its one photo: there ``tf.saved_model.load``
    and ``keras.saving.load_model`` return the first load of a path again (the
    snippet's code runs as written; loading the same file seven more times
    tested nothing and cost ~7 s)."""
    import subprocess

    driver = (
        "import contextlib, functools, io, json, sys\n"
        "sys.modules['vggtl'] = None  # any import of vggtl now fails\n"
        "programs = json.load(sys.stdin)\n"
        "if any(call in source for source, _ in programs for call in ('saved_model.load(', 'saving.load_model(')):\n"
        "    import keras, tensorflow\n"
        "    tensorflow.saved_model.load = functools.lru_cache(tensorflow.saved_model.load)\n"
        "    keras.saving.load_model = functools.lru_cache(keras.saving.load_model)\n"
        "printed = []\n"
        "for source, argv in programs:\n"
        "    sys.argv = ['-c', *argv]\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        exec(source, {'__name__': '__main__'})\n"
        "    printed.append(out.getvalue())\n"
        "print(json.dumps(printed))\n"
    )
    done = subprocess.run([sys.executable, "-c", driver], input=json.dumps(programs), capture_output=True, text=True,
                          cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def as_program(code: str, loop: str) -> str:
    """``code`` as the body of ``run(path)``, then ``loop`` (which calls it)."""
    return "import sys\ndef run(path):\n" + "".join(f"    {line}\n" for line in code.splitlines()) + loop


def held_out_paths(trained, n: int = 8) -> list[str]:
    manifest = json.loads((trained / "manifest.json").read_text())
    images = [f"{manifest['data_root']}/{f['path']}" for f in manifest["files"] if f["split"] == "test"][:n]
    assert len(images) == n
    return images


def docs_snippet_program(fmt: str, folder: str, out) -> str:
    """The docs' snippet for ``fmt``, its export path swapped for ``out / folder``,
    run once per image path in ``sys.argv``."""
    code = docs_snippets()[fmt].replace(f'"experiments/clipart8/exports/v3/{folder}", "photo.png"', f'"{out / folder}", path')
    assert f'"{out / folder}", path' in code
    return as_program(code, "for path in sys.argv[1:]:\n    run(path)\n")


def model_keras_program(trained, tmp) -> tuple[str, list[str]]:
    """The docs' plain-Keras snippet as written, once per image of 8 written into
    ``tmp`` whose transparent pixels hold another class's colour; then plain
    Keras' probabilities of ``x.npy`` (3 random images), one JSON line.
    ``(program, argv)``: argv is ``[x.npy, *images]``."""
    from PIL import Image

    from conftest import COLORS, REPO

    section = (REPO / "docs" / "artifacts.md").read_text().split("so it loads where vggtl is not installed:", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    images = []
    for i, (name, hidden) in enumerate([("red", "blue"), ("green", "red"), ("blue", "green"), ("red", "green")] * 2):
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[..., :3] = COLORS[hidden]  # what .convert("RGB") alone would show
        rgba[8:24, 8:24, :3], rgba[8:24, 8:24, 3] = COLORS[name], 255
        images.append(str(tmp / f"{i}_{name}.png"))
        Image.fromarray(rgba, "RGBA").save(images[-1])
    np.save(tmp / "x.npy", np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8))
    code = snippet.replace('"experiments/demo/latest', f'"{trained}').replace('Image.open("photo.png")', "Image.open(path)")
    loop = ("import json, keras, numpy as np\n"
            "for path in sys.argv[2:]:\n    run(path)\n"
            f"out = keras.saving.load_model({str(trained / 'model.keras')!r}).predict(np.load(sys.argv[1]), verbose=0)\n"
            "print(json.dumps(out['probabilities'].tolist()))\n")
    return as_program(code, loop), [str(tmp / "x.npy"), *images]


@pytest.fixture(scope="module")
def core_snippets(trained, core_exports, tmp_path_factory):
    """What the docs' savedmodel snippet and plain-Keras snippet printed, both run
    by :func:`run_without_vggtl` in one interpreter: ``{name: (argv, printed)}``."""
    tmp = tmp_path_factory.mktemp("snippets")
    programs = {"savedmodel": (docs_snippet_program("savedmodel", "savedmodel", core_exports[2]), held_out_paths(trained)),
                "model.keras": model_keras_program(trained, tmp)}
    printed = run_without_vggtl(list(programs.values()), tmp)
    return {name: (argv, out) for (name, (_, argv)), out in zip(programs.items(), printed)}


@pytest.mark.parametrize("fmt, folder", [("savedmodel", "savedmodel"),
                                         pytest.param("tflite", "tflite-int8", marks=needs_extra("litert")),
                                         pytest.param("onnx", "onnx", marks=needs_extra("onnx")),
                                         pytest.param("openvino", "openvino", marks=needs_extra("openvino"))])
def test_docs_snippet_classifies_an_image_without_vggtl(request, trained, tmp_path, fmt, folder):
    """The docs' snippet, its export path swapped for a tiny artifact's export, run
    as written in a fresh interpreter where vggtl cannot be imported, on 8 test
    images: the labels and unknown decisions ``vggtl predict`` prints."""
    from vggtl.predict import predict_paths
    from vggtl.training import artifact

    if fmt == "savedmodel":
        images, printed = request.getfixturevalue("core_snippets")["savedmodel"]
    else:
        out = exported(request, trained, tmp_path, fmt, "int8" if folder.endswith("int8") else "none")[2]
        assert (out / folder / "export.json").is_file()
        images = held_out_paths(trained)
        (printed,) = run_without_vggtl([(docs_snippet_program(fmt, folder, out), images)], tmp_path)
    printed = [line.split() for line in printed.splitlines()]
    predicted = list(predict_paths(artifact.load(trained), images, top_k=1))
    assert [label for label, _, _ in printed] == [r["top"][0][0] for r in predicted]
    assert all(0 < float(p) <= 1 for _, p, _ in printed)
    assert [unknown for _, _, unknown in printed] == [str(r["unknown"]) for r in predicted]


def test_the_model_keras_snippet_composites_transparency_as_predict_does(trained, core_snippets):
    """The docs' plain-Keras snippet, run where vggtl cannot be imported
    (:func:`model_keras_program`), on images whose transparent pixels hold
    another class's colour: the labels ``predict`` gives; and plain Keras'
    model.keras gives vggtl's probabilities (the artifact holds built-in layers only)."""
    from vggtl.predict import predict_paths
    from vggtl.training import artifact

    (x, *images), printed = core_snippets["model.keras"]
    *labels, probabilities = printed.strip().splitlines()
    expected = [r["top"][0][0] for r in predict_paths(artifact.load(trained), images, top_k=1)]
    assert labels == expected
    np.testing.assert_allclose(np.array(json.loads(probabilities)), artifact.load(trained).load_model().predict(np.load(x), verbose=0),
                               atol=1e-6)


def test_data_gone_says_so_and_marks_the_export_unverified(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data"), tmp_path)
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    (tmp_path / "data").rename(tmp_path / "moved")
    out = tmp_path / "out"
    assert export_command.main([str(tmp_path / "experiments" / "tiny" / "v1"), "--format", "tflite", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"unverified: data.root {tmp_path / 'data'} is gone: the test images cannot be decoded" in printed
    assert json.loads((out / "tflite" / "export.json").read_text())["verification"]["verified"] is False


@pytest.mark.parametrize("fmt, runtime, quantized_op", [
    pytest.param("openvino", "openvino", "FakeQuantize", marks=needs_extra("openvino")),
    pytest.param("onnx", "onnxruntime", "QuantizeLinear", marks=needs_extra("onnx"))])
def test_an_int8_feature_artifact_exports_the_base_it_was_evaluated_with(tmp_path, capsys, fmt, runtime, quantized_op):
    """Trained on int8 features of a runtime, exported to that runtime's format:
    made from the carried int8 base + head.keras and verified against the
    probabilities the metrics came from; another format comes from model.keras."""
    extract = {"runtime": runtime, "precision": "int8", "calibration_images": 4}
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=8), tmp_path, extract=extract)
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    art = tmp_path / "experiments" / "tiny" / "v1"
    out = tmp_path / "out"
    assert export_command.main([str(art), "--format", fmt, "--format", "savedmodel", "--out", str(out)]) == 0
    check = json.loads((out / fmt / "export.json").read_text())["verification"]
    assert check["reference"] == f"{runtime} int8 base + head.keras" and check["verified"]
    assert check["agreement"] == 1.0 and check["max_abs_dprob"] < 0.01
    assert "made from the artifact's" in check["note"]
    # ... with the unknown score of the same pass, same decisions as the evaluated model
    exported = json.loads((out / fmt / "export.json").read_text())
    assert check["unknown_agreement"] == 1.0 and check["max_abs_dscore"] < 0.05
    assert exported["output"]["unknown_threshold"] == json.loads((art / "unknown.json").read_text())["threshold"]
    if fmt == "openvino":
        assert quantized_op in (out / fmt / "model.xml").read_text()
    else:
        import onnx

        assert quantized_op in {node.op_type for node in onnx.load(str(out / fmt / "model.onnx")).graph.node}
    other = json.loads((out / "savedmodel" / "export.json").read_text())["verification"]
    assert other["reference"] == "model.keras" and "made from model.keras (TensorFlow fp32 base)" in other["note"]
