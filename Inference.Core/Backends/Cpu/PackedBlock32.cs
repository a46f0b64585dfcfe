using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Weights in 32-value blocks with 4-bit codes (Q4_0, Q4_1, IQ4_NL) or 5-bit codes (Q5_0, Q5_1), repacked eight rows at
/// a time as <see cref="PackedQ8_0"/> does: each 32-byte load holds four code bytes (eight codes) of each of the eight
/// rows, the int32 lanes of a block's products are the eight rows' exact block dot products, and the float work is paid
/// once per block for eight rows. <typeparamref name="TLayout"/> says what a block holds besides the low nibbles.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, block i (32 columns): as many bytes as the eight GGUF blocks
///    [ d_w of the 8 rows as f16 (16 B) | Q4_1, Q5_1: m of the 8 rows as f16 (16 B) | Q5_0, Q5_1: fifth bits (32 B)
///      | k = 0..3: rows 0..7 × GGUF bytes qs[4k … 4k+3] (32 B per k) ]
///    low nibbles: columns 4k … 4k+3, high nibbles: columns 16 + 4k … 16 + 4k + 3
///    fifth bits: byte 4j + c of row j: bit 4 + k for column 4k + c, bit k for column 16 + 4k + c
///  y[b, 8g + j] = Σ_i (d_w[j]·d_x[b, i]) · (Σ_c v·q_x + offset·Σ_c q_x) (+ m[j]·s_x[b, i])     (lane j, int32 exact)
/// </code>
/// <para>Unsigned codes feed <c>vpmaddubsw</c> / <c>vpdpbusd</c> as they are; the code offset (Q4_0 −8, Q5_0 −16) comes
/// from the Q8_0 activation's precomputed −8·Σq. IQ4_NL's table values are looked up with <c>vpshufb</c>: with VNNI as
/// value + 128 (offset −128·Σq), without it signed, their signs moved onto the activations. Q4_1 and Q5_1 take Q8_1
/// activations, whose f16 s = d_x·Σq meets the eight rows' mins in one multiply-add per block.</para>
/// <para>The integer sums are those of <see cref="Q4_0Kernel"/> and <see cref="Block32Kernel"/> (ggml's
/// <c>vec_dot_q4_0_q8_0</c>, <c>vec_dot_q4_1_q8_1</c>, …); the f32 order is <see cref="PackedQ8_0"/>'s. Rows after the
/// last whole group keep the GGUF layout and go through the per-row kernel. Every output sees the same operations
/// whatever the batch size. Runs with AVX-VNNI or on AVX2 alone (<see cref="TileMadd{TTile}"/>), with the same integer
/// sums and so the same bits.</para>
/// </remarks>
internal readonly unsafe struct PackedBlock32<TLayout> : IPackedKernel where TLayout : IPackedBlock32Layout
{
    private const int GroupRows = PackedWeights.GroupRows;
    private const int ScalesBytes = 16;
    private const int HighBitsBytes = 32;

    /// <summary>Start of the fifth bits in a packed block.</summary>
    private static int HighBitsOffset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ScalesBytes * (TLayout.HasMin ? 2 : 1);
    }

    /// <summary>Start of the code bytes in a packed block.</summary>
    private static int CodesOffset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => HighBitsOffset + (TLayout.HasHighBits ? HighBitsBytes : 0);
    }

    private static int PackedBlock
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => CodesOffset + 4 * 32;
    }

    /// <summary>GGUF block: f16 d | f16 m (Q4_1, Q5_1) | qh[4] (Q5_0, Q5_1) | qs[16].</summary>
    private static int GgufBlockBytes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => PackedBlock / GroupRows;
    }

    private static int GgufQhOffset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => TLayout.HasMin ? 4 : 2;
    }

    private static int GgufQsOffset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => GgufQhOffset + (TLayout.HasHighBits ? 4 : 0);
    }

    private static int PrefetchDistance
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => 16 * PackedBlock;
    }

    public static GgmlType Type => TLayout.Type;

    public static int PackedBlockBytes => PackedBlock;

    public static int ActivationBlock => 32;

    public static bool MinActivations => TLayout.HasMin;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => TLayout.TailRows(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int i)
    {
        byte* high = dst + HighBitsOffset;
        if (TLayout.HasHighBits) new Span<byte>(high, HighBitsBytes).Clear();
        for (int j = 0; j < GroupRows; j++)
        {
            byte* src = w.Data + (8L * g + j) * w.RowBytes + (long)i * GgufBlockBytes;
            ((ushort*)dst)[j] = *(ushort*)src;
            if (TLayout.HasMin) ((ushort*)(dst + ScalesBytes))[j] = *(ushort*)(src + 2);
            for (int k = 0; k < 4; k++)
                *(uint*)(dst + CodesOffset + 32 * k + 4 * j) = Unsafe.ReadUnaligned<uint>(src + GgufQsOffset + 4 * k);
            if (!TLayout.HasHighBits) continue;
            uint qh = Unsafe.ReadUnaligned<uint>(src + GgufQhOffset);
            for (int k = 0; k < 4; k++)
            for (int c = 0; c < 4; c++)
            {
                uint lo = (qh >> (4 * k + c)) & 1, hi = (qh >> (16 + 4 * k + c)) & 1;
                high[4 * j + c] |= (byte)((lo << (4 + k)) | (hi << k));
            }
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
        // Block i of batch row b + t: quants at q + i·qStep + 32t, scale and −8·Σq (Q8_1: the bits of s) at [i·batch + t].
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        Vector256<float> m0 = default, m1 = default, m2 = default, m3 = default; // Q4_1, Q5_1: Σ m·s_x
        // NOTE: the layout's offsets as locals: constants once inlined, but the inliner's budget runs out in these large
        // methods and a call per use cost half the speed (Q4_1 in cache, one thread: 7.5 against Q4_0's 14 GB/s).
        int packedBlock = PackedBlock, codesOffset = CodesOffset, highBitsOffset = HighBitsOffset, prefetchDistance = PrefetchDistance;
        var table = LookupTable<TIsa>();
        // Batch 1 asks for lines far ahead where the weights stream from memory (as in PackedQ8_0).
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * packedBlock;
            // NOTE: as in PackedQ8_0; three lines from the block ahead cover it (at most 192 bytes) with the next block's three.
            if (b == 0) PackedSteps.PrefetchLines(blk + prefetchDistance, 3);
            if (far) PackedSteps.PrefetchFar(blk, 3);
            var dw = PackedSteps.RowScales(blk);
            var dm = TLayout.HasMin ? PackedSteps.RowScales(blk + ScalesBytes) : default;
            HighBits(blk + highBitsOffset, out var h, out var hs);
            byte* wq = blk + codesOffset;
            Codes(wq, h, hs, table, 0, out var l0, out var h0);
            Codes(wq + 32, h, hs, table, 1, out var l1, out var h1);
            Codes(wq + 64, h, hs, table, 2, out var l2, out var h2);
            Codes(wq + 96, h, hs, table, 3, out var l3, out var h3);
            sbyte* qe = q + i * qStep;
            long e = (long)i * batch;
            y0 = Step<TIsa>(y0, l0, h0, l1, h1, l2, h2, l3, h3, qe, s[e], dw, d[e]);
            if (TTile.Count > 1) y1 = Step<TIsa>(y1, l0, h0, l1, h1, l2, h2, l3, h3, qe + 32, s[e + 1], dw, d[e + 1]);
            if (TTile.Count > 2) y2 = Step<TIsa>(y2, l0, h0, l1, h1, l2, h2, l3, h3, qe + 64, s[e + 2], dw, d[e + 2]);
            if (TTile.Count > 3) y3 = Step<TIsa>(y3, l0, h0, l1, h1, l2, h2, l3, h3, qe + 96, s[e + 3], dw, d[e + 3]);
            MinSteps<TTile>(dm, s + e, ref m0, ref m1, ref m2, ref m3);
        }
        Store<TTile>(a, g, b, y0, y1, y2, y3, m0, m1, m2, m3);
    }

    /// <summary>
    /// <see cref="Tile{TTile, TIsa}"/> without VNNI. Unsigned codes: the <c>vpmaddubsw</c> pair products of the block's
    /// code vectors summed as shorts, then widened by <c>vpmaddwd</c> against ones: 4-bit codes over all eight vectors
    /// (at most 8 · 2 · 15 · 127 = 30,480), 5-bit codes four at a time (4 · 2 · 31 · 127 = 31,496), so no short overflows.
    /// IQ4_NL: |v| · (x·sign(v)) (a pair at most 2 · 127 · 127) widened per vector. The same exact block sums as the
    /// VNNI loops, scaled by the same f32 operations, so the same bits.
    /// </summary>
    private static void TileMadd<TTile>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile
    {
        int nb = a.Cols / 32, batch = a.Batch;
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        var ones = Vector256.Create((short)1);
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        Vector256<float> m0 = default, m1 = default, m2 = default, m3 = default; // Q4_1, Q5_1: Σ m·s_x
        // NOTE: the layout's offsets as locals: constants once inlined, but the inliner's budget runs out in these large
        // methods and a call per use cost half the speed (Q4_1 in cache, one thread: 7.5 against Q4_0's 14 GB/s).
        int packedBlock = PackedBlock, codesOffset = CodesOffset, highBitsOffset = HighBitsOffset, prefetchDistance = PrefetchDistance;
        var table = LookupTable<WithoutVnni>();
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * packedBlock;
            if (b == 0) PackedSteps.PrefetchLines(blk + prefetchDistance, 3);
            if (far) PackedSteps.PrefetchFar(blk, 3);
            var dw = PackedSteps.RowScales(blk);
            HighBits(blk + highBitsOffset, out var h, out var hs);
            byte* wq = blk + codesOffset;
            sbyte* qe = q + i * qStep;
            Vector256<int> i0, i1 = default, i2 = default, i3 = default;
            // NOTE: written out rather than looped (as in PackedQ4_K).
            if (TLayout.Lookup)
            {
                i0 = default;
                SignedStep<TTile>(wq, qe, table, ones, 0, ref i0, ref i1, ref i2, ref i3);
                SignedStep<TTile>(wq + 32, qe + 4, table, ones, 1, ref i0, ref i1, ref i2, ref i3);
                SignedStep<TTile>(wq + 64, qe + 8, table, ones, 2, ref i0, ref i1, ref i2, ref i3);
                SignedStep<TTile>(wq + 96, qe + 12, table, ones, 3, ref i0, ref i1, ref i2, ref i3);
            }
            else
            {
                Vector256<short> p0 = default, p1 = default, p2 = default, p3 = default;
                MaddStep<TTile>(wq, qe, h, hs, 0, ref p0, ref p1, ref p2, ref p3);
                MaddStep<TTile>(wq + 32, qe + 4, h, hs, 1, ref p0, ref p1, ref p2, ref p3);
                if (TLayout.HasHighBits)
                {
                    i0 = Avx2.MultiplyAddAdjacent(p0, ones);
                    if (TTile.Count > 1) i1 = Avx2.MultiplyAddAdjacent(p1, ones);
                    if (TTile.Count > 2) i2 = Avx2.MultiplyAddAdjacent(p2, ones);
                    if (TTile.Count > 3) i3 = Avx2.MultiplyAddAdjacent(p3, ones);
                    p0 = p1 = p2 = p3 = default;
                }
                else i0 = default;
                MaddStep<TTile>(wq + 64, qe + 8, h, hs, 2, ref p0, ref p1, ref p2, ref p3);
                MaddStep<TTile>(wq + 96, qe + 12, h, hs, 3, ref p0, ref p1, ref p2, ref p3);
                i0 += Avx2.MultiplyAddAdjacent(p0, ones);
                if (TTile.Count > 1) i1 += Avx2.MultiplyAddAdjacent(p1, ones);
                if (TTile.Count > 2) i2 += Avx2.MultiplyAddAdjacent(p2, ones);
                if (TTile.Count > 3) i3 += Avx2.MultiplyAddAdjacent(p3, ones);
            }
            long e = (long)i * batch;
            var dm = TLayout.HasMin ? PackedSteps.RowScales(blk + ScalesBytes) : default;
            y0 = Scale(y0, i0, s[e], dw, d[e], madd: true);
            if (TTile.Count > 1) y1 = Scale(y1, i1, s[e + 1], dw, d[e + 1], madd: true);
            if (TTile.Count > 2) y2 = Scale(y2, i2, s[e + 2], dw, d[e + 2], madd: true);
            if (TTile.Count > 3) y3 = Scale(y3, i3, s[e + 3], dw, d[e + 3], madd: true);
            MinSteps<TTile>(dm, s + e, ref m0, ref m1, ref m2, ref m3);
        }
        Store<TTile>(a, g, b, y0, y1, y2, y3, m0, m1, m2, m3);
    }

    /// <summary>One step of <see cref="TileMadd{TTile}"/> for unsigned codes: code bytes 4k … 4k+3 of the eight rows
    /// (columns 4k … 4k+3 and 16 + 4k … 16 + 4k + 3) against up to four batch rows' activations (32 bytes apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddStep<TTile>(byte* wq, sbyte* xk, Vector256<byte> h, Vector256<byte> hs, int k,
        ref Vector256<short> p0, ref Vector256<short> p1, ref Vector256<short> p2, ref Vector256<short> p3) where TTile : IBatchTile
    {
        Codes(wq, h, hs, default, k, out var lo, out var hi);
        p0 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 16));
        if (TTile.Count > 1)
            p1 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 32)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 48));
        if (TTile.Count > 2)
            p2 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 64)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 80));
        if (TTile.Count > 3)
            p3 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 96)) + Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 112));
    }

    /// <summary>One step of <see cref="TileMadd{TTile}"/> for signed table values (IQ4_NL).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SignedStep<TTile>(byte* wq, sbyte* xk, Vector256<byte> table, Vector256<short> ones, int k,
        ref Vector256<int> i0, ref Vector256<int> i1, ref Vector256<int> i2, ref Vector256<int> i3) where TTile : IBatchTile
    {
        Codes(wq, default, default, table, k, out var lo, out var hi);
        var vl = lo.AsSByte();
        var vh = hi.AsSByte();
        var al = Avx2.Abs(vl);
        var ah = Avx2.Abs(vh);
        i0 += SignedDot(al, vl, xk, ones) + SignedDot(ah, vh, xk + 16, ones);
        if (TTile.Count > 1) i1 += SignedDot(al, vl, xk + 32, ones) + SignedDot(ah, vh, xk + 48, ones);
        if (TTile.Count > 2) i2 += SignedDot(al, vl, xk + 64, ones) + SignedDot(ah, vh, xk + 80, ones);
        if (TTile.Count > 3) i3 += SignedDot(al, vl, xk + 96, ones) + SignedDot(ah, vh, xk + 112, ones);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SignedDot(Vector256<byte> abs, Vector256<sbyte> v, sbyte* x, Vector256<short> ones) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(abs, Avx2.Sign(PackedSteps.Broadcast(x), v)), ones);

    /// <summary>IQ4_NL's table for <see cref="Codes"/>: value + 128 for the VNNI loops (offset −128·Σq), signed values
    /// without them; unused by the other layouts.</summary>
    /// <remarks>Read once per tile into a register: a static field read in the loop kept a class-initialisation check
    /// there and spilled the tile's vectors around it.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> LookupTable<TIsa>() where TIsa : IIntegerIsa =>
        !TLayout.Lookup ? default : TIsa.Vnni ? IQ4Table.Offset : IQ4Table.Both;

    /// <summary>The fifth bits of a packed block (Q5_0, Q5_1) at <paramref name="p"/>: as stored, and shifted so that
    /// bits 0 … 3 of each byte sit at 4 … 7.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void HighBits(byte* p, out Vector256<byte> h, out Vector256<byte> hs)
    {
        if (!TLayout.HasHighBits)
        {
            h = hs = default;
            return;
        }
        h = Vector256.Load(p);
        hs = Avx2.ShiftLeftLogical(h.AsUInt16(), 4).AsByte();
    }

    /// <summary>
    /// The codes of step <paramref name="k"/>'s 32 bytes: low and high nibbles, with the fifth bit (Q5_0, Q5_1) as 16,
    /// or IQ4_NL's values from <paramref name="table"/> (<see cref="LookupTable{TIsa}"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Codes(byte* wq, Vector256<byte> h, Vector256<byte> hs, Vector256<byte> table, int k,
        out Vector256<byte> lo, out Vector256<byte> hi)
    {
        var nibble = Vector256.Create((byte)0x0F);
        var v = Vector256.Load(wq);
        lo = v & nibble;
        hi = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble;
        if (TLayout.HasHighBits)
        {
            // NOTE: bit 4 + k of a byte is 16·2^k; min(·, 16) turns it into 16 or 0 with no shift (the shift pipe is the
            // one the multiplies take).
            var bit = Vector256.Create((byte)(16 << k));
            var sixteen = Vector256.Create((byte)16);
            lo |= Vector256.Min(h & bit, sixteen);
            hi |= Vector256.Min(hs & bit, sixteen);
        }
        if (TLayout.Lookup)
        {
            lo = Avx2.Shuffle(table, lo);
            hi = Avx2.Shuffle(table, hi);
        }
    }

    /// <summary>One block of one batch row with the VNNI steps: two chains of four, the first starting at the code offset's
    /// sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TIsa>(Vector256<float> acc,
        Vector256<byte> l0, Vector256<byte> h0, Vector256<byte> l1, Vector256<byte> h1,
        Vector256<byte> l2, Vector256<byte> h2, Vector256<byte> l3, Vector256<byte> h3,
        sbyte* x, int sum, Vector256<float> dw, float dx) where TIsa : IIntegerIsa
    {
        var lo = Vector256<int>.Zero;
        var hi = Vector256<int>.Zero;
        lo = TIsa.Dot(lo, l0, PackedSteps.Broadcast(x));
        hi = TIsa.Dot(hi, h0, PackedSteps.Broadcast(x + 16));
        lo = TIsa.Dot(lo, l1, PackedSteps.Broadcast(x + 4));
        hi = TIsa.Dot(hi, h1, PackedSteps.Broadcast(x + 20));
        lo = TIsa.Dot(lo, l2, PackedSteps.Broadcast(x + 8));
        hi = TIsa.Dot(hi, h2, PackedSteps.Broadcast(x + 24));
        lo = TIsa.Dot(lo, l3, PackedSteps.Broadcast(x + 12));
        hi = TIsa.Dot(hi, h3, PackedSteps.Broadcast(x + 28));
        return Scale(acc, lo + hi, sum, dw, dx, madd: false);
    }

    /// <summary>
    /// acc + (d_w·d_x)·(block sum + offset): <paramref name="sum"/> is the Q8_0 activation's −8·Σq, times the layout's
    /// offset (IQ4_NL's only in the VNNI loops, <paramref name="madd"/> false); Q4_1 and Q5_1 have none.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Scale(Vector256<float> acc, Vector256<int> block, int sum, Vector256<float> dw, float dx, bool madd)
    {
        if (TLayout.OffsetSums != 0 && !(madd && TLayout.Lookup)) block += Vector256.Create(TLayout.OffsetSums * sum);
        return PackedSteps.ScaleBlock(acc, block, dw, dx);
    }

    /// <summary>
    /// Q4_1, Q5_1: m·s_x of one block for up to four batch rows, <paramref name="sx"/> the Q8_1 activations' s (as float
    /// bits, batch rows adjacent).
    /// </summary>
    /// <remarks>Summed apart from the code products: one more dependency chain per output instead of a second
    /// multiply-add in line (Q4_1 in cache, one thread, <c>kernels-quick --ring-mb 0 --shape 256x1024</c>: 10.3–10.5 →
    /// 10.7–10.8 GB/s).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MinSteps<TTile>(Vector256<float> dm, int* sx,
        ref Vector256<float> m0, ref Vector256<float> m1, ref Vector256<float> m2, ref Vector256<float> m3) where TTile : IBatchTile
    {
        if (!TLayout.HasMin) return;
        m0 = Fma.MultiplyAdd(dm, Vector256.Create(*(float*)sx), m0);
        if (TTile.Count > 1) m1 = Fma.MultiplyAdd(dm, Vector256.Create(*(float*)(sx + 1)), m1);
        if (TTile.Count > 2) m2 = Fma.MultiplyAdd(dm, Vector256.Create(*(float*)(sx + 2)), m2);
        if (TTile.Count > 3) m3 = Fma.MultiplyAdd(dm, Vector256.Create(*(float*)(sx + 3)), m3);
    }

    /// <summary>The tile's outputs: the code products' sums, plus the min terms' (Q4_1, Q5_1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TTile>(in MatMulArgs a, int g, int b, Vector256<float> y0, Vector256<float> y1, Vector256<float> y2,
        Vector256<float> y3, Vector256<float> m0, Vector256<float> m1, Vector256<float> m2, Vector256<float> m3) where TTile : IBatchTile
    {
        if (TLayout.HasMin) PackedSteps.StoreTile<TTile>(a, g, b, y0 + m0, y1 + m1, y2 + m2, y3 + m3);
        else PackedSteps.StoreTile<TTile>(a, g, b, y0, y1, y2, y3);
    }
}

/// <summary>What a 32-value block of a <see cref="PackedBlock32{TLayout}"/> type holds besides the low nibbles.</summary>
internal interface IPackedBlock32Layout
{
    /// <summary>The weight type.</summary>
    static abstract GgmlType Type { get; }

    /// <summary>True when an f16 min m follows d (Q4_1, Q5_1: Q8_1 activations).</summary>
    static abstract bool HasMin { get; }

    /// <summary>True when the block holds a fifth bit per code (Q5_0, Q5_1).</summary>
    static abstract bool HasHighBits { get; }

    /// <summary>True when the codes index <see cref="Dequantize.IQ4Values"/> (IQ4_NL).</summary>
    static abstract bool Lookup { get; }

    /// <summary>The code offset as a multiple of the Q8_0 activation's −8·Σq (Q4_0: 1, Q5_0: 2, IQ4_NL's value + 128 in
    /// the VNNI loops: 16; 0 for none).</summary>
    static abstract int OffsetSums { get; }

    /// <summary>Rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>) from the GGUF layout.</summary>
    static abstract void TailRows(in MatMulArgs a, int rowStart, int rowEnd);
}

/// <summary>Q4_0: f16 d | qs[16], codes − 8.</summary>
internal readonly struct Q4_0Layout : IPackedBlock32Layout
{
    public static GgmlType Type => GgmlType.Q4_0;
    public static bool HasMin => false;
    public static bool HasHighBits => false;
    public static bool Lookup => false;
    public static int OffsetSums => 1;
    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q4_0Kernel>(a, rowStart, rowEnd);
}

/// <summary>Q4_1: f16 d | f16 m | qs[16].</summary>
internal readonly struct Q4_1Layout : IPackedBlock32Layout
{
    public static GgmlType Type => GgmlType.Q4_1;
    public static bool HasMin => true;
    public static bool HasHighBits => false;
    public static bool Lookup => false;
    public static int OffsetSums => 0;
    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q4_1Kernel>(a, rowStart, rowEnd);
}

/// <summary>Q5_0: f16 d | qh[4] | qs[16], codes − 16.</summary>
internal readonly struct Q5_0Layout : IPackedBlock32Layout
{
    public static GgmlType Type => GgmlType.Q5_0;
    public static bool HasMin => false;
    public static bool HasHighBits => true;
    public static bool Lookup => false;
    public static int OffsetSums => 2;
    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q5_0Kernel>(a, rowStart, rowEnd);
}

/// <summary>Q5_1: f16 d | f16 m | qh[4] | qs[16].</summary>
internal readonly struct Q5_1Layout : IPackedBlock32Layout
{
    public static GgmlType Type => GgmlType.Q5_1;
    public static bool HasMin => true;
    public static bool HasHighBits => true;
    public static bool Lookup => false;
    public static int OffsetSums => 0;
    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q5_1Kernel>(a, rowStart, rowEnd);
}

/// <summary>IQ4_NL: f16 d | qs[16], each nibble an index into <see cref="Dequantize.IQ4Values"/>.</summary>
internal readonly struct IQ4_NLLayout : IPackedBlock32Layout
{
    public static GgmlType Type => GgmlType.IQ4_NL;
    public static bool HasMin => false;
    public static bool HasHighBits => false;
    public static bool Lookup => true;
    public static int OffsetSums => 16;
    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<IQ4_NLKernel>(a, rowStart, rowEnd);
}
