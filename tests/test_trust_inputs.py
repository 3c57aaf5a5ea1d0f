"""Issue 14 item 3: every input is validated: CLI ranges, the manifest schema, stray files, fuzzed parsers."""

import json
import os
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmc.artifact import read_manifest
from dmc.errors import ArtifactError, DmcError


@pytest.mark.parametrize("args, word", [
    (["--seed", "-1"], "--seed"), (["--steps", "0"], "--steps"), (["--opset", "7"], "--opset"),
    (["--calib-samples", "0"], "--calib-samples"), (["--cache-interval", "0"], "--cache-interval"),
])
def test_cli_ranges_are_checked_by_click(args, word, tmp_path, run_cli):
    code, _, err = run_cli("compress", "demo", "--out", tmp_path / "x.dmc", *args)
    assert code == 2 and word in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []


def test_api_refuses_an_unsupported_opset(tmp_path):
    from dmc.compress.pipeline import CompileOptions, compile_model

    with pytest.raises(DmcError, match="opset 7"):
        compile_model("demo", tmp_path / "x.dmc", CompileOptions(opset=7))


@pytest.fixture
def copy(demo_artifact, tmp_path):
    art = tmp_path / "a.dmc"
    shutil.copytree(demo_artifact, art)
    return art


def edit_manifest(art, change):
    data = json.loads((art / "manifest.json").read_text())
    change(data)
    (art / "manifest.json").write_text(json.dumps(data))


def test_schema_refuses_steps_twenty(copy, run_cli):
    edit_manifest(copy, lambda d: d["recipe"].update(steps="twenty"))
    with pytest.raises(ArtifactError, match="recipe.steps"):
        read_manifest(copy)
    code, _, err = run_cli("inspect", copy)
    assert code == 2 and "recipe.steps" in err and "internal error" not in err


def test_schema_refuses_a_missing_field_cleanly(copy, run_cli):
    edit_manifest(copy, lambda d: d.pop("graphs"))
    code, _, err = run_cli("run", copy, "--n", "1", "--out", copy.parent / "x.png")
    assert code == 2 and "graphs" in err and "internal error" not in err


def test_schema_ships_with_the_package():
    from importlib.resources import files

    schema = json.loads(files("dmc.artifact").joinpath("manifest.schema.json").read_text())
    assert schema["properties"]["format_version"]["minimum"] == 1 and "1" in schema["title"]


def test_extra_files_and_symlinks_are_refused(copy):
    (copy / "build.json").write_text("{}")  # the one tolerated extra: the build log
    read_manifest(copy)
    (copy / "graphs" / "evil.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="evil.onnx.*not listed"):
        read_manifest(copy)
    os.remove(copy / "graphs" / "evil.onnx")
    (copy / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="symlink"):
        read_manifest(copy)


# -- property-based fuzzing: whatever the bytes, DmcError or a result, never another exception ----------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, body, tail: struct.pack("<Q", n) + body + tail,
              st.integers(0, 2**64 - 1), st.binary(max_size=40), st.binary(max_size=16)),
    st.builds(lambda obj, tail: (lambda h: struct.pack("<Q", len(h)) + h)(json.dumps(obj).encode()) + tail,
              st.recursive(st.none() | st.integers() | st.text(max_size=5) | st.floats(),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8),
              st.binary(max_size=32)),
))
def test_fuzz_safetensors_header(tmp_path_factory, data):
    from dmc.models.safetensors_file import read_header

    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    path.write_bytes(data)
    try:
        header, metadata = read_header(path)
    except DmcError:
        return
    assert isinstance(header, dict) and isinstance(metadata, dict)


CONFIG_KEYS = ["_class_name", "sample_size", "in_channels", "out_channels", "block_out_channels",
               "layers_per_block", "down_block_types", "up_block_types", "num_class_embeds", "norm_num_groups"]
small = st.one_of(st.none(), st.integers(-2, 40), st.text(max_size=12), st.booleans(),
                  st.lists(st.integers(-1, 32), max_size=3), st.lists(st.sampled_from(
                      ["DownBlock2D", "UpBlock2D", "AttnDownBlock2D", "x"]), max_size=3))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))  # each loads a model
@given(st.one_of(st.binary(max_size=40).map(lambda b: ("raw", b)),
                 st.dictionaries(st.sampled_from(CONFIG_KEYS), small, max_size=6).map(lambda d: ("json", d))))
def test_fuzz_config_loading(tmp_path_factory, demo_weights, case):
    from dmc.models.loading import load_model

    kind, value = case
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(value if kind == "raw" else json.dumps(value).encode())
    try:
        load_model(str(demo_weights), str(path))
    except DmcError:
        pass


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    from dmc.models.builtin import demo_path

    path = tmp_path_factory.mktemp("w") / "demo.safetensors"
    shutil.copyfile(demo_path("demo"), path)
    return path


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 30) | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)


@FUZZ
@given(st.data())
def test_fuzz_manifest_loading(demo_artifact, tmp_path_factory, data):
    """Mutate the real manifest: replace or drop one value anywhere in it."""
    from dmc.runtimes import load

    real = json.loads((demo_artifact / "manifest.json").read_text())
    paths = list(_paths(real))
    where = data.draw(st.sampled_from(paths))
    value = data.draw(st.one_of(json_values, st.just(KeyError)))
    mutated = json.loads(json.dumps(real))
    parent = mutated
    for k in where[:-1]:
        parent = parent[k]
    if value is KeyError:
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    art = tmp_path_factory.mktemp("m") / "a.dmc"
    shutil.copytree(demo_artifact, art)
    (art / "manifest.json").write_text(json.dumps(mutated))
    try:
        load(art)
    except DmcError:
        pass


def _paths(obj, prefix=()):
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        yield prefix + (k,)
        if k != "config":
            yield from _paths(v, prefix + (k,))
