using System.IO.Hashing;
using System.Text;
using Inference.KvCache;
using Inference.Tokenization;
using Inference.Models;

namespace Inference.Engine;

/// <summary>
/// What a cached KV block depends on besides its tokens, in four parts so a mismatch can be named: the model (its
/// configuration and a sample of its weights), the tokenizer, the RoPE configuration and the KV element type and block
/// size. <see cref="Salt"/> combines them; block hashes chain from it.
/// </summary>
internal sealed record PrefixIdentity(ulong Model, ulong Tokenizer, ulong Rope, ulong Kv)
{
    /// <summary>
    /// A hash of every weight's bytes (<see cref="LlamaModel.HashWeights"/>), computed on first use (the first prefix
    /// file saved or loaded) and kept; prefix files carry it so a fine-tune with the same shapes is refused. Null: not
    /// known (then a file's weights hash is not checked).
    /// </summary>
    public Lazy<UInt128>? Weights { get; init; }

    /// <summary>Computes <see cref="Weights"/> through its cache; null when <see cref="Weights"/> is.</summary>
    public WeightHashCache? WeightsCache { get; init; }

    /// <summary>The block-hash salt.</summary>
    public long Salt
    {
        get
        {
            Span<byte> bytes = stackalloc byte[32];
            BitConverter.TryWriteBytes(bytes, Model);
            BitConverter.TryWriteBytes(bytes[8..], Tokenizer);
            BitConverter.TryWriteBytes(bytes[16..], Rope);
            BitConverter.TryWriteBytes(bytes[24..], Kv);
            return (long)XxHash64.HashToUInt64(bytes);
        }
    }

    public static PrefixIdentity Compute(LlamaModel model, ModelTokenizer tokenizer, KvCacheOptions kv, WeightHashCache? weightsCache = null)
    {
        var config = model.Config;
        var modelHash = new XxHash64();
        var withoutRope = config with { RopeBase = 0, RopeDim = 0, RopeScalingFactor = 0 };
        modelHash.Append(Encoding.UTF8.GetBytes(withoutRope.ToString()));
        model.AppendWeightSample(modelHash);

        var tokenizerHash = new XxHash64();
        tokenizerHash.Append(Encoding.UTF8.GetBytes(tokenizer.Kind.ToString()));
        for (int i = 0; i < tokenizer.VocabularySize; i++)
        {
            tokenizerHash.Append(tokenizer.GetTokenBytes(i));
            tokenizerHash.Append([0]);
        }

        ulong rope = XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(
            $"{config.RopeLayout}/{config.RopeBase:R}/{config.RopeDim}/{config.RopeScaling}/{config.RopeScalingFactor:R}"));
        ulong kvHash = XxHash64.HashToUInt64(Encoding.UTF8.GetBytes($"{kv.DataType}/{kv.BlockSize}"));
        return new PrefixIdentity(modelHash.GetCurrentHashAsUInt64(), tokenizerHash.GetCurrentHashAsUInt64(), rope, kvHash)
        {
            Weights = weightsCache is null ? new Lazy<UInt128>(model.HashWeights) : new Lazy<UInt128>(weightsCache.GetHash),
            WeightsCache = weightsCache,
        };
    }
}
