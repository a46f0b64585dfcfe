namespace Inference.Tokenization;

/// <summary>Token types as stored in the GGUF array <c>tokenizer.ggml.token_type</c> (llama.cpp codes).</summary>
internal enum TokenType
{
    /// <summary>Not specified (treated as normal).</summary>
    Undefined = 0,
    /// <summary>A regular piece of text.</summary>
    Normal = 1,
    /// <summary>The unknown token.</summary>
    Unknown = 2,
    /// <summary>A control token such as BOS or EOS; it never stands for text.</summary>
    Control = 3,
    /// <summary>A piece matched whole in the input text before the BPE merges run.</summary>
    UserDefined = 4,
    /// <summary>A reserved slot that is never produced.</summary>
    Unused = 5,
    /// <summary>A byte fallback token <c>&lt;0xNN&gt;</c>.</summary>
    Byte = 6,
}
