"""Weights on disk and from the (offline) Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import bsqaudio
from bsqaudio import AudioBSQ, BsqAudioError, ModelConfig, hub, preset
from bsqaudio.hub import CONFIG_NAME, WEIGHTS_NAME

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The saved tiny model's output on a fixed input."""
    torch.manual_seed(0)
    mel = torch.rand(1, 1024, 128) * 2 - 1
    model = bsqaudio.from_pretrained(tiny_model_dir).model
    with torch.no_grad():
        out = model(mel)
    return mel, out.quantizer.indices, out.reconstruction


def assert_same_model(loaded, reference):
    mel, indices, reconstruction = reference
    assert not loaded.model.training
    with torch.no_grad():
        out = loaded.model(mel)
    assert torch.equal(out.quantizer.indices, indices)
    assert torch.equal(out.reconstruction, reconstruction)


def test_save_writes_weights_and_config(tiny_model_dir):
    assert (tiny_model_dir / WEIGHTS_NAME).is_file()
    config = ModelConfig.from_json((tiny_model_dir / CONFIG_NAME).read_text())
    assert config == preset("tiny")
    assert not list(tiny_model_dir.glob("*.part"))


def test_folder_round_trip(tmp_path, reference):
    torch.manual_seed(0)
    model = AudioBSQ(preset("tiny")).eval()
    bsqaudio.save_pretrained(model, tmp_path / "m")
    loaded = bsqaudio.from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert_same_model(loaded, reference)
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert loaded.model_hash == hashlib.sha256(weights).hexdigest()[:16]  # what .bsq headers record
    # The same weights give the same hash; other weights another.
    assert bsqaudio.from_pretrained(str(tmp_path / "m")).model_hash == loaded.model_hash


def test_hash_differs_between_models(tiny_model_dir, other_model_dir):
    a = bsqaudio.from_pretrained(tiny_model_dir).model_hash
    b = bsqaudio.from_pretrained(other_model_dir).model_hash
    assert a != b


def test_single_file_with_config_in_metadata(tmp_path, tiny_model_dir, reference):
    alone = tmp_path / "my-model.safetensors"
    shutil.copy(tiny_model_dir / WEIGHTS_NAME, alone)
    assert not (tmp_path / CONFIG_NAME).exists()
    loaded = bsqaudio.from_pretrained(alone)
    assert loaded.model.config == preset("tiny")
    assert_same_model(loaded, reference)


def test_float16_export_loads(tmp_path, reference):
    torch.manual_seed(0)
    bsqaudio.save_pretrained(AudioBSQ(preset("tiny")), tmp_path, dtype=torch.float16)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    assert state["patch_embed.weight"].dtype == torch.float16
    loaded = bsqaudio.from_pretrained(tmp_path)
    assert loaded.model.patch_embed.weight.dtype == torch.float32
    mel, _, reconstruction = reference
    with torch.no_grad():
        out = loaded.model(mel).reconstruction
    torch.testing.assert_close(out, reconstruction, atol=0.02, rtol=0)


def _save_state(folder, state, config: ModelConfig, metadata: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_NAME),
              metadata={"config": config.to_json()} if metadata else None)
    (folder / CONFIG_NAME).write_text(config.to_json())
    return folder


def test_missing_weight_is_refused(tmp_path, tiny_model_dir):
    state = load_file(str(tiny_model_dir / WEIGHTS_NAME))
    del state["head.weight"]
    _save_state(tmp_path, state, preset("tiny"))
    with pytest.raises(BsqAudioError, match="do not match the config.*head.weight"):
        bsqaudio.from_pretrained(tmp_path)


def test_unexpected_weight_is_refused(tmp_path, tiny_model_dir):
    state = load_file(str(tiny_model_dir / WEIGHTS_NAME))
    state["extra.weight"] = torch.zeros(3)
    _save_state(tmp_path, state, preset("tiny"))
    with pytest.raises(BsqAudioError, match="do not match the config.*extra.weight"):
        bsqaudio.from_pretrained(tmp_path)


def test_wrongly_shaped_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    tiny = preset("tiny")
    wider = ModelConfig.from_dict({**tiny.to_dict(), "code_bits": 36})
    _save_state(tmp_path, AudioBSQ(wider).state_dict(), tiny)
    with pytest.raises(BsqAudioError, match="do not match the config"):
        bsqaudio.from_pretrained(tmp_path)


def test_config_beside_must_match_metadata(tmp_path, tiny_model_dir):
    shutil.copy(tiny_model_dir / WEIGHTS_NAME, tmp_path / WEIGHTS_NAME)
    other = ModelConfig.from_dict({**preset("tiny").to_dict(), "name": "renamed"})
    (tmp_path / CONFIG_NAME).write_text(other.to_json())
    with pytest.raises(BsqAudioError, match="does not match"):
        bsqaudio.from_pretrained(tmp_path)


def test_no_config_anywhere(tmp_path, tiny_model_dir):
    state = load_file(str(tiny_model_dir / WEIGHTS_NAME))
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(BsqAudioError, match="no config"):
        bsqaudio.from_pretrained(tmp_path / "bare.safetensors")


def test_bad_config_json_beside(tmp_path, tiny_model_dir):
    shutil.copy(tiny_model_dir / WEIGHTS_NAME, tmp_path / WEIGHTS_NAME)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"width": 32, "depth": 9}))
    with pytest.raises(BsqAudioError, match="unknown model config fields: depth"):
        bsqaudio.from_pretrained(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, I am not weights\n", bytes(range(256)) * 3,
                                     (10 ** 6).to_bytes(8, "little") + b"{}"])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(content)
    with pytest.raises(BsqAudioError, match="not a valid safetensors file"):
        bsqaudio.from_pretrained(tmp_path)
    with pytest.raises(BsqAudioError, match="not a valid safetensors file"):
        bsqaudio.from_pretrained(path)


def test_folder_without_weights(tmp_path):
    with pytest.raises(BsqAudioError, match="no model.safetensors"):
        bsqaudio.from_pretrained(tmp_path)


def test_neither_path_nor_repo_id():
    with pytest.raises(BsqAudioError, match="no such model file or folder, and not a Hub repo id"):
        bsqaudio.from_pretrained("no-such-folder")


def test_no_embedded_model_mentions_model_option(tmp_path, monkeypatch):
    import bsqaudio.hub as hub

    monkeypatch.setattr(hub, "EMBEDDED_DIR", tmp_path)  # an install without bundled weights
    with pytest.raises(BsqAudioError, match="--model"):
        bsqaudio.from_pretrained(None)
    with pytest.raises(BsqAudioError, match="--model"):
        bsqaudio.from_pretrained()


# -- the Hugging Face Hub cache, offline --------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, also where huggingface_hub already read it at import time."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir):
    """A cache laid out as huggingface_hub lays it out:
    models--owner--name/{blobs/<sha>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha>}."""
    import hashlib

    cache = tmp_path / "hf-cache"
    repo = cache / "models--owner--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        data = (tiny_model_dir / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(f"../../blobs/{blob.name}")
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_hub_repo_from_offline_cache(offline, hub_cache, tiny_model_dir, reference):
    loaded = bsqaudio.from_pretrained("owner/name", cache_dir=hub_cache)
    assert loaded.source == "owner/name@main"
    assert loaded.model_hash == bsqaudio.from_pretrained(tiny_model_dir).model_hash
    assert_same_model(loaded, reference)


def test_hub_repo_pinned_revision(offline, hub_cache, reference):
    (hub_cache / "models--owner--name" / "refs" / "main").unlink()  # only the pin can find it
    loaded = bsqaudio.from_pretrained("owner/name", revision=COMMIT, cache_dir=hub_cache)
    assert loaded.source == f"owner/name@{COMMIT}"
    assert_same_model(loaded, reference)


def test_hub_repo_with_plain_files_in_snapshot(offline, tmp_path, tiny_model_dir, reference):
    """Blobs are optional: real files in the snapshot folder work too."""
    snapshot = tmp_path / "models--owner--plain" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy(tiny_model_dir / name, snapshot / name)
    (tmp_path / "models--owner--plain" / "refs").mkdir()
    (tmp_path / "models--owner--plain" / "refs" / "main").write_text(COMMIT)
    assert_same_model(bsqaudio.from_pretrained("owner/plain", cache_dir=tmp_path), reference)


def test_hub_missing_repo_offline(offline, hub_cache):
    with pytest.raises(BsqAudioError, match="offline") as info:
        bsqaudio.from_pretrained("owner/missing", cache_dir=hub_cache)
    assert "cache" in str(info.value)


@pytest.mark.parametrize("revision", ["f" * 40, "v9"])
def test_hub_unknown_revision_offline(offline, hub_cache, revision):
    """A revision the cache does not hold (a commit or a tag) is an error naming it; never a
    fall-back to another revision."""
    with pytest.raises(BsqAudioError, match="cache") as info:
        bsqaudio.from_pretrained("owner/name", revision=revision, cache_dir=hub_cache)
    assert f"owner/name@{revision}" in str(info.value) and "--revision" in str(info.value)


def add_snapshot(cache, commit: str, source_dir, config_text: str | None = None):
    """Another commit of owner/name in the cache, with the files of ``source_dir`` (and another
    config.json if given)."""
    snapshot = cache / "models--owner--name" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(source_dir / WEIGHTS_NAME, snapshot / WEIGHTS_NAME)
    if config_text is None:
        shutil.copy(source_dir / CONFIG_NAME, snapshot / CONFIG_NAME)
    else:
        (snapshot / CONFIG_NAME).write_text(config_text)
    return snapshot


OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def test_hub_tag_resolves_to_its_snapshot(offline, hub_cache, tiny_model_dir, other_model_dir):
    """--revision v2 loads the snapshot refs/v2 names, not main's."""
    add_snapshot(hub_cache, OTHER_COMMIT, other_model_dir)
    (hub_cache / "models--owner--name" / "refs" / "v2").write_text(OTHER_COMMIT)
    pinned = bsqaudio.from_pretrained("owner/name", revision="v2", cache_dir=hub_cache)
    assert pinned.model_hash == bsqaudio.from_pretrained(other_model_dir).model_hash
    assert pinned.source == "owner/name@v2"
    main = bsqaudio.from_pretrained("owner/name", cache_dir=hub_cache)
    assert main.model_hash == bsqaudio.from_pretrained(tiny_model_dir).model_hash


def test_hub_weights_come_from_the_commit_of_the_config(offline, hub_cache, tiny_model_dir,
                                                        other_model_dir, monkeypatch):
    """A branch that moves between the two downloads must not pair one commit's config with
    another commit's weights: the weights are fetched at the config's commit."""
    import huggingface_hub

    add_snapshot(hub_cache, OTHER_COMMIT, other_model_dir)
    real = huggingface_hub.hf_hub_download
    revisions = []

    def moving_branch(repo_id, filename, revision=None, **kwargs):
        revisions.append(revision)
        path = real(repo_id, filename, revision=revision, **kwargs)
        (hub_cache / "models--owner--name" / "refs" / "main").write_text(OTHER_COMMIT)  # pushed
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", moving_branch)
    loaded = bsqaudio.from_pretrained("owner/name", cache_dir=hub_cache)
    assert revisions == [None, COMMIT]
    assert loaded.model_hash == bsqaudio.from_pretrained(tiny_model_dir).model_hash


@pytest.mark.parametrize("metadata", [True, False], ids=["config-in-metadata", "no-metadata"])
def test_hub_config_that_does_not_match_the_weights(offline, hub_cache, tiny_model_dir, metadata):
    """The downloaded config.json is checked against the weights before use."""
    wider = ModelConfig.from_dict({**preset("tiny").to_dict(), "code_bits": 36})
    snapshot = add_snapshot(hub_cache, OTHER_COMMIT, tiny_model_dir, wider.to_json())
    if not metadata:
        save_file(load_file(str(tiny_model_dir / WEIGHTS_NAME)), str(snapshot / WEIGHTS_NAME))
    expected = "does not match the weights' config" if metadata else "do not match the config"
    with pytest.raises(BsqAudioError, match=expected):
        bsqaudio.from_pretrained("owner/name", revision=OTHER_COMMIT, cache_dir=hub_cache)


def _hub_error(cls):
    """An instance of a huggingface_hub error (their constructors want an HTTP response)."""
    err = cls.__new__(cls)
    Exception.__init__(err, "from the Hub")
    return err


@pytest.mark.parametrize("name, expected", [
    ("RevisionNotFoundError", "has no revision 'v9'"),
    ("RepositoryNotFoundError", "no such model on the Hugging Face Hub"),
    ("RemoteEntryNotFoundError", "not a bsqaudio model"),
])
def test_hub_errors_online_are_one_clear_line(monkeypatch, name, expected):
    import huggingface_hub
    import huggingface_hub.errors

    if not hasattr(huggingface_hub.errors, name):
        pytest.skip(f"huggingface_hub {huggingface_hub.__version__} has no {name}")
    error = _hub_error(getattr(huggingface_hub.errors, name))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(BsqAudioError, match=expected) as info:
        bsqaudio.from_pretrained("owner/name", revision="v9")
    assert "\n" not in str(info.value) and str(info.value).startswith("owner/name")


def test_cli_passes_the_revision_to_the_hub(offline, hub_cache, tiny_model_dir, tmp_path, monkeypatch):
    """``--model owner/name --revision COMMIT`` through the command: only the pin finds the model."""
    import huggingface_hub.constants as hf_constants
    from conftest import write_wav
    from test_bad_audio import run_in_process

    from bsqaudio import load_bsq

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    (hub_cache / "models--owner--name" / "refs" / "main").unlink()
    wav = write_wav(tmp_path / "in.wav", 0.5)
    args = ["encode", wav, "-o", tmp_path / "out.bsq", "--model", "owner/name", "--device", "cpu"]
    unpinned = run_in_process(*args)
    assert unpinned.exit == 1 and "not in the local Hugging Face cache" in unpinned.stderr, unpinned
    assert run_in_process(*args, "--revision", COMMIT).exit == 0
    assert load_bsq(tmp_path / "out.bsq").header["model_hash"] == \
        bsqaudio.from_pretrained(tiny_model_dir).model_hash
    wrong = run_in_process(*args, "--revision", "v9", "--force")
    assert wrong.exit == 1 and "owner/name@v9" in wrong.stderr and wrong.stderr.count("\n") == 1


# -- nothing unpickles a file a user passes in -------------------------------------------------

def test_no_pickle_loads_in_the_package():
    """torch.load only with weights_only=True, np.load only with allow_pickle=False, and no
    pickle.load(s) at all: a model, checkpoint or cache file must never be able to run code."""
    import ast
    from pathlib import Path

    package = Path(bsqaudio.__file__).resolve().parent
    problems = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            keywords = {k.arg: k.value for k in node.keywords}

            def is_const(name, value, keywords=keywords):
                return isinstance(keywords.get(name), ast.Constant) and keywords[name].value is value

            where = f"{source.relative_to(package)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load" and not is_const("weights_only", True):
                problems.append(f"{where} torch.load without weights_only=True")
            if owner == "np" and node.func.attr == "load" and not is_const("allow_pickle", False):
                problems.append(f"{where} np.load without allow_pickle=False")
            if owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads"):
                problems.append(f"{where} {owner}.{node.func.attr}")
    assert not problems, problems


# -- hostile model folders: refused before anything big is read or allocated ------------------------

def make_special(path, kind: str):
    """A FIFO, or a char device that reads like /dev/zero (1, 5), at ``path`` (never /dev)."""
    import os
    import stat

    if kind == "fifo":
        os.mkfifo(path)
        return
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except (PermissionError, OSError) as err:
        pytest.skip(f"cannot make a device file here ({err})")


@pytest.mark.parametrize("kind", ["fifo", "zero-device"])
def test_weights_that_are_not_a_regular_file(tmp_path, tiny_model_dir, kind, no_hang):
    """Was: /dev/zero as model.safetensors read until RSS passed GBs, a FIFO hung."""
    shutil.copy(tiny_model_dir / CONFIG_NAME, tmp_path / CONFIG_NAME)
    make_special(tmp_path / WEIGHTS_NAME, kind)
    for name in (tmp_path, tmp_path / WEIGHTS_NAME):
        with pytest.raises(BsqAudioError, match="not a regular file"):
            bsqaudio.from_pretrained(name)


@pytest.mark.parametrize("kind", ["fifo", "zero-device"])
def test_config_that_is_not_a_regular_file(tmp_path, tiny_model_dir, kind, no_hang):
    shutil.copy(tiny_model_dir / WEIGHTS_NAME, tmp_path / WEIGHTS_NAME)
    make_special(tmp_path / CONFIG_NAME, kind)
    with pytest.raises(BsqAudioError, match="config.json: not a regular file"):
        bsqaudio.from_pretrained(tmp_path)


@pytest.fixture
def bare_weights(tmp_path, tiny_model_dir):
    """A folder with the tiny model's weights (no config in their metadata) and no config.json
    yet: the config a test writes is the only one."""
    save_file(load_file(str(tiny_model_dir / WEIGHTS_NAME)), str(tmp_path / WEIGHTS_NAME))
    return tmp_path


@pytest.fixture
def real_models(monkeypatch):
    """Records every AudioBSQ that hub builds off the meta device, i.e. that allocates."""
    import bsqaudio.hub as hub

    built = []

    class Recording(AudioBSQ):
        def __init__(self, config):
            if torch.empty(0).device.type != "meta":
                built.append(config)
            super().__init__(config)

    monkeypatch.setattr(hub, "AudioBSQ", Recording)
    return built


@pytest.mark.parametrize("changes", [{"width": 2048, "heads": 2}, {"encoder_layers": 60},
                                     {"refine_channels": 256}],
                         ids=["width-2048", "60-layers", "refine-256"])
def test_big_config_with_ordinary_weights_allocates_nothing(bare_weights, changes, real_models):
    """Was: the config's model was built first (width 20000: over 3 GB) and only then compared
    with the weights. Now the safetensors header is compared with the shapes the config implies
    (found on the meta device) before anything is allocated."""
    config = ModelConfig.from_dict({**preset("tiny").to_dict(), **changes})
    (bare_weights / CONFIG_NAME).write_text(config.to_json())
    with pytest.raises(BsqAudioError, match="do not match the config"):
        bsqaudio.from_pretrained(bare_weights)
    assert real_models == []
    (bare_weights / CONFIG_NAME).write_text(preset("tiny").to_json())
    loaded = bsqaudio.from_pretrained(bare_weights).model
    assert real_models == []  # the loaded model too is built on meta and takes the file's tensors
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_config_past_the_parameter_limit(bare_weights, real_models):
    huge = {**preset("tiny").to_dict(), "width": 4096, "heads": 4, "encoder_layers": 64,
            "decoder_layers": 64, "mlp_ratio": 16.0}
    (bare_weights / CONFIG_NAME).write_text(json.dumps(huge))
    with pytest.raises(BsqAudioError, match="parameters, more than"):
        bsqaudio.from_pretrained(bare_weights)
    assert real_models == []


HOSTILE_CONFIGS = {
    "width-20000": {"width": 20000},
    "layers-1e6": {"encoder_layers": 1_000_000},
    "layers-float": {"encoder_layers": 1e6},
    "heads-0": {"heads": 0},
    "patch_time-0": {"patch_time": 0},
    "hop_length-0": {"hop_length": 0},
    "width-negative": {"width": -256},
    "sample_rate-0": {"sample_rate": 0},
    "width-float": {"width": 32.5},
    "width-string": {"width": "32"},
    "width-bool": {"width": True},
    "width-nested": {"width": {"value": 32}},
    "width-huge": {"width": 10**30},
    "n_fft-huge": {"n_fft": 2**40},
    "window_frames-huge": {"window_frames": 2**30, "patch_time": 1},
    "win_length-past-n_fft": {"win_length": 2048},
    "db_range-nan": {"db_range": float("nan")},
    "db_range-inf": {"db_range": float("inf")},
    "db_range-0": {"db_range": 0},
    "mlp_ratio-nan": {"mlp_ratio": float("nan")},
    "name-newline": {"name": "a\nb"},
    "unknown-field-newline": {"evil\nname": 1},
}


@pytest.mark.parametrize("changes", list(HOSTILE_CONFIGS.values()), ids=list(HOSTILE_CONFIGS))
def test_hostile_config_is_one_clear_line(bare_weights, changes, real_models):
    (bare_weights / CONFIG_NAME).write_text(json.dumps({**preset("tiny").to_dict(), **changes}))
    with pytest.raises(BsqAudioError) as caught:
        bsqaudio.from_pretrained(bare_weights)
    message = str(caught.value)
    assert message.startswith(str(bare_weights / CONFIG_NAME)), message
    assert "\n" not in message and message.isprintable() and len(message) < 300, repr(message)
    assert real_models == []


@pytest.mark.parametrize("content", [b"\xff\xfe{\x00}\x00", b'{"width": 32, "name": "\xe9"}',
                                     b"[" * 100_000, b'{"width": ' + b"1" * 5000 + b"}",
                                     b"[1, 2]", b'"tiny"', b"null", b"not json", b"",
                                     b"{}" + b" " * 70_000],
                         ids=["utf16", "latin1", "deep", "5000-digits", "list", "string", "null",
                              "not-json", "empty", "too-long"])
def test_unreadable_config_json_is_one_clear_line(bare_weights, content):
    (bare_weights / CONFIG_NAME).write_bytes(content)
    with pytest.raises(BsqAudioError, match="config.json: model config") as caught:
        bsqaudio.from_pretrained(bare_weights)
    assert "\n" not in str(caught.value)


def test_hostile_config_in_the_weights_metadata(tmp_path, tiny_model_dir, real_models):
    state = load_file(str(tiny_model_dir / WEIGHTS_NAME))
    bad = json.dumps({**preset("tiny").to_dict(), "width": 20000})
    save_file(state, str(tmp_path / "alone.safetensors"), metadata={"config": bad})
    with pytest.raises(BsqAudioError, match="config in its metadata.*width must be between"):
        bsqaudio.from_pretrained(tmp_path / "alone.safetensors")
    assert real_models == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(bare_weights, tiny_model_dir, value):
    """Was: loaded, and a NaN anywhere in the encoder made every code 0."""
    state = load_file(str(tiny_model_dir / WEIGHTS_NAME))
    state["quant_embed.bias"][3] = value
    _save_state(bare_weights, state, preset("tiny"))
    with pytest.raises(BsqAudioError, match="quant_embed.bias holds NaN or infinite values"):
        bsqaudio.from_pretrained(bare_weights)


def test_integer_weights_for_a_float_tensor_are_refused(bare_weights, tiny_model_dir):
    state = load_file(str(tiny_model_dir / WEIGHTS_NAME))
    state["head.weight"] = torch.zeros_like(state["head.weight"], dtype=torch.int32)
    _save_state(bare_weights, state, preset("tiny"))
    with pytest.raises(BsqAudioError, match="dtype I32 of head.weight"):
        bsqaudio.from_pretrained(bare_weights)


def test_config_limits_admit_the_presets_and_more():
    """The limits are a safety net, not a design constraint: every preset, and a base a third
    wider and twice as deep (3.5x its parameters), stay within them."""
    from bsqaudio.model.config import MAX_PARAMETERS, PRESETS

    for config in PRESETS.values():
        assert ModelConfig.from_dict(config.to_dict()) == config
    big = ModelConfig.from_dict({**preset("base").to_dict(), "width": 1024, "heads": 16,
                                 "encoder_layers": 24, "decoder_layers": 24})
    from bsqaudio.hub import expected_tensors

    assert sum(shape.numel() for shape, _ in expected_tensors(big).values()) < MAX_PARAMETERS


@pytest.mark.parametrize("changes", [{}, {"conv": False}, {"refine_channels": 0},
                                     {"mlp_ratio": 1.5}, {"encoder_layers": 0, "heads": 4}],
                         ids=["tiny", "no-conv", "no-refiner", "mlp-1.5", "no-encoder-layers"])
def test_expected_tensors_are_the_models(changes):
    """The shapes-only construction gives exactly the state dict a real model has."""
    from bsqaudio.hub import expected_tensors

    config = ModelConfig.from_dict({**preset("tiny").to_dict(), **changes})
    real = {k: (v.shape, v.is_floating_point()) for k, v in AudioBSQ(config).state_dict().items()}
    assert expected_tensors(config) == real


def test_loading_writes_no_file_and_imports_no_compiler(tiny_model_dir, tmp_path):
    """Was (with plain meta-device construction): torch ran the init's elementwise meta ops
    through Python references that import torch._dynamo, which writes a generated file to the
    temp folder: loading a model failed under a file-size limit (encode to a full disk) or a
    read-only /tmp, and cost a second of start-up."""
    import subprocess
    import sys

    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "import bsqaudio\n"
            "from bsqaudio.hub import expected_tensors\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))\n"
            f"bsqaudio.from_pretrained({str(tiny_model_dir)!r})\n"
            "expected_tensors(bsqaudio.preset('base'))\n"
            "assert 'torch._dynamo' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


# -- a mistyped local path is a path, not a Hub lookup -----------------------------------------

@pytest.mark.parametrize("name", ["./nope", "/no/such/model", "~/no-such-bsqaudio-model", "runs/a/export",
                                  "a/b/c", "/nonexistent/model.safetensors", "model.safetensors",
                                  "existing/exprot"])
def test_a_missing_path_is_reported_as_a_path_without_asking_the_hub(name, tmp_path, monkeypatch):
    (tmp_path / "existing").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "_from_hub", lambda *a: pytest.fail(f"{name} went to the Hub"))
    with pytest.raises(BsqAudioError, match="no such model file or folder"):
        bsqaudio.from_pretrained(name)


def test_an_owner_name_pair_still_goes_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(hub, "_from_hub", lambda name, *a: asked.append(name))
    hub.load_pretrained("owner/model")
    assert asked == ["owner/model"]
