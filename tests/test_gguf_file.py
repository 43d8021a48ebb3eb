"""GGUF access: the fast metadata path reads exactly what gguf's stock reader reads."""

from gguf import GGUFReader

from lantern.testing.synthetic import Spec, cached_model
from lantern.weights.gguf_file import GGUFFile


def assert_same_fields(path):
    stock = GGUFReader(str(path))
    ours = GGUFFile(path)
    assert list(stock.fields) == list(ours.reader.fields)
    for key, field in stock.fields.items():
        assert ours.reader.fields[key].types == field.types, key
        assert ours.reader.fields[key].contents() == field.contents(), key
    assert [t.name for t in stock.tensors] == list(ours.tensors)


def test_fast_reader_matches_stock_reader_on_smollm2(smollm2_path):
    assert_same_fields(smollm2_path)  # 49,152 tokens and 48,900 merges


def test_fast_reader_matches_stock_reader_on_synthetic_phi3():
    assert_same_fields(cached_model(Spec(arch="phi3", vocab_size=32064, longrope=True, context_length=8192,
                                         original_context=512), "Q4_K_M"))


def test_metadata_values_and_quant_mix(smollm2_path):
    f = GGUFFile(smollm2_path)
    assert f.architecture == "llama"
    assert f.get("llama.block_count") == 30
    assert f.get("llama.rope.freq_base") == 100000.0
    assert len(f.get("tokenizer.ggml.tokens")) == 49152
    assert f.get("no.such.key", "fallback") == "fallback"
    assert f.tensor_types() == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert f.tensor("blk.0.attn_k.weight", (192, 576)).type_name == "Q4_1"
