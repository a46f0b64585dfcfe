using System.IO.Hashing;
using System.Text;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;

namespace Inference.Engine;

/// <summary>
/// What a cached KV block depends on besides its tokens, in four parts so a mismatch can be named: the model (its
/// configuration and a sample of its weights), the tokenizer, the RoPE configuration and the KV element type and block
/// size. <see cref="Salt"/> combines them; block hashes chain from it.
/// </summary>
internal sealed record PrefixIdentity(ulong Model, ulong Tokenizer, ulong Rope, ulong Kv)
{
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

    public static PrefixIdentity Compute(GgufFile gguf, ModelConfig config, KvCacheOptions kv)
    {
        var model = new XxHash64();
        var withoutRope = config with { RopeBase = 0, RopeDim = 0, RopeScalingFactor = 0 };
        model.Append(Encoding.UTF8.GetBytes(withoutRope.ToString()));
        foreach (var name in new[] { "token_embd.weight", "output_norm.weight", $"blk.{config.LayerCount - 1}.attn_q.weight", $"blk.{config.LayerCount - 1}.ffn_down.weight" })
        {
            if (gguf.FindTensor(name) is not { } t) continue;
            model.Append(gguf.GetTensorBytes(t with { ByteCount = Math.Min(t.ByteCount, 1 << 16) }));
        }

        var tokenizer = new XxHash64();
        foreach (var token in gguf.GetArray<string>("tokenizer.ggml.tokens") ?? [])
        {
            tokenizer.Append(Encoding.UTF8.GetBytes(token));
            tokenizer.Append([0]);
        }
        tokenizer.Append(Encoding.UTF8.GetBytes(gguf.GetString("tokenizer.ggml.model") ?? ""));

        ulong rope = XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(
            $"{config.RopeLayout}/{config.RopeBase:R}/{config.RopeDim}/{config.RopeScaling}/{config.RopeScalingFactor:R}"));
        ulong kvHash = XxHash64.HashToUInt64(Encoding.UTF8.GetBytes($"{kv.DataType}/{kv.BlockSize}"));
        return new PrefixIdentity(model.GetCurrentHashAsUInt64(), tokenizer.GetCurrentHashAsUInt64(), rope, kvHash);
    }
}
