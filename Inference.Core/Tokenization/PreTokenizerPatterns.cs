using System.Text.RegularExpressions;

namespace Inference.Tokenization;

/// <summary>
/// The pre-tokenizer regexes of GPT-2-style tokenizers, by the name in <c>tokenizer.ggml.pre</c>. A pre-tokenizer is a
/// list of regexes applied one after another, each splitting every piece left by the previous one (see
/// <see cref="SequentialRegexPreTokenizer"/>). The patterns are those of llama.cpp's <c>llm_tokenizer_bpe</c>, which in
/// turn restate the Hugging Face <c>tokenizer.json</c> pre-tokenizers.
/// </summary>
/// <remarks>
/// .NET regexes work on UTF-16 code units, not code points: <c>\p{L}</c> never matches a letter outside the BMP (it
/// falls through to the "other" alternatives instead). Supplementary-plane letters are rare in practice; the
/// supplementary ranges of the deepseek-llm letter class are written as explicit surrogate pairs. <c>$</c> is written
/// <c>\z</c> because .NET's <c>$</c> also matches before a final '\n'.
/// </remarks>
internal static class PreTokenizerPatterns
{
    private const RegexOptions Options = RegexOptions.CultureInvariant | RegexOptions.Compiled;

    private const string Gpt2 =
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private const string Llama3 =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string Qwen2 =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    // NOTE: deepseek-llm's "letters" are a fixed list of cased-letter ranges rather than \p{L}; CJK, Hangul and the
    // block U+0800..U+4E00 are split off separately and digits are split off last, one run at a time.
    private const string DeepSeekLetters =
        @"A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373" +
        @"\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F" +
        @"\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77" +
        @"\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D" +
        @"\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4" +
        @"\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139" +
        @"\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D" +
        @"\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A" +
        @"\uFF41-\uFF5A";

    // U+10400-1044F, U+104B0-104D3, U+104D8-104FB, U+10C80-10CB2, U+10CC0-10CF2, U+118A0-118DF, U+1E900-1E943.
    private const string DeepSeekSupplementaryLetters =
        @"\uD801[\uDC00-\uDC4F\uDCB0-\uDCD3\uDCD8-\uDCFB]|\uD803[\uDC80-\uDCB2\uDCC0-\uDCF2]|\uD806[\uDCA0-\uDCDF]" +
        @"|\uD83A[\uDD00-\uDD43]";

    private static readonly string[] DeepSeekLlm =
    [
        @"[\r\n]",
        @"\s?(?:[" + DeepSeekLetters + "]|" + DeepSeekSupplementaryLetters + ")+",
        @"\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
        @"\s+\z",
        @"[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+",
        @"\p{N}+",
    ];

    /// <summary>Names accepted in <c>tokenizer.ggml.pre</c> for GPT-2-style tokenizers.</summary>
    public static readonly IReadOnlyList<string> SupportedNames = ["gpt-2", "default", "deepseek-llm", "llama3", "llama-bpe", "qwen2"];

    /// <summary>The regex list for <paramref name="name"/>, or null when the name is not supported.</summary>
    /// <remarks>
    /// NOTE: a missing <c>tokenizer.ggml.pre</c> (files written before the key existed) or "default" gets the GPT-2
    /// regex, the pre-tokenizer of the <c>gpt2</c> tokenizer model itself.
    /// </remarks>
    public static Regex[]? ForName(string? name) => name switch
    {
        null or "default" or "gpt-2" => [new Regex(Gpt2, Options)],
        "deepseek-llm" => Array.ConvertAll(DeepSeekLlm, p => new Regex(p, Options)),
        "llama3" or "llama-bpe" => [new Regex(Llama3, Options)],
        "qwen2" => [new Regex(Qwen2, Options)],
        _ => null,
    };
}
