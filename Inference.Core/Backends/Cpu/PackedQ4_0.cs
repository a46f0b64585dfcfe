using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q4_0 weights repacked eight rows at a time as <see cref="PackedQ8_0"/> does: each 32-byte load holds four code
/// bytes (eight 4-bit codes) of each of the eight rows, the int32 lanes of a block's products are the eight rows' exact
/// block dot products, and the float work is paid once per block for eight rows.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, block i (32 columns):  144 bytes, as many as the eight GGUF blocks
///    [ d_w of the 8 rows as f16 (16 B) | k = 0..3: rows 0..7 × GGUF bytes qs[4k … 4k+3] (32 B per k) ]
///    low nibbles: columns 4k … 4k+3, high nibbles: columns 16 + 4k … 16 + 4k + 3
///  y[b, 8g + j] = Σ_i (d_w[j]·d_x[b, i]) · (Σ_c q·q_x − 8·Σ_c q_x)       (lane j, int32 exact; codes 0..15 unsigned)
/// </code>
/// The activations are those of <see cref="PackedQ8_0"/> (Q8_0 blocks with −8·Σq precomputed), the integer sums those of
/// <see cref="Q4_0Kernel"/> (ggml's <c>vec_dot_q4_0_q8_0</c>); the f32 order is <see cref="PackedQ8_0"/>'s. Rows after
/// the last whole group keep the GGUF layout and go through <see cref="Q4_0Kernel"/>. Every output sees the same
/// operations whatever the batch size. Runs with AVX-VNNI or on AVX2 alone (<see cref="TileMadd{TTile}"/>), with the same
/// integer sums and so the same bits.
/// </remarks>
internal readonly unsafe struct PackedQ4_0 : IPackedKernel
{
    private const int GroupRows = PackedWeights.GroupRows;
    private const int BlockBytes = 18;
    private const int ScalesBytes = 16;
    private const int PackedBlock = ScalesBytes + 4 * 32;
    private const int PrefetchDistance = 16 * PackedBlock;

    public static GgmlType Type => GgmlType.Q4_0;

    public static int PackedBlockBytes => PackedBlock;

    public static int ActivationBlock => 32;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q4_0Kernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int i)
    {
        for (int j = 0; j < GroupRows; j++)
        {
            byte* src = w.Data + (8L * g + j) * w.RowBytes + (long)i * BlockBytes;
            ((ushort*)dst)[j] = *(ushort*)src;
            for (int k = 0; k < 4; k++) *(uint*)(dst + ScalesBytes + 32 * k + 4 * j) = *(uint*)(src + 2 + 4 * k);
        }
    }

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa
    {
        if (!TIsa.Vnni)
        {
            TileMadd<TTile>(a, group, g, b);
            return;
        }
        int nb = a.Cols / 32, batch = a.Batch;
        // Block i of batch row b + t: quants at q + i·qStep + 32t, scale and −8·Σq at [i·batch + t].
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * PackedBlock;
            // NOTE: as in PackedQ8_0; three lines from the block ahead cover it with the next block's three.
            if (b == 0) PackedSteps.PrefetchLines(blk + PrefetchDistance, 3);
            var dw = PackedSteps.RowScales(blk);
            byte* wq = blk + ScalesBytes;
            Codes(wq, nibble, out var l0, out var h0);
            Codes(wq + 32, nibble, out var l1, out var h1);
            Codes(wq + 64, nibble, out var l2, out var h2);
            Codes(wq + 96, nibble, out var l3, out var h3);
            sbyte* qe = q + i * qStep;
            long e = (long)i * batch;
            y0 = Step<TIsa>(y0, l0, h0, l1, h1, l2, h2, l3, h3, qe, s[e], dw, d[e]);
            if (TTile.Count > 1) y1 = Step<TIsa>(y1, l0, h0, l1, h1, l2, h2, l3, h3, qe + 32, s[e + 1], dw, d[e + 1]);
            if (TTile.Count > 2) y2 = Step<TIsa>(y2, l0, h0, l1, h1, l2, h2, l3, h3, qe + 64, s[e + 2], dw, d[e + 2]);
            if (TTile.Count > 3) y3 = Step<TIsa>(y3, l0, h0, l1, h1, l2, h2, l3, h3, qe + 96, s[e + 3], dw, d[e + 3]);
        }
        PackedSteps.StoreTile<TTile>(a, g, b, y0, y1, y2, y3);
    }

    /// <summary>
    /// <see cref="Tile{TTile, TIsa}"/> without VNNI: the <c>vpmaddubsw</c> pair products of a block's eight code vectors
    /// summed as shorts (at most 8 · 2 · 15 · 127 = 30,480, no overflow), then one <c>vpmaddwd</c> against ones: the
    /// same exact block sums, scaled by the same f32 operations, so the same bits.
    /// </summary>
    private static void TileMadd<TTile>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile
    {
        int nb = a.Cols / 32, batch = a.Batch;
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        var nibble = Vector256.Create((byte)0x0F);
        var ones = Vector256.Create((short)1);
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * PackedBlock;
            if (b == 0) PackedSteps.PrefetchLines(blk + PrefetchDistance, 3);
            var dw = PackedSteps.RowScales(blk);
            byte* wq = blk + ScalesBytes;
            sbyte* qe = q + i * qStep;
            Vector256<short> p0 = default, p1 = default, p2 = default, p3 = default;
            // NOTE: written out rather than looped (as in PackedQ4_K).
            MaddStep<TTile>(wq, qe, nibble, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 32, qe + 4, nibble, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 64, qe + 8, nibble, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 96, qe + 12, nibble, ref p0, ref p1, ref p2, ref p3);
            long e = (long)i * batch;
            y0 = PackedSteps.ScaleBlock(y0, Avx2.MultiplyAddAdjacent(p0, ones) + Vector256.Create(s[e]), dw, d[e]);
            if (TTile.Count > 1) y1 = PackedSteps.ScaleBlock(y1, Avx2.MultiplyAddAdjacent(p1, ones) + Vector256.Create(s[e + 1]), dw, d[e + 1]);
            if (TTile.Count > 2) y2 = PackedSteps.ScaleBlock(y2, Avx2.MultiplyAddAdjacent(p2, ones) + Vector256.Create(s[e + 2]), dw, d[e + 2]);
            if (TTile.Count > 3) y3 = PackedSteps.ScaleBlock(y3, Avx2.MultiplyAddAdjacent(p3, ones) + Vector256.Create(s[e + 3]), dw, d[e + 3]);
        }
        PackedSteps.StoreTile<TTile>(a, g, b, y0, y1, y2, y3);
    }

    /// <summary>One step of <see cref="TileMadd{TTile}"/>: code bytes 4k … 4k+3 of the eight rows (columns 4k … 4k+3 and
    /// 16 + 4k … 16 + 4k + 3) against up to four batch rows' activations (32 bytes apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddStep<TTile>(byte* wq, sbyte* xk, Vector256<byte> nibble,
        ref Vector256<short> p0, ref Vector256<short> p1, ref Vector256<short> p2, ref Vector256<short> p3) where TTile : IBatchTile
    {
        Codes(wq, nibble, out var lo, out var hi);
        p0 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 16));
        if (TTile.Count > 1)
            p1 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 32)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 48));
        if (TTile.Count > 2)
            p2 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 64)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 80));
        if (TTile.Count > 3)
            p3 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 96)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 112));
    }

    /// <summary>The low and high nibbles of one step's 32 code bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Codes(byte* wq, Vector256<byte> nibble, out Vector256<byte> lo, out Vector256<byte> hi)
    {
        var v = Vector256.Load(wq);
        lo = v & nibble;
        hi = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble;
    }

    /// <summary>One block of one batch row with the VNNI steps: two chains of four, the first starting at −8·Σq.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TIsa>(Vector256<float> acc,
        Vector256<byte> l0, Vector256<byte> h0, Vector256<byte> l1, Vector256<byte> h1,
        Vector256<byte> l2, Vector256<byte> h2, Vector256<byte> l3, Vector256<byte> h3,
        sbyte* x, int minus8Sum, Vector256<float> dw, float dx) where TIsa : IIntegerIsa
    {
        var lo = Vector256.Create(minus8Sum);
        var hi = Vector256<int>.Zero;
        lo = TIsa.Dot(lo, l0, PackedSteps.Broadcast(x));
        hi = TIsa.Dot(hi, h0, PackedSteps.Broadcast(x + 16));
        lo = TIsa.Dot(lo, l1, PackedSteps.Broadcast(x + 4));
        hi = TIsa.Dot(hi, h1, PackedSteps.Broadcast(x + 20));
        lo = TIsa.Dot(lo, l2, PackedSteps.Broadcast(x + 8));
        hi = TIsa.Dot(hi, h2, PackedSteps.Broadcast(x + 24));
        lo = TIsa.Dot(lo, l3, PackedSteps.Broadcast(x + 12));
        hi = TIsa.Dot(hi, h3, PackedSteps.Broadcast(x + 28));
        return PackedSteps.ScaleBlock(acc, lo + hi, dw, dx);
    }
}
