using System.Text;
using Inference.Loading;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>
/// Plain, slow reference encoders written straight from the algorithm descriptions, to compare the real encoders
/// against on random text. Quadratic on purpose: no queues, no caches.
/// </summary>
public static class ReferenceTokenizers
{
    /// <summary>
    /// A SentencePiece BPE encoder for the vocabulary of <paramref name="gguf"/>: split into characters; while some adjacent pair forms a piece, merge the pair whose piece has
    /// the highest score (the leftmost among equals); emit pieces, or the byte tokens of what is not a piece.
    /// </summary>
    public static Func<string, int[]> SentencePiece(GgufFile gguf)
    {
        string[] tokens = gguf.GetArray<string>("tokenizer.ggml.tokens")!;
        float[] scores = gguf.GetArray<float>("tokenizer.ggml.scores")!;
        int[] types = gguf.GetIntArray("tokenizer.ggml.token_type")!;
        var pieces = new Dictionary<string, int>();
        var all = new Dictionary<string, int>();
        for (int i = 0; i < tokens.Length; i++)
        {
            all[tokens[i]] = i;
            if (types[i] is 1 or 4) pieces[tokens[i]] = i;
        }
        return text => SentencePiece(pieces, all, scores, text);
    }

    private static int[] SentencePiece(Dictionary<string, int> pieces, Dictionary<string, int> all, float[] scores, string text)
    {
        if (text.Length == 0) return [];

        var symbols = ("▁" + text.Replace(' ', '▁')).EnumerateRunes().Select(r => r.ToString()).ToList();
        while (true)
        {
            int best = -1;
            float bestScore = float.NegativeInfinity;
            for (int i = 0; i + 1 < symbols.Count; i++)
                if (pieces.TryGetValue(symbols[i] + symbols[i + 1], out int id) && scores[id] > bestScore)
                    (best, bestScore) = (i, scores[id]);
            if (best < 0) break;
            symbols[best] += symbols[best + 1];
            symbols.RemoveAt(best + 1);
        }

        var ids = new List<int>();
        foreach (var s in symbols)
        {
            if (pieces.TryGetValue(s, out int id)) ids.Add(id);
            else foreach (byte b in Encoding.UTF8.GetBytes(s)) ids.Add(all[$"<0x{b:X2}>"]);
        }
        return ids.ToArray();
    }

    /// <summary>
    /// A byte-level BPE encoder for the vocabulary of <paramref name="gguf"/>: for each pre-tokenizer piece, map its UTF-8 bytes to characters; while some adjacent pair is a
    /// merge, merge the lowest-ranked pair (leftmost occurrence); look the symbols up in the vocabulary.
    /// </summary>
    public static Func<string, int[]> BytePair(GgufFile gguf)
    {
        string[] tokens = gguf.GetArray<string>("tokenizer.ggml.tokens")!;
        string[] merges = gguf.GetArray<string>("tokenizer.ggml.merges")!;
        var vocab = new Dictionary<string, int>();
        for (int i = 0; i < tokens.Length; i++) vocab[tokens[i]] = i;
        var ranks = new Dictionary<string, int>();
        for (int i = 0; i < merges.Length; i++) ranks.TryAdd(merges[i], i);

        var splitter = new SequentialRegexPreTokenizer(PreTokenizerPatterns.ForName(gguf.GetString("tokenizer.ggml.pre"))!);
        return text => BytePair(vocab, ranks, splitter, text);
    }

    private static int[] BytePair(Dictionary<string, int> vocab, Dictionary<string, int> ranks, SequentialRegexPreTokenizer splitter, string text)
    {
        var ids = new List<int>();
        foreach (var (offset, length) in splitter.Split(text))
        {
            var symbols = Encoding.UTF8.GetBytes(text.Substring(offset, length)).Select(b => ByteLevelMapping.ToChar(b).ToString()).ToList();
            while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (ranks.TryGetValue(symbols[i] + " " + symbols[i + 1], out int rank) && rank < bestRank)
                        (best, bestRank) = (i, rank);
                if (best < 0) break;
                symbols[best] += symbols[best + 1];
                symbols.RemoveAt(best + 1);
            }
            foreach (var s in symbols) ids.Add(vocab[s]);
        }
        return ids.ToArray();
    }

    /// <summary>Random text over letters, digits, whitespace, punctuation, accents, CJK, Cyrillic and emoji.</summary>
    public static string RandomText(Random random, int maxLength)
    {
        string[] alphabet =
        [
            "a", "e", "t", "s", "n", "H", "W", "x", "Q", " ", " ", " ", "  ", "\n", "\t", "0", "1", "7", "42", "'s", "'ll",
            "!", "?", ".", ",", "-", "=", "(", ")", "\"", "é", "ß", "Ä", "日", "本", "語", "и", "Ж", "😀", "🦙", "…", "€",
            "the", "ing", " and", "Hello", " world",
        ];
        var sb = new StringBuilder();
        int count = random.Next(maxLength + 1);
        for (int i = 0; i < count; i++) sb.Append(alphabet[random.Next(alphabet.Length)]);
        return sb.ToString();
    }
}
