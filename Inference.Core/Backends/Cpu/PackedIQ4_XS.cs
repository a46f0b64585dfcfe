using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// IQ4_XS weights repacked eight rows at a time so that one int32 lane belongs to one output row (as
/// <see cref="PackedQ4_K"/>): the lanes of a sub-block's products are the eight rows' exact sub-block dot products, and
/// the scales and float work are applied once per sub-block or super-block for eight rows instead of once per row.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, super-block s (256 columns):  1184 bytes
///    [   0,   32)  d of the 8 rows as f32
///    [  32,  160)  sub-block j = 0..7: rows 0..7 × (ls − 32, ls − 32), each row's signed scale twice (16 B per j),
///                  so one vpmovsxbw gives the short pairs (sc, sc) of every row lane
///    [ 160, 1184)  sub-block j = 0..7, k = 0..3: rows 0..7 × GGUF bytes qs[16j + 4k … 16j + 4k + 3]   (32 B per k)
///                  low nibbles: elements 32j + 4k … +3, high nibbles: elements 32j + 16 + 4k … +3 (both sub-block j)
///
///  lane r of y[b, 8g + r] += d_r·d_x·Σ_j sc_r,j·Σ_c T[q]·q_x         (int32, exact; T = ggml's kvalues_iq4nl)
/// </code>
/// <para>The table values are signed (−127 … 113), and so are the Q8_K activations (|q_x| ≤ 127). Without VNNI the
/// magnitudes |T[q]| (one <c>vpshufb</c>) go into <c>vpmaddubsw</c> unsigned, the signs of T[q] move onto the
/// activations (<c>vpsignb</c>), and each step's pair sums (at most 2 · 127 · 127 = 32,258 in size, no saturation) are
/// widened at once by <c>vpmaddwd</c> against the scale pairs. With VNNI the codes look up T[q] + 128 (1 … 241,
/// unsigned) for <c>vpdpbusd</c>, which sums exactly in int32, and the offset comes back as 128·Σ_j sc_j·(bsums[2j] +
/// bsums[2j + 1]) from the Q8_K bsums. Both are the exact integer sums of <see cref="IQ4_XSKernel"/> (ggml's
/// <c>vec_dot_iq4_xs_q8_K</c>), so the two paths give the same bits, and the results differ from the unpacked kernel
/// by f32 rounding only (it scales each super-block of a row separately and sums eight lanes at the end).</para>
/// <para>Rows after the last whole group keep the GGUF layout and go through <see cref="IQ4_XSKernel"/>. Every output
/// sees the same operations whatever the batch size, so a request's tokens do not depend on what it is batched with.</para>
/// </remarks>
internal readonly unsafe struct PackedIQ4_XS : IPackedKernel
{
    private const int GroupRows = PackedWeights.GroupRows;
    private const int BlockBytes = 136;
    private const int ScalesOffset = 32;
    private const int CodesOffset = ScalesOffset + 16 * 8;
    private const int PackedBlock = CodesOffset + 8 * 128;
    private const int PrefetchDistance = 4 * PackedBlock;

    /// <summary>Cache lines asked for per pair of sub-blocks (four pairs cover a packed block: 4 · 5 · 64 ≥ 1184).</summary>
    private const int PrefetchLinesPerPair = 5;

    public static GgmlType Type => GgmlType.IQ4_XS;

    public static int PackedBlockBytes => PackedBlock;

    public static int ActivationBlock => 256;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<IQ4_XSKernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int s)
    {
        for (int r = 0; r < GroupRows; r++)
        {
            byte* src = w.Data + (8L * g + r) * w.RowBytes + (long)s * BlockBytes;
            var block = new ReadOnlySpan<byte>(src, BlockBytes);
            ((float*)dst)[r] = Fp16.ToFloat(*(ushort*)src);
            for (int j = 0; j < 8; j++)
            {
                byte sc = (byte)(sbyte)(Dequantize.IQ4_XSScale(block, j) - 32);
                dst[ScalesOffset + 16 * j + 2 * r] = sc;
                dst[ScalesOffset + 16 * j + 2 * r + 1] = sc;
                for (int k = 0; k < 4; k++)
                    *(uint*)(dst + CodesOffset + 128 * j + 32 * k + 4 * r) = *(uint*)(src + 8 + 16 * j + 4 * k);
            }
        }
    }

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa
    {
        int nsb = a.Cols / 256, batch = a.Batch;
        // Super-block s of batch row b + t: quants at q + s·qStep + 256t, scale at d[s·batch + t],
        // sums at bsums + s·bsStep + 16t.
        sbyte* q = a.Q + 256L * b;
        float* dx = a.D + b;
        short* bsums = a.BSums + 16L * b;
        long qStep = 256L * batch, bsStep = 16L * batch;
        // NOTE: the row sums accumulate in y itself (these eight outputs belong to this group alone), as in PackedQ4_K.
        float* y = a.Y + (long)b * a.Rows + 8L * g;
        for (int t = 0; t < TTile.Count; t++) Vector256<float>.Zero.Store(y + (long)t * a.Rows);
        // Batch 1 asks for lines far ahead where the weights stream from memory (as in PackedQ4_K).
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int s = 0; s < nsb; s++)
        {
            byte* blk = group + (long)s * PackedBlock;
            sbyte* qs = q + s * qStep;
            float* ds = dx + (long)s * batch;

            // Σ_j sc_j·Σ_c T[q]·q_x per row (with VNNI: Σ_j sc_j·Σ_c (T[q] + 128)·q_x).
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int i = 0; i < 4; i++)
            {
                // NOTE: as in PackedQ4_K, batch 1 asks for the lines a few super-blocks ahead (the hardware prefetcher
                // alone leaves one batch row's loads short of the core's bandwidth), a quarter of them per pair of sub-blocks.
                if (b == 0) PackedSteps.PrefetchLines(blk + PrefetchDistance + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                if (far) PackedSteps.PrefetchFar(blk + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                byte* codes = blk + CodesOffset + 256 * i;
                sbyte* scales = (sbyte*)blk + ScalesOffset + 32 * i;
                sbyte* x = qs + 64 * i;
                if (!TIsa.Vnni)
                {
                    SubBlockMadd<TTile>(codes, x, scales, ref i0, ref i1, ref i2, ref i3);
                    SubBlockMadd<TTile>(codes + 128, x + 32, scales + 16, ref i0, ref i1, ref i2, ref i3);
                }
                else
                {
                    SubBlock<TTile, TIsa>(codes, x, scales, ref i0, ref i1, ref i2, ref i3);
                    SubBlock<TTile, TIsa>(codes + 128, x + 32, scales + 16, ref i0, ref i1, ref i2, ref i3);
                }
            }
            if (TIsa.Vnni)
            {
                short* bs = bsums + s * bsStep;
                i0 -= Offset<TIsa>(blk, bs);
                if (TTile.Count > 1) i1 -= Offset<TIsa>(blk, bs + 16);
                if (TTile.Count > 2) i2 -= Offset<TIsa>(blk, bs + 32);
                if (TTile.Count > 3) i3 -= Offset<TIsa>(blk, bs + 48);
            }

            var dw = Vector256.Load((float*)blk);
            Step(y, i0, dw, ds[0]);
            if (TTile.Count > 1) Step(y + a.Rows, i1, dw, ds[1]);
            if (TTile.Count > 2) Step(y + 2L * a.Rows, i2, dw, ds[2]);
            if (TTile.Count > 3) Step(y + 3L * a.Rows, i3, dw, ds[3]);
        }
    }

    /// <summary>y += d·d_x·sumi per row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(float* y, Vector256<int> sumi, Vector256<float> dw, float dx) =>
        Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi), dw * Vector256.Create(dx), Vector256.Load(y)).Store(y);

    /// <summary>128·Σ_j sc_j·(bsums[2j] + bsums[2j + 1]) per row lane: the +128 of the VNNI table, for one batch row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Offset<TIsa>(byte* blk, short* bs) where TIsa : IIntegerIsa
    {
        Vector256<int> o = default;
        for (int j = 0; j < 8; j++)
            o = TIsa.DotWords(o, ScalePairs((sbyte*)blk + ScalesOffset + 16 * j), Vector256.Create(*(int*)(bs + 2 * j)).AsInt16());
        return Avx2.ShiftLeftLogical(o, 7);
    }

    /// <summary>The scales of one sub-block of the eight rows as the short pairs (sc, sc) of each row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> ScalePairs(sbyte* scales) => Avx2.ConvertToVector256Int16(scales);

    /// <summary>
    /// Sub-block j of one to four batch rows (activations 256 bytes apart) with VNNI: T[q] + 128 against the quants,
    /// one chain per half (low and high nibbles) and row, then the scales.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SubBlock<TTile, TIsa>(byte* codes, sbyte* x, sbyte* scales,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3)
        where TTile : IBatchTile where TIsa : IIntegerIsa
    {
        var table = IQ4Table.Offset;
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<int> lo0 = default, lo1 = default, lo2 = default, lo3 = default;
        Vector256<int> hi0 = default, hi1 = default, hi2 = default, hi3 = default;
        for (int k = 0; k < 4; k++)
        {
            var v = Vector256.Load(codes + 32 * k);
            var lo = Avx2.Shuffle(table, v & nibble);
            var hi = Avx2.Shuffle(table, Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble);
            sbyte* xk = x + 4 * k;
            lo0 = TIsa.Dot(lo0, lo, PackedSteps.Broadcast(xk));
            hi0 = TIsa.Dot(hi0, hi, PackedSteps.Broadcast(xk + 16));
            if (TTile.Count > 1)
            {
                lo1 = TIsa.Dot(lo1, lo, PackedSteps.Broadcast(xk + 256));
                hi1 = TIsa.Dot(hi1, hi, PackedSteps.Broadcast(xk + 272));
            }
            if (TTile.Count > 2)
            {
                lo2 = TIsa.Dot(lo2, lo, PackedSteps.Broadcast(xk + 512));
                hi2 = TIsa.Dot(hi2, hi, PackedSteps.Broadcast(xk + 528));
            }
            if (TTile.Count > 3)
            {
                lo3 = TIsa.Dot(lo3, lo, PackedSteps.Broadcast(xk + 768));
                hi3 = TIsa.Dot(hi3, hi, PackedSteps.Broadcast(xk + 784));
            }
        }
        // The pair (sc, sc) of a row lane, arithmetically shifted, is sc as an int.
        var sc = Avx2.ShiftRightArithmetic(ScalePairs(scales).AsInt32(), 16);
        sumi0 += Avx2.MultiplyLow(lo0 + hi0, sc);
        if (TTile.Count > 1) sumi1 += Avx2.MultiplyLow(lo1 + hi1, sc);
        if (TTile.Count > 2) sumi2 += Avx2.MultiplyLow(lo2 + hi2, sc);
        if (TTile.Count > 3) sumi3 += Avx2.MultiplyLow(lo3 + hi3, sc);
    }

    /// <summary>
    /// Sub-block j of one to four batch rows without VNNI: per step and half, |T[q]| against the quants carrying T[q]'s
    /// signs (<c>vpmaddubsw</c>, exact), widened at once against the scale pairs (<c>vpmaddwd</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SubBlockMadd<TTile>(byte* codes, sbyte* x, sbyte* scales,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3) where TTile : IBatchTile
    {
        var sc = ScalePairs(scales);
        // NOTE: written out rather than looped (as in PackedQ4_K).
        MaddStep<TTile>(codes, x, sc, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
        MaddStep<TTile>(codes + 32, x + 4, sc, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
        MaddStep<TTile>(codes + 64, x + 8, sc, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
        MaddStep<TTile>(codes + 96, x + 12, sc, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
    }

    /// <summary>One step of <see cref="SubBlockMadd{TTile}"/>: four columns of each half of the eight rows' sub-block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddStep<TTile>(byte* codes, sbyte* xk, Vector256<short> sc,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3) where TTile : IBatchTile
    {
        var nibble = Vector256.Create((byte)0x0F);
        var v = Vector256.Load(codes);
        var cl = v & nibble;
        var ch = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble;
        var sl = Avx2.Shuffle(IQ4Table.Both, cl).AsSByte();
        var sh = Avx2.Shuffle(IQ4Table.Both, ch).AsSByte();
        var ml = Avx2.Shuffle(IQ4Table.Magnitudes, cl);
        var mh = Avx2.Shuffle(IQ4Table.Magnitudes, ch);
        sumi0 += SignedMadd(ml, sl, mh, sh, xk, sc);
        if (TTile.Count > 1) sumi1 += SignedMadd(ml, sl, mh, sh, xk + 256, sc);
        if (TTile.Count > 2) sumi2 += SignedMadd(ml, sl, mh, sh, xk + 512, sc);
        if (TTile.Count > 3) sumi3 += SignedMadd(ml, sl, mh, sh, xk + 768, sc);
    }

    /// <summary>One batch row's part of <see cref="MaddStep{TTile}"/>: magnitudes m and signed values s of the low and high
    /// halves against the quants at xk (low) and xk + 16 (high).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SignedMadd(Vector256<byte> ml, Vector256<sbyte> sl, Vector256<byte> mh, Vector256<sbyte> sh,
        sbyte* xk, Vector256<short> sc)
    {
        var pl = Avx2.MultiplyAddAdjacent(ml, Avx2.Sign(PackedSteps.Broadcast(xk), sl));
        var ph = Avx2.MultiplyAddAdjacent(mh, Avx2.Sign(PackedSteps.Broadcast(xk + 16), sh));
        return Avx2.MultiplyAddAdjacent(pl, sc) + Avx2.MultiplyAddAdjacent(ph, sc);
    }
}
