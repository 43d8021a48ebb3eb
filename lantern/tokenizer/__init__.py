"""Tokenizers built from GGUF metadata alone: llama.cpp's SentencePiece ("llama") and byte-level
BPE ("gpt2") tokenizers, token-for-token, plus a streaming detokenizer."""

from .tokenizer import EOG_TEXTS, StreamDecoder, Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "EOG_TEXTS"]
