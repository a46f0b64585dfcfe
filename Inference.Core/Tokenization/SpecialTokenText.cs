namespace Inference.Tokenization;

/// <summary>How <see cref="ModelTokenizer.Encode(string, bool, SpecialTokenText)"/> treats the texts of special tokens.</summary>
public enum SpecialTokenText
{
    /// <summary>
    /// Texts such as "&lt;s&gt;" or "&lt;|im_start|&gt;" are ordinary text and tokenized like any other (llama.cpp's
    /// <c>parse_special = false</c>). Use this for user input, so it cannot inject control tokens.
    /// </summary>
    Literal,

    /// <summary>
    /// Texts of control tokens become those tokens (llama.cpp's <c>parse_special = true</c>). Use this for text the
    /// application builds itself, such as a rendered chat template.
    /// </summary>
    Token,
}
