using System.Reflection;
using Inference.Kernels.Attention;
using Inference.Kernels.Layer;

namespace Inference.Kernels;

/// <summary>Every ILGPU kernel of this library with the instantiations the engine uses (for PTX dumps and checks).</summary>
public static class KernelCatalog
{
    /// <summary>All kernels.</summary>
    public static IReadOnlyList<KernelEntry> All { get; } = Build();

    private static KernelEntry[] Build()
    {
        var f32 = new[] { typeof(float), typeof(F32Element) };
        var f16 = new[] { typeof(ILGPU.Half), typeof(F16Element) };
        var q8 = new[] { typeof(byte), typeof(Q8_0Kv) };
        var fp8 = new[] { typeof(byte), typeof(Fp8E4M3Kv) };
        return
        [
            Explicit("paged_decode_partial_f32", typeof(PagedDecodeAttentionKernels), nameof(PagedDecodeAttentionKernels.Partial), f32),
            Explicit("paged_decode_partial_f16", typeof(PagedDecodeAttentionKernels), nameof(PagedDecodeAttentionKernels.Partial), f16),
            Explicit("paged_decode_partial_q8_0", typeof(PagedDecodeAttentionKernels), nameof(PagedDecodeAttentionKernels.Partial), q8),
            Explicit("paged_decode_partial_fp8", typeof(PagedDecodeAttentionKernels), nameof(PagedDecodeAttentionKernels.Partial), fp8),
            Implicit("paged_decode_reduce", typeof(PagedDecodeAttentionKernels), nameof(PagedDecodeAttentionKernels.Reduce)),
            Explicit("paged_prefill_f32", typeof(PagedPrefillAttentionKernels), nameof(PagedPrefillAttentionKernels.Prefill), f32),
            Explicit("paged_prefill_f16", typeof(PagedPrefillAttentionKernels), nameof(PagedPrefillAttentionKernels.Prefill), f16),
            Explicit("paged_prefill_q8_0", typeof(PagedPrefillAttentionKernels), nameof(PagedPrefillAttentionKernels.Prefill), q8),
            Explicit("paged_prefill_fp8", typeof(PagedPrefillAttentionKernels), nameof(PagedPrefillAttentionKernels.Prefill), fp8),
            Explicit("rms_norm", typeof(RmsNormKernels), nameof(RmsNormKernels.RmsNorm)),
            Implicit("rope", typeof(RopeKernels), nameof(RopeKernels.Rope)),
            Implicit("rope_table", typeof(RopeKernels), nameof(RopeKernels.RopeTable)),
            Implicit("add", typeof(ElementwiseKernels), nameof(ElementwiseKernels.Add)),
            Implicit("add_bias", typeof(ElementwiseKernels), nameof(ElementwiseKernels.AddBias)),
            Implicit("gather_rows", typeof(ElementwiseKernels), nameof(ElementwiseKernels.GatherRows)),
            Implicit("kv_write_f32", typeof(KvCacheKernels), nameof(KvCacheKernels.WriteF32)),
            Implicit("kv_write_f16", typeof(KvCacheKernels), nameof(KvCacheKernels.WriteF16)),
            Implicit("kv_write_q8_0", typeof(KvCacheKernels), nameof(KvCacheKernels.WriteBlocks), [typeof(Q8_0Kv)]),
            Implicit("kv_write_fp8", typeof(KvCacheKernels), nameof(KvCacheKernels.WriteBlocks), [typeof(Fp8E4M3Kv)]),
            Implicit("swiglu", typeof(SwiGluKernels), nameof(SwiGluKernels.SwiGlu)),
            Explicit("matmul_f32", typeof(MatMulKernels), nameof(MatMulKernels.MatMulF32)),
            Explicit("matmul_f16", typeof(MatMulKernels), nameof(MatMulKernels.MatMulF16)),
            Explicit("matmul_q8_0", typeof(MatMulKernels), nameof(MatMulKernels.MatMulQ8_0)),
            Explicit("matmul_simple_f32", typeof(MatMulKernels), nameof(MatMulKernels.MatMul), f32),
            Explicit("matmul_simple_f16", typeof(MatMulKernels), nameof(MatMulKernels.MatMul), f16),
            Explicit("matmul_simple_q8_0", typeof(MatMulKernels), nameof(MatMulKernels.MatMulQ8_0Simple)),
            Implicit("embedding_f32", typeof(EmbeddingKernels), nameof(EmbeddingKernels.Gather), f32),
            Implicit("embedding_f16", typeof(EmbeddingKernels), nameof(EmbeddingKernels.Gather), f16),
            Implicit("embedding_q8_0", typeof(EmbeddingKernels), nameof(EmbeddingKernels.GatherQ8_0)),
            Explicit("argmax", typeof(SelectionKernels), nameof(SelectionKernels.ArgMax)),
            Explicit("topk", typeof(SelectionKernels), nameof(SelectionKernels.TopK)),
            Explicit("sample", typeof(SamplingKernels), nameof(SamplingKernels.Sample)),
            Implicit("sample_penalties", typeof(SamplingKernels), nameof(SamplingKernels.ApplyPenalties)),
            Implicit("moe_route", typeof(ExpertKernels), nameof(ExpertKernels.Route)),
            Implicit("moe_combine", typeof(ExpertKernels), nameof(ExpertKernels.Combine)),
            Implicit("moe_add_sigmoid_gated", typeof(ExpertKernels), nameof(ExpertKernels.AddSigmoidGated)),
            .. Dequantizers(),
            Explicit("add_rms_norm", typeof(RmsNormKernels), nameof(RmsNormKernels.AddRmsNorm)),
            Implicit("rope_kv_write_f32", typeof(RopeKvKernels), nameof(RopeKvKernels.WriteF32)),
            Implicit("rope_kv_write_f16", typeof(RopeKvKernels), nameof(RopeKvKernels.WriteF16)),
            Explicit("matmul_glu_silu_f32", typeof(MatMulKernels), nameof(MatMulKernels.GluF32), [typeof(SiluGlu)]),
            Explicit("matmul_glu_silu_f16", typeof(MatMulKernels), nameof(MatMulKernels.GluF16), [typeof(SiluGlu)]),
            Explicit("matmul_glu_gelu_f16", typeof(MatMulKernels), nameof(MatMulKernels.GluF16), [typeof(GeluTanhGlu)]),
            Explicit("matmul_glu_silu_q8_0", typeof(MatMulKernels), nameof(MatMulKernels.GluQ8_0), [typeof(SiluGlu)]),
            Explicit("matmul_glu_silu_q4_k", typeof(MatMulKernels), nameof(MatMulKernels.GluBlocks), [typeof(MatMulKernels.Q4_KBlock), typeof(SiluGlu)]),
            Explicit("matmul_glu_gelu_q6_k", typeof(MatMulKernels), nameof(MatMulKernels.GluBlocks), [typeof(MatMulKernels.Q6_KBlock), typeof(GeluTanhGlu)]),
        ];
    }

    /// <summary>The f16 dequantizers of the quantized tensor-core path: Q8_0 and every kept block type.</summary>
    private static IEnumerable<KernelEntry> Dequantizers()
    {
        Type[] blocks =
        [
            typeof(MatMulKernels.Q8_0Block), typeof(MatMulKernels.Q4_0Block), typeof(MatMulKernels.Q4_1Block), typeof(MatMulKernels.Q5_0Block),
            typeof(MatMulKernels.Q5_1Block), typeof(MatMulKernels.IQ4_NLBlock), typeof(MatMulKernels.Q2_KBlock), typeof(MatMulKernels.Q3_KBlock),
            typeof(MatMulKernels.Q4_KBlock), typeof(MatMulKernels.Q5_KBlock), typeof(MatMulKernels.Q6_KBlock), typeof(MatMulKernels.IQ4_XSBlock),
        ];
        foreach (var block in blocks)
            yield return Implicit($"dequantize_f16_{block.Name[..^"Block".Length].ToLowerInvariant()}", typeof(MatMulKernels), nameof(MatMulKernels.DequantizeToHalf), [block]);
    }

    private static KernelEntry Explicit(string name, Type type, string method, Type[]? generic = null) =>
        new(name, Resolve(type, method, generic), KernelGrouping.Explicit);

    private static KernelEntry Implicit(string name, Type type, string method, Type[]? generic = null) =>
        new(name, Resolve(type, method, generic), KernelGrouping.Implicit);

    private static MethodInfo Resolve(Type type, string name, Type[]? generic)
    {
        // NOTE: the block-type row kernels are internal (their block structs are); the rest are public.
        var m = type.GetMethod(name, BindingFlags.Public | BindingFlags.Static) ?? type.GetMethod(name, BindingFlags.NonPublic | BindingFlags.Static)
            ?? throw new InvalidOperationException($"{type.Name}.{name} not found");
        return generic is null ? m : m.MakeGenericMethod(generic);
    }
}
