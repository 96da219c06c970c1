"""Model specs, chat formats, the zoo registry, prompt sets and atomic writes."""

from __future__ import annotations

import json

import pytest

from traitlab import atomic, zoo
from traitlab.chat import ChatFormat
from traitlab.data import DataError, available_traits, load_trait, public_path
from traitlab.models import ModelError, describe, load_model


def test_describe_without_weights():
    assert describe("qwen2.5-coder-0.5b-instruct").n_layers == 24
    assert describe("gemma-3-270m").arch == "gemma3_text"
    assert describe("tiny-gemma3").kind == "tiny"


@pytest.mark.parametrize("spec, msg", [("gpt5", "unknown model 'gpt5'"), ("", "non-empty"),
                                       ("/no/such/file.gguf", "does not exist")])
def test_unknown_models(spec, msg):
    with pytest.raises(ModelError, match=msg):
        describe(spec)


def test_local_folder(tmp_path):
    m = load_model("tiny-qwen2")
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    info = describe(str(tmp_path))
    assert (info.kind, info.arch, info.n_layers) == ("dir", "qwen2", 2)
    again = load_model(str(tmp_path))
    assert again.fingerprint.startswith("dir:")


def test_plain_format_for_base_models():
    tok = load_model("tiny-llama").tokenizer
    fmt = ChatFormat.plain(tok)
    e = fmt.encode("Hi", "Hello")
    assert tok.decode(list(e.ids[e.prompt_len:])) == " Hello"
    assert fmt.prompt("Hi", system="Be brief.") == "Be brief.\n\nUser: Hi\nAssistant:"


def test_chat_template_prompt_is_a_prefix(tiny):
    e = tiny.chat.encode("Hi", "Hello")
    p = tiny.chat.encode("Hi")
    assert e.ids[:e.prompt_len] == p.ids and e.prompt_len == len(p.ids)


def test_zoo_registry_is_complete():
    assert set(zoo.ZOO) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                            "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"}
    for e in zoo.ZOO.values():
        assert len(e.sha256) == 64 and e.size > 0 and e.packages
    with pytest.raises(zoo.ZooError, match="unknown zoo model"):
        zoo.entry("llama-70b")


def test_a_gguf_is_parsed_once_per_dequantisation_and_each_loader_gets_its_own_metadata(monkeypatch):
    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    calls = []

    def parse(path, return_tensors=False, **kw):
        calls.append((path, return_tensors))
        return {"config": {"model_type": "llama"}}

    monkeypatch.setattr(hf_gguf, "load_gguf_checkpoint", parse)
    name_map = gguf.get_tensor_name_map
    with zoo._parse_gguf_once():
        first = hf_gguf.load_gguf_checkpoint("m.gguf")
        first["config"].pop("model_type")  # transformers' config loader pops keys from what it gets
        assert hf_gguf.load_gguf_checkpoint("m.gguf") == {"config": {"model_type": "llama"}}
        hf_gguf.load_gguf_checkpoint("m.gguf", return_tensors=True)  # the weights: always read
        arch = next(iter(gguf.MODEL_ARCH_NAMES))
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert calls == [("m.gguf", False), ("m.gguf", True)]
    assert hf_gguf.load_gguf_checkpoint is parse and gguf.get_tensor_name_map is name_map  # restored


@pytest.mark.parametrize("trait", ["refusal", "uncertainty", "formality", "optimism", "sycophancy", "humor"])
def test_trait_sets(trait):
    ds = load_trait(trait)
    assert len(ds.pairs) >= 100
    assert all((p.split == "val") == (int(p.id.rsplit("-", 1)[1]) % 5 == 0) for p in ds.pairs)
    assert len({p.id for p in ds.pairs}) == len(ds.pairs)
    assert all(p.pos_response != p.neg_response for p in ds.pairs)
    small = load_trait(trait, max_pairs_per_split=3)
    assert len(small.split("train")) == len(small.split("val")) == 3


def test_trait_errors(tmp_path):
    assert "refusal" in available_traits()
    with pytest.raises(DataError, match="no prompt set for trait 'evil'"):
        load_trait("evil")
    (tmp_path / "x.jsonl").write_text(json.dumps({"id": "x-1"}) + "\n")
    with pytest.raises(DataError, match="keys"):
        load_trait("x", folder=tmp_path)


def test_missing_public_dataset_names_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="TRAITLAB_DATA_ROOT"):
        public_path("xstest")
    with pytest.raises(DataError, match="unknown public dataset"):
        public_path("mmlu")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert atomic.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_files_read_keeps_each_files_digest(tmp_path, monkeypatch):
    import hashlib

    from traitlab import data

    monkeypatch.setattr(data, "_READ", {})
    load_trait("optimism")
    own = tmp_path / "mine.jsonl"
    own.write_text('{"a": 1}\n')
    data.read_jsonl(own)
    read = data.files_read()
    assert read == {"data/traits/optimism.jsonl": hashlib.sha256(
                        (data.project_data("traits", "optimism.jsonl")).read_bytes()).hexdigest(),
                    str(own.resolve()): hashlib.sha256(b'{"a": 1}\n').hexdigest()}
    own.write_text('{"a": 2}\n')   # a later read of a changed file records what was read last
    data.read_jsonl(own)
    assert data.files_read()[str(own.resolve())] == hashlib.sha256(b'{"a": 2}\n').hexdigest()
