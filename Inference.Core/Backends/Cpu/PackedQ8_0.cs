using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q8_0 weights repacked eight rows at a time so that one <c>vpdpbusd</c> lane belongs to one output row: the eight
/// int32 lanes of a block's products become the eight rows' exact block dot products without a horizontal sum, and the
/// float work (convert, scale, accumulate) is paid once per block for eight rows instead of once per row.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, block i (32 columns):  288 bytes
///    [ d_w of the 8 rows as f32 (32 B) | k = 0..7: rows 0..7 × bytes 4k..4k+3 of the block, each w + 128 (8 × 32 B) ]
///  y[b, 8g + j] = Σ_i (d_w[j]·d_x[b, i]) · (Σ_c (w + 128)·q_x − 128·Σ_c q_x)       (lane j, int32 exact)
/// </code>
/// Rows after the last whole group keep the GGUF layout and go through <see cref="Q8_0Kernel"/>. Every output sees the
/// same operations whatever the batch size, so a request's tokens do not depend on what it is batched with. The f32
/// order differs from ggml's <c>vec_dot_q8_0_q8_0</c> (which converts eight partial lanes per block): about 1e-7
/// relative per product. Needs AVX-VNNI (unsigned × signed bytes without saturation).
/// </remarks>
internal sealed unsafe class PackedQ8_0
{
    /// <summary>Rows per group.</summary>
    public const int GroupRows = 8;
    private const int BlockBytes = 34;
    private const int PackedBlockBytes = 32 + 8 * 32;
    private const int PrefetchDistance = 8 * PackedBlockBytes;

    private readonly byte[] _data;

    private PackedQ8_0(byte[] data, int groups, long groupBytes)
    {
        _data = data;
        Groups = groups;
        GroupBytes = groupBytes;
        Data = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(data));
    }

    /// <summary>Start of group 0 (pinned for the life of this object).</summary>
    public byte* Data { get; }
    /// <summary>Whole groups of eight rows.</summary>
    public int Groups { get; }
    /// <summary>Bytes per group.</summary>
    public long GroupBytes { get; }

    /// <summary>True when this machine runs the packed kernel.</summary>
    public static bool IsSupported => KernelPaths.UsesVnni(KernelPaths.Best);

    /// <summary>Repacks the whole groups of <paramref name="w"/>'s rows; null when it has fewer than eight rows or the copy
    /// would not fit one array.</summary>
    public static PackedQ8_0? Pack(in WeightMatrix w)
    {
        if (w.Type != GgmlType.Q8_0) throw new ArgumentException($"expected Q8_0 weights, got {w.Type}", nameof(w));
        int groups = w.Rows / GroupRows, nb = w.Cols / 32;
        long groupBytes = (long)nb * PackedBlockBytes;
        // NOTE: a copy larger than one .NET array keeps the GGUF layout (and the unpacked kernel).
        if (groups == 0 || groups * groupBytes > Array.MaxLength) return null;
        var data = GC.AllocateUninitializedArray<byte>((int)(groups * groupBytes), pinned: true);
        var packed = new PackedQ8_0(data, groups, groupBytes);
        for (int g = 0; g < groups; g++)
        {
            for (int i = 0; i < nb; i++)
            {
                byte* dst = packed.Data + g * groupBytes + (long)i * PackedBlockBytes;
                for (int j = 0; j < GroupRows; j++)
                {
                    byte* src = w.Data + (8L * g + j) * w.RowBytes + (long)i * BlockBytes;
                    ((float*)dst)[j] = Fp16.ToFloat(*(ushort*)src);
                    // Four-byte group k of row j goes to int 8k + j of the block's quants, each byte + 128.
                    int* groups4 = (int*)(dst + 32);
                    for (int k = 0; k < 8; k++) groups4[8 * k + j] = Unsafe.ReadUnaligned<int>(src + 2 + 4 * k) ^ unchecked((int)0x80808080);
                }
            }
        }
        return packed;
    }

    /// <summary>Computes the outputs of groups [<paramref name="start"/>, <paramref name="end"/>) for every batch row.</summary>
    /// <remarks>Needs <see cref="MatMulArgs.Q"/>, <see cref="MatMulArgs.D"/> and <see cref="MatMulArgs.Sums"/> (−8·Σq per block).</remarks>
    public void Groups4(in MatMulArgs a, int start, int end)
    {
        for (int g = start; g < end; g++)
        {
            byte* group = Data + g * GroupBytes;
            int b = 0;
            for (; b + 4 <= a.Batch; b += 4) Tile<Tile4>(a, group, g, b);
            switch (a.Batch - b)
            {
                case 3: Tile<Tile3>(a, group, g, b); break;
                case 2: Tile<Tile2>(a, group, g, b); break;
                case 1: Tile<Tile1>(a, group, g, b); break;
            }
        }
    }

    private static void Tile<TTile>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile
    {
        int nb = a.Cols / 32, batch = a.Batch;
        // Block i of batch row b + t: quants at q + i·qStep + 32t, scale and −8·Σq at [i·batch + t].
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * PackedBlockBytes;
            // NOTE: as in PackedQ4_K: one batch row leaves the hardware prefetcher alone too few loads in flight.
            if (b == 0)
                for (int line = 0; line < PackedBlockBytes; line += 64) Sse.Prefetch0(blk + PrefetchDistance + line);
            var dw = Vector256.Load((float*)blk);
            byte* wq = blk + 32;
            var w0 = Vector256.Load(wq);
            var w1 = Vector256.Load(wq + 32);
            var w2 = Vector256.Load(wq + 64);
            var w3 = Vector256.Load(wq + 96);
            var w4 = Vector256.Load(wq + 128);
            var w5 = Vector256.Load(wq + 160);
            var w6 = Vector256.Load(wq + 192);
            var w7 = Vector256.Load(wq + 224);
            sbyte* qe = q + i * qStep;
            long e = (long)i * batch;
            y0 = Step(y0, w0, w1, w2, w3, w4, w5, w6, w7, (int*)qe, s[e], dw, d[e]);
            if (TTile.Count > 1) y1 = Step(y1, w0, w1, w2, w3, w4, w5, w6, w7, (int*)(qe + 32), s[e + 1], dw, d[e + 1]);
            if (TTile.Count > 2) y2 = Step(y2, w0, w1, w2, w3, w4, w5, w6, w7, (int*)(qe + 64), s[e + 2], dw, d[e + 2]);
            if (TTile.Count > 3) y3 = Step(y3, w0, w1, w2, w3, w4, w5, w6, w7, (int*)(qe + 96), s[e + 3], dw, d[e + 3]);
        }
        float* y = a.Y + (long)b * a.Rows + 8L * g;
        y0.Store(y);
        if (TTile.Count > 1) y1.Store(y + a.Rows);
        if (TTile.Count > 2) y2.Store(y + 2L * a.Rows);
        if (TTile.Count > 3) y3.Store(y + 3L * a.Rows);
    }

    /// <summary>One block of one batch row against the group's eight rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step(Vector256<float> acc,
        Vector256<byte> w0, Vector256<byte> w1, Vector256<byte> w2, Vector256<byte> w3,
        Vector256<byte> w4, Vector256<byte> w5, Vector256<byte> w6, Vector256<byte> w7,
        int* x, int minus8Sum, Vector256<float> dw, float dx)
    {
        // Two chains of four dependent vpdpbusd each; the first starts at −128·Σq (= 16 · −8·Σq).
        var even = Vector256.Create(minus8Sum * 16);
        var odd = Vector256<int>.Zero;
        even = AvxVnni.MultiplyWideningAndAdd(even, w0, Vector256.Create(x[0]).AsSByte());
        odd = AvxVnni.MultiplyWideningAndAdd(odd, w1, Vector256.Create(x[1]).AsSByte());
        even = AvxVnni.MultiplyWideningAndAdd(even, w2, Vector256.Create(x[2]).AsSByte());
        odd = AvxVnni.MultiplyWideningAndAdd(odd, w3, Vector256.Create(x[3]).AsSByte());
        even = AvxVnni.MultiplyWideningAndAdd(even, w4, Vector256.Create(x[4]).AsSByte());
        odd = AvxVnni.MultiplyWideningAndAdd(odd, w5, Vector256.Create(x[5]).AsSByte());
        even = AvxVnni.MultiplyWideningAndAdd(even, w6, Vector256.Create(x[6]).AsSByte());
        odd = AvxVnni.MultiplyWideningAndAdd(odd, w7, Vector256.Create(x[7]).AsSByte());
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(even + odd), dw * Vector256.Create(dx), acc);
    }
}
