"""Gemma 3 (`gemma3`) and Qwen3 (`qwen3`) against llama.cpp (llama-cpp-python 0.3.36, the oracle).

Models: `lantern.testing.synthetic.GEMMA3_270M` and `QWEN3_06B`, Gemma-3-270M and Qwen3-0.6B
shapes with the width and layer count shrunk but their real head sizes (256 with 4 query heads
sharing 1 KV head; 128 with 16 sharing 8), metadata, tensor names and real vocabularies (262,144
and 151,936 tokens, from npm: lantern/testing/npm_vocab.py), quantized by llama.cpp's own
quantizer. Gemma's window is 32 tokens so that every prompt here (96 tokens and more) is longer
than the window on its five local layers, and layer 5 is global.

Checks: logits at least as close to the exact math as llama.cpp's (docs/FIDELITY.md's rule,
tests/test_fidelity.py's helper) on Q4_K_M, Q6_K and Q8_0; float files equal to llama.cpp's;
decode steps on the KV cache past the window equal the batched prompt; greedy continuations equal
llama.cpp's where the margins are clear; tokenizer ids exact against llama.cpp over the
multilingual corpus of tests/test_tokenizer.py; end-of-generation sets; the chat templates
(Gemma's turns, Qwen3's `<think>` handling); `lantern info`; the block variants named.

Time budget: about 4 minutes on 2 cores once the fixtures are cached (4 min 20 s measured on
2026-12-02 with other sessions' work keeping the load average at 7-10; the 262,144-row output
head dominates). Building the fixtures the first time (npm packs, vocabularies, llama.cpp
quantizations and F32 copies, about 2 GB in lantern's cache) adds 5-10 minutes.
"""

from __future__ import annotations

import functools

import llama_cpp
import numpy as np
import pytest
import torch

import lantern
from lantern.cli.info import describe
from lantern.generate.prompts import encode_chat
from lantern.testing import npm_vocab
from lantern.testing.oracle import fidelity, llama_cpp_logits
from lantern.testing.synthetic import GEMMA3_270M, QWEN3_06B, Spec, cached_model
from test_fidelity import assert_at_least_as_faithful, prompt
import test_tokenizer
from test_tokenizer import Oracle

SPECS = {"gemma3": GEMMA3_270M, "qwen3": QWEN3_06B}
PROMPT = 64  # two Gemma windows


@functools.cache
def loaded(arch: str, kernels: str = "fast", **options):
    """The arch's Q8_0 model, loaded once for the module (a 262,144-token head is slow to load)."""
    return lantern.load(cached_model(SPECS[arch], "Q8_0"), kernels=kernels, **options)


# ----- logits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q6_K", "Q8_0"])
@pytest.mark.parametrize("arch", sorted(SPECS))
def test_quantized_at_least_as_faithful_as_llama_cpp(arch, qtype):
    spec = SPECS[arch]
    assert_at_least_as_faithful(cached_model(spec, qtype), prompt(spec.vocab_size, PROMPT, seed=11))


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_f32_file_agrees_with_llama_cpp(arch):
    spec = SPECS[arch]
    path = cached_model(spec, "F32")
    ids = prompt(spec.vocab_size, PROMPT, seed=12)
    theirs = llama_cpp_logits(path, ids, f32_cache=True)
    ours = fidelity(lantern.load(path, kernels="reference").logits(ids).numpy(), theirs)
    print(f"{arch} F32: lantern vs llama.cpp {ours}")
    assert ours.distance <= 0.02, ours
    assert ours.top1_agree == len(ids), ours


def test_gemma3_window_matters_and_global_layer_sees_everything():
    """The window changes the logits past it (so the checks above exercise it), and lantern with
    the window switched off is not what llama.cpp computes."""
    ids = prompt(GEMMA3_270M.vocab_size, PROMPT, seed=13)
    windowed = loaded("gemma3").logits(ids).numpy()
    unwindowed = loaded("gemma3", sliding_window=False).logits(ids).numpy()
    window = GEMMA3_270M.sliding_window
    # Identical while every key is inside the window, different after.
    np.testing.assert_allclose(windowed[:window], unwindowed[:window], rtol=0, atol=1e-4 * windowed.std())
    assert fidelity(unwindowed[window:], windowed[window:]).distance > 0.1
    assert [loaded("gemma3").params.layer_window(i) for i in range(6)] == [window] * 5 + [0]


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_decode_steps_match_batched_prompt(arch):
    """Token-by-token decode on the (float16) cache, past Gemma's window, gives the batched
    prompt's logits within the fast path's budget against the exact kernels."""
    spec = SPECS[arch]
    ids = prompt(spec.vocab_size, 56, seed=14)
    model = loaded(arch)
    exact = loaded(arch, "reference").logits(ids)
    cache = model.new_cache()
    model.forward(ids[:40], cache)
    stepped = torch.cat([model.forward([t], cache) for t in ids[40:]])
    budget = 0.05 * float(exact.std())
    assert float((stepped - exact[40:]).abs().max()) <= budget
    assert int((stepped.argmax(-1) == exact[40:].argmax(-1)).sum()) >= len(ids) - 40 - 1


def _greedy_llama_cpp(path, ids, n):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2, verbose=False, logits_all=True)
    try:
        llm.eval(list(ids))
        out = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            llm.eval([token])
        return out
    finally:
        llm.close()


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_greedy_continuation_equals_llama_cpp(arch):
    """Greedy decoding from a prompt longer than the window, on the Q8_0 file: equal to llama.cpp's
    up to the first step whose top-2 margin (in the exact math) is too small to call."""
    spec = SPECS[arch]
    path = cached_model(spec, "Q8_0")
    ids = prompt(spec.vocab_size, 48, seed=15)
    n = 24
    model = loaded(arch)
    cache = model.new_cache()
    logits, ours = model.forward(ids, cache, last_only=True), []
    for _ in range(n):
        ours.append(int(logits[-1].argmax()))
        logits = model.forward([ours[-1]], cache)
    theirs = _greedy_llama_cpp(path, ids, n)
    exact = loaded(arch, "reference").logits(ids + ours).numpy()[len(ids) - 1:]
    clear = 0
    for step in exact[:n]:
        top2 = np.sort(step)[-2:]
        if top2[1] - top2[0] < 0.05 * step.std():
            break
        clear += 1
    print(f"{arch}: {clear} clear steps; lantern {ours[:clear]} llama.cpp {theirs[:clear]}")
    assert clear >= 8, "the continuation has too few clear margins to compare"
    assert ours[:clear] == theirs[:clear]


# ----- tokenizers -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(SPECS))
def vocab_oracle(request):
    o = Oracle(npm_vocab.cached_vocab_gguf(request.param))
    o.name = request.param
    yield o
    o.close()


@pytest.mark.parametrize("check", ["test_encode_each_line_matches_llama_cpp", "test_encode_whole_corpus_matches_llama_cpp",
                                   "test_decode_matches_llama_cpp",
                                   "test_special_ids_attributes_and_pieces_match_llama_cpp"])
def test_tokenizer_matches_llama_cpp(vocab_oracle, check):
    """tests/test_tokenizer.py's parity checks (the multilingual corpus line by line and whole,
    decoding, every token's attributes and pieces) on the Gemma 3 and Qwen3 vocabularies."""
    getattr(test_tokenizer, check)(vocab_oracle)


def test_end_of_generation_sets_are_llama_cpps(vocab_oracle):
    o = vocab_oracle
    theirs = {i for i in range(o.n_vocab) if llama_cpp.llama_vocab_is_eog(o.vocab, i)}
    assert o.tok.eog_ids == theirs
    ends = {"gemma3": ("<end_of_turn>", "<eos>"), "qwen3": ("<|im_end|>", "<|endoftext|>")}[o.name]
    assert {o.tok.token_to_id[t] for t in ends} <= o.tok.stop_ids


def test_special_tokens(vocab_oracle):
    o = vocab_oracle
    if o.name == "gemma3":
        text = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        assert o.tok.encode(text)[:3] == [2, 105, 2364]  # <bos> <start_of_turn> user
        assert o.tok.add_bos and o.tok.bos_id == 2 and o.tok.eos_id == 106
    else:
        text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ids = o.tok.encode(text)
        assert ids[0] == 151644 and 151667 in ids and 151668 in ids  # <|im_start|>, <think>, </think>
        assert not o.tok.add_bos
    assert o.tok.encode(text) == o.tokenize(text, o.tok.add_bos, True)


# ----- chat templates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma3_model():
    return loaded("gemma3")


@pytest.fixture(scope="module")
def qwen3_model():
    return loaded("qwen3")


def test_gemma3_chat_template(gemma3_model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = gemma3_model.chat_template.render(messages)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    # The template writes <bos>; the prompt holds it once (lantern.generate.prompts).
    assert encode_chat(gemma3_model, messages)[:3] == [2, 105, 2364]  # <bos> <start_of_turn> user


def test_qwen3_think_template(qwen3_model):
    """The real Qwen3 template: thinking of earlier turns is dropped from the history, the last
    assistant turn keeps it, and enable_thinking=False pre-fills an empty think block."""
    t = qwen3_model.chat_template
    history = [{"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
               {"role": "user", "content": "3+3?"}]
    text = t.render(history)
    assert "add them" not in text and "<|im_start|>assistant\n4<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n")
    assert t.render(history, enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert t.render(history, enable_thinking=True) == text
    last = history[:1] + [{"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"}]
    assert t.render(last, add_generation_prompt=False).endswith(
        "<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>\n")
    # reasoning_content given apart is used the same way
    apart = history[:1] + [{"role": "assistant", "content": "4", "reasoning_content": "add them"}]
    assert t.render(apart, add_generation_prompt=False) == t.render(last, add_generation_prompt=False)


def test_generation_passes_template_options(qwen3_model):
    """generate(..., template_options={"enable_thinking": False}) reaches the template: the prompt
    ends in the empty think block, so the answer comes without reasoning."""
    from lantern.errors import LanternError
    from lantern.generate.prompts import prompt_ids_for

    plain = prompt_ids_for(qwen3_model, "3+3?")
    no_think = prompt_ids_for(qwen3_model, "3+3?", template_options={"enable_thinking": False})
    assert no_think[: len(plain)] == plain
    assert qwen3_model.detokenize(no_think[len(plain):]) == "<think>\n\n</think>\n\n"
    generation = qwen3_model.generate("3+3?", max_tokens=2, temperature=0,
                                      template_options={"enable_thinking": False})
    assert generation.prompt_ids == no_think
    with pytest.raises(LanternError, match="set by lantern itself"):
        prompt_ids_for(qwen3_model, "3+3?", template_options={"messages": []})
    with pytest.raises(LanternError, match="need chat mode"):
        prompt_ids_for(qwen3_model, "3+3?", chat=False, template_options={"enable_thinking": False})


def test_template_options_in_chat_cli_and_server(qwen3_model):
    """The same variables reach the template from a ChatSession, `lantern run
    --chat-template-kwargs`, and the server: its --chat-template-kwargs default, a request's
    chat_template_kwargs (OpenAI, as vLLM and llama-server take it) and Ollama's `think`."""
    import subprocess
    import sys

    import ollama
    import openai

    from lantern.generate.batch import BatchEngine
    from lantern.generate.chat import ChatSession
    from lantern.generate.prompts import prompt_ids_for
    from lantern.serve import create_app
    from test_serve import Server

    plain = prompt_ids_for(qwen3_model, "3+3?")
    no_think = prompt_ids_for(qwen3_model, "3+3?", template_options={"enable_thinking": False})
    assert len(no_think) > len(plain)
    session = ChatSession(qwen3_model, max_tokens=1, temperature=0, template_options={"enable_thinking": False})
    assert session.send("3+3?").prompt_ids == no_think

    path = str(cached_model(SPECS["qwen3"], "Q8_0"))
    run = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", path, "-n", "1", "--temperature", "0",
                          "--verbose", "--chat-template-kwargs", '{"enable_thinking": false}', "3+3?"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"prompt {len(no_think)} tokens" in run.stderr

    engine = BatchEngine(qwen3_model, parallel=2, ctx_size=512)
    server = Server(create_app(qwen3_model, engine, name="qwen3-test", template_options={"enable_thinking": False}))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        ask = [{"role": "user", "content": "3+3?"}]
        assert client.chat.completions.create(model="qwen3-test", messages=ask, max_tokens=1).usage.prompt_tokens \
            == len(no_think)  # the server's default
        thinking = client.chat.completions.create(model="qwen3-test", messages=ask, max_tokens=1,
                                                  extra_body={"chat_template_kwargs": {"enable_thinking": True}})
        assert thinking.usage.prompt_tokens == len(plain)
        with pytest.raises(openai.BadRequestError, match="set by lantern itself"):
            client.chat.completions.create(model="qwen3-test", messages=ask, max_tokens=1,
                                           extra_body={"chat_template_kwargs": {"messages": []}})
        answer = ollama.Client(host=server.url).chat(model="qwen3-test", messages=ask, think=True, options={"num_predict": 1})
        assert answer.prompt_eval_count == len(plain)
    finally:
        server.stop()
        engine.close()


# ----- the model around the blocks --------------------------------------------------------------


def test_block_variants_are_named(gemma3_model, qwen3_model):
    """`Transformer.variants` names what the new architectures add to llama's blocks (what a
    decode path has to implement); llama/phi3/qwen2 add nothing. Decode steps run on whichever
    path `step_description` names, held to the exact math by the tests above."""
    g, q = gemma3_model.transformer, qwen3_model.transformer
    assert g.variants == ["per-head q/k RMSNorm", "post-attention/post-FFN norms", "gelu_tanh feed-forward",
                          "per-layer rope base/window"]
    assert q.variants == ["per-head q/k RMSNorm"]
    for t in (g, q):
        assert (t.native_step is None) == t.step_description.startswith("PyTorch blocks")
    assert lantern.load(cached_model(Spec(arch="llama", vocab_size=512), "Q8_0")).transformer.variants == []


def test_hyperparameters_from_metadata(gemma3_model, qwen3_model):
    g, q = gemma3_model.params, qwen3_model.params
    assert (g.head_dim, g.n_heads, g.n_kv_heads, g.dim) == (256, 4, 1, 256)
    assert g.local_layers == (True,) * 5 + (False,)
    assert (g.rope_base, g.rope_base_local, g.sliding_window) == (1e6, 10000.0, 32)
    assert g.attention_scale == 1 / 16 and g.embedding_scale == 16.0 and g.activation == "gelu_tanh"
    assert (q.head_dim, q.n_heads, q.n_kv_heads, q.dim, q.rope_base) == (128, 16, 8, 256, 1e6)
    assert q.local_layers == () and q.attention_scale == 0.0 and q.activation == "silu"


def test_info_shows_the_architecture(capsys):
    from lantern.cli import main

    path = cached_model(GEMMA3_270M, "Q8_0")
    hp = describe(path)["hyperparameters"]
    assert hp["local_layers"] == [0, 1, 2, 3, 4] and hp["head_dim"] == 256
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("hyper-parameters:"))
    assert ("head size 256" in line and "rope base 1e+06 (local layers 10000, unscaled)" in line
            and "window 32 on 5 of 6 layers (the rest global)" in line and "embeddings x 16" in line
            and "GeGLU (tanh GELU)" in line), line
    assert main(["info", str(cached_model(QWEN3_06B, "Q8_0"))]) == 0
    assert "head size 128, ffn 768, rms eps 1e-06, rope base 1e+06, SwiGLU" in capsys.readouterr().out


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_the_native_step_runs_the_new_blocks_as_pytorch_does(arch):
    """q/k norms, post norms, GeGLU, local/global rotary tables and windows in step.c: decode
    steps past Gemma's window agree with the PyTorch blocks on the same kernels, alone and as
    one sequence of a batch."""
    model = loaded(arch)
    transformer = model.transformer
    assert transformer.step_description.startswith("native step"), transformer.step_description
    ids = prompt(SPECS[arch].vocab_size, 48, seed=5)
    cache = model.new_cache()
    model.forward(ids[:36], cache)
    native = torch.cat([model.forward([t], cache) for t in ids[36:]])
    step, transformer.native_step = transformer.native_step, None
    try:
        blocks_cache = model.new_cache()
        model.forward(ids[:36], blocks_cache)
        blocks = torch.cat([model.forward([t], blocks_cache) for t in ids[36:]])
    finally:
        transformer.native_step = step
    assert float((native - blocks).abs().max()) <= 0.002 * float(blocks.std())
    caches = [model.new_cache() for _ in range(3)]
    for c in caches:
        model.forward(ids[:36], c)
    for row in model.forward_batch([([ids[36]], c) for c in caches]):
        assert float((row - native[:1]).abs().max()) <= 0.002 * float(blocks.std())
