using System.Text;

namespace Inference.Tests.Tokenization;

/// <summary>Writes small vocabulary-only GGUF files (version 3, no tensors) for tokenizer tests.</summary>
public sealed class GgufVocabularyWriter
{
    private readonly List<(string Key, uint Type, Action<BinaryWriter> Value)> _entries = [];

    public GgufVocabularyWriter Add(string key, string value) => Add(key, 8, w => WriteString(w, value));
    public GgufVocabularyWriter Add(string key, uint value) => Add(key, 4, w => w.Write(value));
    public GgufVocabularyWriter Add(string key, bool value) => Add(key, 7, w => w.Write((byte)(value ? 1 : 0)));
    public GgufVocabularyWriter Add(string key, string[] values) => AddArray(key, 8, values.Length, w => { foreach (var v in values) WriteString(w, v); });
    public GgufVocabularyWriter Add(string key, float[] values) => AddArray(key, 6, values.Length, w => { foreach (var v in values) w.Write(v); });
    public GgufVocabularyWriter Add(string key, int[] values) => AddArray(key, 5, values.Length, w => { foreach (var v in values) w.Write(v); });

    /// <summary>Drops every entry with this key.</summary>
    public GgufVocabularyWriter Remove(string key)
    {
        _entries.RemoveAll(e => e.Key == key);
        return this;
    }

    /// <summary>Replaces (or adds) an entry.</summary>
    public GgufVocabularyWriter Set(string key, Func<GgufVocabularyWriter, GgufVocabularyWriter> add)
    {
        Remove(key);
        return add(this);
    }

    public string WriteTo(string directory, string name = "vocab.gguf")
    {
        string path = Path.Combine(directory, name);
        using var stream = File.Create(path);
        using var w = new BinaryWriter(stream, Encoding.UTF8);
        w.Write(0x46554747u); // "GGUF"
        w.Write(3u);
        w.Write(0ul);         // tensors
        w.Write((ulong)_entries.Count);
        foreach (var (key, type, value) in _entries)
        {
            WriteString(w, key);
            w.Write(type);
            value(w);
        }
        return path;
    }

    private GgufVocabularyWriter Add(string key, uint type, Action<BinaryWriter> value)
    {
        _entries.Add((key, type, value));
        return this;
    }

    private GgufVocabularyWriter AddArray(string key, uint elementType, int count, Action<BinaryWriter> values) =>
        Add(key, 9, w =>
        {
            w.Write(elementType);
            w.Write((ulong)count);
            values(w);
        });

    private static void WriteString(BinaryWriter w, string s)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    /// <summary>
    /// A small SentencePiece vocabulary: &lt;unk&gt; &lt;s&gt; &lt;/s&gt;, the 256 byte tokens (ids 3..258), then
    /// <paramref name="pieces"/> as normal tokens with their scores.
    /// </summary>
    public static GgufVocabularyWriter SentencePiece(params (string Piece, float Score)[] pieces)
    {
        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var scores = new List<float> { 0, 0, 0 };
        var types = new List<int> { 2, 3, 3 };
        for (int b = 0; b < 256; b++)
        {
            tokens.Add($"<0x{b:X2}>");
            scores.Add(0);
            types.Add(6);
        }
        foreach (var (piece, score) in pieces)
        {
            tokens.Add(piece);
            scores.Add(score);
            types.Add(1);
        }
        return new GgufVocabularyWriter()
            .Add("general.architecture", "llama")
            .Add("tokenizer.ggml.model", "llama")
            .Add("tokenizer.ggml.tokens", tokens.ToArray())
            .Add("tokenizer.ggml.scores", scores.ToArray())
            .Add("tokenizer.ggml.token_type", types.ToArray())
            .Add("tokenizer.ggml.bos_token_id", 1u)
            .Add("tokenizer.ggml.eos_token_id", 2u)
            .Add("tokenizer.ggml.unknown_token_id", 0u);
    }
}
