namespace Inference.Tokenization;

/// <summary>The tokenizer family a model uses, as named by the GGUF key <c>tokenizer.ggml.model</c>.</summary>
public enum TokenizerKind
{
    /// <summary>
    /// SentencePiece-style BPE over Unicode characters with scores (<c>llama</c>): spaces become '▁', an optional dummy
    /// prefix space, and byte fallback through the <c>&lt;0xNN&gt;</c> tokens.
    /// </summary>
    SentencePiece,

    /// <summary>
    /// GPT-2-style byte-level BPE with a ranked merge list (<c>gpt2</c>): a regex pre-tokenizer named by
    /// <c>tokenizer.ggml.pre</c>, then BPE over the byte-to-Unicode mapped UTF-8 bytes of each piece.
    /// </summary>
    BytePair,
}
