using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q4_K weights repacked eight rows at a time so that one <c>vpdpbusd</c> lane belongs to one output row (as
/// <see cref="PackedQ8_0"/>): each 32-byte load holds four code bytes of each of the eight rows, the int32 lanes of a
/// sub-block's products are the eight rows' exact sub-block dot products, and the scales, mins and float work are
/// applied once per sub-block or super-block for eight rows instead of once per row.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, super-block s (256 columns):  1216 bytes
///    [   0,   32)  d of the 8 rows as f32
///    [  32,   64)  dmin of the 8 rows as f32
///    [  64,  128)  sub-block j = 0..7: the 6-bit scales of rows 0..7, one byte each
///    [ 128,  192)  v = 0..3: rows 0..7 × (m[c], m[c + 1]), the 6-bit mins of sub-blocks c and c + 1, where
///                  c = 2·(v mod 2) + 4·((v div 2) xor (row div 4)): rows 0..3 and 4..7 take different pairs (see MinTerm)
///    [ 192, 1216)  pair i = 0..3, k = 0..7: rows 0..7 × GGUF bytes qs[32i + 4k … 32i + 4k + 3]   (32 B per k)
///                  low nibbles: elements 64i + 4k … +3 (sub-block 2i), high nibbles: elements 64i + 32 + 4k … +3 (2i + 1)
///
///  lane j of y[b, 8g + j] += d_x·(d_j·Σ_sub sc_j,sub·Σ_c q·q_x  −  dmin_j·Σ_sub m_j,sub·(bsums[2sub] + bsums[2sub + 1]))
///                                 └──── int32, exact (codes 0..15 are unsigned) ───┘      └──── int32, exact ────┘
/// </code>
/// The integer sums are those of <see cref="Q4_KKernel"/> (ggml's <c>vec_dot_q4_K_q8_K</c>); the two f32 terms go into one
/// accumulator per row (the unpacked kernel keeps them in two and subtracts at the end), so results differ from it by
/// f32 rounding only. Rows after the last whole group keep the GGUF layout and go through <see cref="Q4_KKernel"/>. Every
/// output sees the same operations whatever the batch size, so a request's tokens do not depend on what it is batched
/// with. Runs with AVX-VNNI (<c>vpdpbusd</c>, <c>vpdpwssd</c>) or on AVX2 alone (<see cref="PackedK4{TCodes}.PairMadd{TTile}"/>), with the
/// same integer sums and so the same bits. Q5_K packs the same way with its fifth bits after the codes (<see cref="PackedQ5_K"/>).
/// </remarks>
internal readonly unsafe struct PackedQ4_K : IPackedKernel
{
    public static GgmlType Type => GgmlType.Q4_K;

    public static int PackedBlockBytes => PackedK4<Q4_KCodes>.PackedBlock;

    public static int ActivationBlock => 256;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q4_KKernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int block) => PackedK4<Q4_KCodes>.PackBlock(dst, w, g, block);

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa =>
        PackedK4<Q4_KCodes>.Tile<TTile, TIsa>(a, group, g, b);

    public static bool InterleavesGroups => true;

    public static void TileTwoGroups<TIsa>(in MatMulArgs a, byte* groupA, int gA, byte* groupB, int gB) where TIsa : IIntegerIsa =>
        PackedK4<Q4_KCodes>.TileTwoGroups<TIsa>(a, groupA, gA, groupB, gB);
}

/// <summary>
/// Q5_K weights repacked as <see cref="PackedQ4_K"/>, 1472 bytes per group and super-block (4.5% more than the GGUF rows):
/// the Q4_K layout of d, dmin, scales, mins and nibbles, then at 1216 the fifth bits, k = 0..7: rows 0..7 × GGUF bytes
/// qh[4k … 4k + 3] (32 B per k). Bit 2i of those bytes is the fifth bit of the low-nibble codes of pair i, bit 2i + 1 that
/// of its high-nibble codes (the GGUF qh layout: bit j of qh[l] belongs to element 32j + l).
/// </summary>
/// <remarks>Codes reach 31: without VNNI the <c>vpmaddubsw</c> pair sums are widened every four steps (8 · 31 · 127 fits a
/// short, 16 · 31 · 127 does not). The integer sums are those of <see cref="Q5_KKernel"/> (ggml's <c>vec_dot_q5_K_q8_K</c>).</remarks>
internal readonly unsafe struct PackedQ5_K : IPackedKernel
{
    public static GgmlType Type => GgmlType.Q5_K;

    public static int PackedBlockBytes => PackedK4<Q5_KCodes>.PackedBlock;

    public static int ActivationBlock => 256;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q5_KKernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int block) => PackedK4<Q5_KCodes>.PackBlock(dst, w, g, block);

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa =>
        PackedK4<Q5_KCodes>.Tile<TTile, TIsa>(a, group, g, b);

    public static bool InterleavesGroups => true;

    public static void TileTwoGroups<TIsa>(in MatMulArgs a, byte* groupA, int gA, byte* groupB, int gB) where TIsa : IIntegerIsa =>
        PackedK4<Q5_KCodes>.TileTwoGroups<TIsa>(a, groupA, gA, groupB, gB);
}

/// <summary>The packed Q4_K-family kernel (<see cref="PackedQ4_K"/>, <see cref="PackedQ5_K"/>) for one code layout.</summary>
internal static unsafe class PackedK4<TCodes> where TCodes : IK4Codes
{
    private const int GroupRows = PackedWeights.GroupRows;
    private const int ScalesOffset = 64;
    private const int MinsOffset = 128;
    private const int CodesOffset = 192;
    private const int HighBitsOffset = CodesOffset + 8 * 128;

    // NOTE: these properties were left as calls in the hot loop (which then kept its accumulators on the stack):
    // every kernel inlines them.
    /// <summary>Bytes per group and super-block.</summary>
    public static int PackedBlock
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => HighBitsOffset + (TCodes.HighBits ? 256 : 0);
    }

    private static int PrefetchDistance
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => 4 * PackedBlock;
    }

    /// <summary>Cache lines asked for per pair of sub-blocks (four pairs cover a packed block).</summary>
    private static int PrefetchLinesPerPair
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => TCodes.HighBits ? 6 : 5;
    }

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int s)
    {
        for (int j = 0; j < GroupRows; j++)
        {
            byte* src = w.Data + (8L * g + j) * w.RowBytes + (long)s * TCodes.BlockBytes;
            ((float*)dst)[j] = Fp16.ToFloat(*(ushort*)src);
            ((float*)dst)[8 + j] = Fp16.ToFloat(*(ushort*)(src + 2));
            Q4_KKernel.UnpackScales(src + 4, out ulong scales, out ulong mins);
            for (int sub = 0; sub < 8; sub++) dst[ScalesOffset + 8 * sub + j] = (byte)(scales >> (8 * sub));
            for (int v = 0; v < 4; v++)
            {
                int c = 2 * (v & 1) + 4 * ((v >> 1) ^ (j >> 2));
                dst[MinsOffset + 16 * v + 2 * j] = (byte)(mins >> (8 * c));
                dst[MinsOffset + 16 * v + 2 * j + 1] = (byte)(mins >> (8 * (c + 1)));
            }
            for (int i = 0; i < 4; i++)
            for (int k = 0; k < 8; k++)
                *(uint*)(dst + CodesOffset + 256 * i + 32 * k + 4 * j) = *(uint*)(src + TCodes.CodesOffset + 32 * i + 4 * k);
            if (TCodes.HighBits)
                for (int k = 0; k < 8; k++)
                    *(uint*)(dst + HighBitsOffset + 32 * k + 4 * j) = *(uint*)(src + IK4Codes.HighBitsOffset + 4 * k);
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
        // NOTE: the row sums accumulate in y itself (these eight outputs belong to this group alone): kept in registers
        // they would push the vpdpbusd accumulators into ymm16+, which the VEX encoding cannot name (a copy per use).
        float* y = a.Y + (long)b * a.Rows + 8L * g;
        for (int t = 0; t < TTile.Count; t++) Vector256<float>.Zero.Store(y + (long)t * a.Rows);
        // Batch 1 (the first tile of one row) asks for lines far ahead where the weights stream from memory.
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int s = 0; s < nsb; s++)
        {
            byte* blk = group + (long)s * PackedBlock;
            sbyte* qs = q + s * qStep;
            short* bs = bsums + s * bsStep;
            float* ds = dx + (long)s * batch;

            // Σ_sub sc_sub·Σ_c q·q_x per row.
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int i = 0; i < 4; i++)
            {
                // NOTE: one batch row is not enough work per byte for the hardware prefetcher alone to keep a core's
                // loads in flight; asking for the lines PrefetchDistance ahead took batch 1 from about 9 to 12–14 GB/s
                // (one thread, best call of kernels-quick, 15–16 GB/s plain reads). A quarter of them per pair of
                // sub-blocks (4 · 5 lines ≥ PackedBlock).
                if (b == 0) PackedSteps.PrefetchLines(blk + PrefetchDistance + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                if (far) PackedSteps.PrefetchFar(blk + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                byte* codes = blk + CodesOffset + 256 * i;
                byte* scales = blk + ScalesOffset + 16 * i;
                // Q5_K: the fifth bits of pair i are bits 2i and 2i + 1 of the high-bit bytes.
                var fifth = new FifthBits(blk + HighBitsOffset, Vector128.CreateScalar((ushort)(2 * i)));
                int x = 64 * i;
                if (!TIsa.Vnni) PairMadd<TTile>(codes, qs + x, scales, fifth, ref i0, ref i1, ref i2, ref i3);
                else if (TTile.Count == 1) i0 += Pair<TIsa>(codes, qs + x, scales, fifth);
                else PairN<TTile, TIsa>(codes, qs + x, scales, fifth, ref i0, ref i1, ref i2, ref i3);
            }

            // Σ_sub m_sub·(bsums[2sub] + bsums[2sub + 1]) per row: four vpmaddwd of (m[c], m[c + 1]) against (B[c], B[c + 1]).
            var mA = Avx2.ConvertToVector256Int16(blk + MinsOffset);
            var mB = Avx2.ConvertToVector256Int16(blk + MinsOffset + 16);
            var mA2 = Avx2.ConvertToVector256Int16(blk + MinsOffset + 32);
            var mB2 = Avx2.ConvertToVector256Int16(blk + MinsOffset + 48);
            var m0 = MinTerm<TIsa>(bs, mA, mB, mA2, mB2);
            var m1 = TTile.Count > 1 ? MinTerm<TIsa>(bs + 16, mA, mB, mA2, mB2) : default;
            var m2 = TTile.Count > 2 ? MinTerm<TIsa>(bs + 32, mA, mB, mA2, mB2) : default;
            var m3 = TTile.Count > 3 ? MinTerm<TIsa>(bs + 48, mA, mB, mA2, mB2) : default;

            var dw = Vector256.Load((float*)blk);
            var dminw = Vector256.Load((float*)blk + 8);
            Step(y, i0, m0, dw, dminw, ds[0]);
            if (TTile.Count > 1) Step(y + a.Rows, i1, m1, dw, dminw, ds[1]);
            if (TTile.Count > 2) Step(y + 2L * a.Rows, i2, m2, dw, dminw, ds[2]);
            if (TTile.Count > 3) Step(y + 3L * a.Rows, i3, m3, dw, dminw, ds[3]);
        }
    }

    /// <summary>
    /// One batch row against groups <paramref name="gA"/> and <paramref name="gB"/> (<see cref="IPackedKernel.TileTwoGroups"/>):
    /// without VNNI the two weight streams are read side by side and share each activation broadcast, with exactly the
    /// integer sums and f32 operations of <see cref="Tile{TTile, TIsa}"/> for one batch row (so the same bits); with VNNI
    /// the groups run one after the other.
    /// </summary>
    public static void TileTwoGroups<TIsa>(in MatMulArgs a, byte* groupA, int gA, byte* groupB, int gB) where TIsa : IIntegerIsa
    {
        if (TIsa.Vnni)
        {
            Tile<Tile1, TIsa>(a, groupA, gA, 0);
            Tile<Tile1, TIsa>(a, groupB, gB, 0);
            return;
        }
        int nsb = a.Cols / 256;
        float* yA = a.Y + 8L * gA, yB = a.Y + 8L * gB;
        Vector256<float>.Zero.Store(yA);
        Vector256<float>.Zero.Store(yB);
        bool far = a.Streams;
        for (int s = 0; s < nsb; s++)
        {
            byte* blkA = groupA + (long)s * PackedBlock, blkB = groupB + (long)s * PackedBlock;
            sbyte* qs = a.Q + 256L * s;
            short* bs = a.BSums + 16L * s;
            Vector256<int> iA = default, iB = default;
            for (int i = 0; i < 4; i++)
            {
                PackedSteps.PrefetchLines(blkA + PrefetchDistance + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                PackedSteps.PrefetchLines(blkB + PrefetchDistance + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                if (far)
                {
                    PackedSteps.PrefetchFar(blkA + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                    PackedSteps.PrefetchFar(blkB + 64 * PrefetchLinesPerPair * i, PrefetchLinesPerPair);
                }
                var shift = Vector128.CreateScalar((ushort)(2 * i));
                PairMaddTwo(blkA + CodesOffset + 256 * i, blkB + CodesOffset + 256 * i, qs + 64 * i,
                    blkA + ScalesOffset + 16 * i, blkB + ScalesOffset + 16 * i,
                    new FifthBits(blkA + HighBitsOffset, shift), new FifthBits(blkB + HighBitsOffset, shift), ref iA, ref iB);
            }
            float dx = a.D[s];
            Step(yA, iA, MinTerm<TIsa>(bs, blkA), Vector256.Load((float*)blkA), Vector256.Load((float*)blkA + 8), dx);
            Step(yB, iB, MinTerm<TIsa>(bs, blkB), Vector256.Load((float*)blkB), Vector256.Load((float*)blkB + 8), dx);
        }
    }

    /// <summary><see cref="MinTerm{TIsa}(short*, Vector256{short}, Vector256{short}, Vector256{short}, Vector256{short})"/> with the mins of the packed block at <paramref name="blk"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> MinTerm<TIsa>(short* bs, byte* blk) where TIsa : IIntegerIsa =>
        MinTerm<TIsa>(bs, Avx2.ConvertToVector256Int16(blk + MinsOffset), Avx2.ConvertToVector256Int16(blk + MinsOffset + 16),
            Avx2.ConvertToVector256Int16(blk + MinsOffset + 32), Avx2.ConvertToVector256Int16(blk + MinsOffset + 48));

    /// <summary>
    /// <see cref="PairMadd{TTile}"/> for one batch row and two groups: the same short sums, widened at the same steps,
    /// each activation broadcast used by both groups.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PairMaddTwo(byte* codesA, byte* codesB, sbyte* x, byte* scalesA, byte* scalesB, FifthBits fifthA, FifthBits fifthB,
        ref Vector256<int> sumiA, ref Vector256<int> sumiB)
    {
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<short> loA = default, hiA = default, loB = default, hiB = default;
        MaddStepTwo(codesA, codesB, x, fifthA, fifthB, 0, nibble, ref loA, ref hiA, ref loB, ref hiB);
        MaddStepTwo(codesA + 32, codesB + 32, x + 4, fifthA, fifthB, 1, nibble, ref loA, ref hiA, ref loB, ref hiB);
        MaddStepTwo(codesA + 64, codesB + 64, x + 8, fifthA, fifthB, 2, nibble, ref loA, ref hiA, ref loB, ref hiB);
        MaddStepTwo(codesA + 96, codesB + 96, x + 12, fifthA, fifthB, 3, nibble, ref loA, ref hiA, ref loB, ref hiB);
        if (TCodes.HighBits)
        {
            WidenOne(scalesA, ref loA, ref hiA, ref sumiA);
            WidenOne(scalesB, ref loB, ref hiB, ref sumiB);
        }
        MaddStepTwo(codesA + 128, codesB + 128, x + 16, fifthA, fifthB, 4, nibble, ref loA, ref hiA, ref loB, ref hiB);
        MaddStepTwo(codesA + 160, codesB + 160, x + 20, fifthA, fifthB, 5, nibble, ref loA, ref hiA, ref loB, ref hiB);
        MaddStepTwo(codesA + 192, codesB + 192, x + 24, fifthA, fifthB, 6, nibble, ref loA, ref hiA, ref loB, ref hiB);
        MaddStepTwo(codesA + 224, codesB + 224, x + 28, fifthA, fifthB, 7, nibble, ref loA, ref hiA, ref loB, ref hiB);
        WidenOne(scalesA, ref loA, ref hiA, ref sumiA);
        WidenOne(scalesB, ref loB, ref hiB, ref sumiB);
    }

    /// <summary>One step of <see cref="PairMaddTwo"/>: four columns of two groups' two sub-blocks against one batch row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddStepTwo(byte* codesA, byte* codesB, sbyte* xk, FifthBits fifthA, FifthBits fifthB, int k, Vector256<byte> nibble,
        ref Vector256<short> loA, ref Vector256<short> hiA, ref Vector256<short> loB, ref Vector256<short> hiB)
    {
        fifthA.Codes(codesA, k, nibble, out var la, out var ha);
        fifthB.Codes(codesB, k, nibble, out var lb, out var hb);
        var xLo = PackedSteps.Broadcast(xk);
        var xHi = PackedSteps.Broadcast(xk + 32);
        loA += Avx2.MultiplyAddAdjacent(la, xLo);
        hiA += Avx2.MultiplyAddAdjacent(ha, xHi);
        loB += Avx2.MultiplyAddAdjacent(lb, xLo);
        hiB += Avx2.MultiplyAddAdjacent(hb, xHi);
    }

    /// <summary><see cref="Widen{TTile}"/> for one group and batch row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WidenOne(byte* scales, ref Vector256<short> lo, ref Vector256<short> hi, ref Vector256<int> sumi)
    {
        ScalePairs(scales, out var scLo, out var scHi);
        sumi += Avx2.MultiplyAddAdjacent(lo, scLo) + Avx2.MultiplyAddAdjacent(hi, scHi);
        lo = hi = default;
    }

    /// <summary>
    /// Σ_sub m_sub·B_sub per row lane for one batch row, B_sub = bsums[2sub] + bsums[2sub + 1] (at most 32 · 127 in size,
    /// a short). The pairs (B[c], B[c + 1]) come from one vpackssdw: its 128-bit halves hold the pairs of sub-blocks 0–3 and
    /// 4–7, so rows 0..3 and 4..7 take different pairs in each step (the mins layout follows) and the halves swap for the
    /// last two steps.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> MinTerm<TIsa>(short* bs, Vector256<short> mA, Vector256<short> mB, Vector256<short> mA2, Vector256<short> mB2)
        where TIsa : IIntegerIsa
    {
        var b = Avx2.MultiplyAddAdjacent(Vector256.Load(bs), Vector256.Create((short)1));
        var pairs = Avx2.PackSignedSaturate(b, b).AsInt32();
        var swapped = Avx2.Permute4x64(pairs.AsInt64(), 0x4E).AsInt32();
        var m = Avx2.MultiplyAddAdjacent(mA, Avx2.Shuffle(pairs, 0x00).AsInt16());
        m = TIsa.DotWords(m, mB, Avx2.Shuffle(pairs, 0x55).AsInt16());
        m = TIsa.DotWords(m, mA2, Avx2.Shuffle(swapped, 0x00).AsInt16());
        return TIsa.DotWords(m, mB2, Avx2.Shuffle(swapped, 0x55).AsInt16());
    }

    /// <summary>y += d_x·(d·Σ sc·dot − dmin·Σ m·bsums) per row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(float* y, Vector256<int> sumi, Vector256<int> summ, Vector256<float> dw, Vector256<float> dminw, float dx)
    {
        var scale = Vector256.Create(dx);
        var acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi), dw * scale, Vector256.Load(y));
        Fma.MultiplyAddNegated(Avx.ConvertToVector256Single(summ), dminw * scale, acc).Store(y);
    }

    /// <summary>
    /// Σ sc·dot over sub-blocks 2i and 2i + 1 of one batch row, two dependency chains per sub-block (one row alone would
    /// otherwise wait on vpdpbusd's latency). Integer sums are exact, so the split does not change any result.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Pair<TIsa>(byte* codes, sbyte* x, byte* scales, FifthBits fifth) where TIsa : IIntegerIsa
    {
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<int> lo0 = default, lo1 = default, hi0 = default, hi1 = default;
        for (int k = 0; k < 8; k += 2)
        {
            fifth.Codes(codes + 32 * k, k, nibble, out var l0, out var h0);
            fifth.Codes(codes + 32 * k + 32, k + 1, nibble, out var l1, out var h1);
            lo0 = TIsa.Dot(lo0, l0, PackedSteps.Broadcast(x + 4 * k));
            hi0 = TIsa.Dot(hi0, h0, PackedSteps.Broadcast(x + 32 + 4 * k));
            lo1 = TIsa.Dot(lo1, l1, PackedSteps.Broadcast(x + 4 * k + 4));
            hi1 = TIsa.Dot(hi1, h1, PackedSteps.Broadcast(x + 36 + 4 * k));
        }
        return Avx2.MultiplyLow(lo0 + lo1, Avx2.ConvertToVector256Int32(scales))
             + Avx2.MultiplyLow(hi0 + hi1, Avx2.ConvertToVector256Int32(scales + 8));
    }

    /// <summary>Σ sc·dot over sub-blocks 2i and 2i + 1 of two to four batch rows (activations 256 bytes apart), one chain per sub-block and row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PairN<TTile, TIsa>(byte* codes, sbyte* x, byte* scales, FifthBits fifth,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3) where TTile : IBatchTile where TIsa : IIntegerIsa
    {
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<int> lo0 = default, lo1 = default, lo2 = default, lo3 = default;
        Vector256<int> hi0 = default, hi1 = default, hi2 = default, hi3 = default;
        for (int k = 0; k < 8; k++)
        {
            fifth.Codes(codes + 32 * k, k, nibble, out var lo, out var hi);
            sbyte* xk = x + 4 * k;
            lo0 = TIsa.Dot(lo0, lo, PackedSteps.Broadcast(xk));
            hi0 = TIsa.Dot(hi0, hi, PackedSteps.Broadcast(xk + 32));
            lo1 = TIsa.Dot(lo1, lo, PackedSteps.Broadcast(xk + 256));
            hi1 = TIsa.Dot(hi1, hi, PackedSteps.Broadcast(xk + 288));
            if (TTile.Count > 2)
            {
                lo2 = TIsa.Dot(lo2, lo, PackedSteps.Broadcast(xk + 512));
                hi2 = TIsa.Dot(hi2, hi, PackedSteps.Broadcast(xk + 544));
            }
            if (TTile.Count > 3)
            {
                lo3 = TIsa.Dot(lo3, lo, PackedSteps.Broadcast(xk + 768));
                hi3 = TIsa.Dot(hi3, hi, PackedSteps.Broadcast(xk + 800));
            }
        }
        var scLo = Avx2.ConvertToVector256Int32(scales);
        var scHi = Avx2.ConvertToVector256Int32(scales + 8);
        sumi0 += Avx2.MultiplyLow(lo0, scLo) + Avx2.MultiplyLow(hi0, scHi);
        sumi1 += Avx2.MultiplyLow(lo1, scLo) + Avx2.MultiplyLow(hi1, scHi);
        if (TTile.Count > 2) sumi2 += Avx2.MultiplyLow(lo2, scLo) + Avx2.MultiplyLow(hi2, scHi);
        if (TTile.Count > 3) sumi3 += Avx2.MultiplyLow(lo3, scLo) + Avx2.MultiplyLow(hi3, scHi);
    }

    /// <summary>
    /// <see cref="PairN{TTile, TIsa}"/> for one to four batch rows without VNNI: the <c>vpmaddubsw</c> pair products of a
    /// sub-block's eight steps summed as shorts (at most 16 · 15 · 127 = 30,480, no overflow), then one <c>vpmaddwd</c>
    /// against the scales as short pairs: the same exact sums. Q5_K's codes reach 31, so its shorts are widened after
    /// four steps (8 · 31 · 127 = 31,496) and again after eight.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void PairMadd<TTile>(byte* codes, sbyte* x, byte* scales, FifthBits fifth,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3) where TTile : IBatchTile
    {
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<short> lo0 = default, lo1 = default, lo2 = default, lo3 = default;
        Vector256<short> hi0 = default, hi1 = default, hi2 = default, hi3 = default;
        // NOTE: written out rather than looped: the loop's index arithmetic took issue slots from the vector steps.
        MaddStep<TTile>(codes, x, fifth, 0, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        MaddStep<TTile>(codes + 32, x + 4, fifth, 1, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        MaddStep<TTile>(codes + 64, x + 8, fifth, 2, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        MaddStep<TTile>(codes + 96, x + 12, fifth, 3, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        if (TCodes.HighBits)
        {
            Widen<TTile>(scales, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3,
                ref sumi0, ref sumi1, ref sumi2, ref sumi3);
        }
        MaddStep<TTile>(codes + 128, x + 16, fifth, 4, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        MaddStep<TTile>(codes + 160, x + 20, fifth, 5, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        MaddStep<TTile>(codes + 192, x + 24, fifth, 6, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        MaddStep<TTile>(codes + 224, x + 28, fifth, 7, nibble, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3);
        Widen<TTile>(scales, ref lo0, ref hi0, ref lo1, ref hi1, ref lo2, ref hi2, ref lo3, ref hi3, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
    }

    /// <summary>Adds the short pair sums times the scales to the int sums and clears the shorts.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Widen<TTile>(byte* scales,
        ref Vector256<short> lo0, ref Vector256<short> hi0, ref Vector256<short> lo1, ref Vector256<short> hi1,
        ref Vector256<short> lo2, ref Vector256<short> hi2, ref Vector256<short> lo3, ref Vector256<short> hi3,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3) where TTile : IBatchTile
    {
        ScalePairs(scales, out var scLo, out var scHi);
        sumi0 += Avx2.MultiplyAddAdjacent(lo0, scLo) + Avx2.MultiplyAddAdjacent(hi0, scHi);
        if (TTile.Count > 1) sumi1 += Avx2.MultiplyAddAdjacent(lo1, scLo) + Avx2.MultiplyAddAdjacent(hi1, scHi);
        if (TTile.Count > 2) sumi2 += Avx2.MultiplyAddAdjacent(lo2, scLo) + Avx2.MultiplyAddAdjacent(hi2, scHi);
        if (TTile.Count > 3) sumi3 += Avx2.MultiplyAddAdjacent(lo3, scLo) + Avx2.MultiplyAddAdjacent(hi3, scHi);
        lo0 = hi0 = lo1 = hi1 = lo2 = hi2 = lo3 = hi3 = default;
    }

    /// <summary>
    /// The sixteen scale bytes (sub-block 2i, then 2i + 1, rows 0..7) in both halves; each shuffle makes one sub-block's
    /// scales the short pairs (sc, sc) per row lane.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScalePairs(byte* scales, out Vector256<short> scLo, out Vector256<short> scHi)
    {
        var sc = Avx2.BroadcastVector128ToVector256(scales);
        scLo = Avx2.Shuffle(sc, Vector256.Create(
            (byte)0, 0x80, 0, 0x80, 1, 0x80, 1, 0x80, 2, 0x80, 2, 0x80, 3, 0x80, 3, 0x80,
            4, 0x80, 4, 0x80, 5, 0x80, 5, 0x80, 6, 0x80, 6, 0x80, 7, 0x80, 7, 0x80)).AsInt16();
        scHi = Avx2.Shuffle(sc, Vector256.Create(
            (byte)8, 0x80, 8, 0x80, 9, 0x80, 9, 0x80, 10, 0x80, 10, 0x80, 11, 0x80, 11, 0x80,
            12, 0x80, 12, 0x80, 13, 0x80, 13, 0x80, 14, 0x80, 14, 0x80, 15, 0x80, 15, 0x80)).AsInt16();
    }

    /// <summary>One step of <see cref="PairMadd{TTile}"/>: four columns of the eight rows' two sub-blocks against up to
    /// four batch rows' activations.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddStep<TTile>(byte* codes, sbyte* xk, FifthBits fifth, int k, Vector256<byte> nibble,
        ref Vector256<short> lo0, ref Vector256<short> hi0, ref Vector256<short> lo1, ref Vector256<short> hi1,
        ref Vector256<short> lo2, ref Vector256<short> hi2, ref Vector256<short> lo3, ref Vector256<short> hi3) where TTile : IBatchTile
    {
        fifth.Codes(codes, k, nibble, out var lo, out var hi);
        lo0 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk));
        hi0 += Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 32));
        if (TTile.Count > 1)
        {
            lo1 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 256));
            hi1 += Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 288));
        }
        if (TTile.Count > 2)
        {
            lo2 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 512));
            hi2 += Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 544));
        }
        if (TTile.Count > 3)
        {
            lo3 += Avx2.MultiplyAddAdjacent(lo, PackedSteps.Broadcast(xk + 768));
            hi3 += Avx2.MultiplyAddAdjacent(hi, PackedSteps.Broadcast(xk + 800));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> High(Vector256<byte> v, Vector256<byte> nibble) =>
        Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble;

    /// <summary>Where a pair of sub-blocks finds its fifth code bits (Q5_K; unused for Q4_K).</summary>
    internal readonly struct FifthBits(byte* highBits, Vector128<ushort> shift)
    {
        /// <summary>
        /// The low- and high-nibble codes of step <paramref name="k"/> of the pair at <paramref name="codes"/>, with Q5_K's
        /// fifth bits: bits 2i and 2i + 1 of the step's high-bit bytes, moved to bit 4 (the 16-bit shifts leak bits across
        /// bytes only where the mask clears them).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Codes(byte* codes, int k, Vector256<byte> nibble, out Vector256<byte> lo, out Vector256<byte> hi)
        {
            var v = Vector256.Load(codes);
            lo = v & nibble;
            hi = High(v, nibble);
            if (TCodes.HighBits)
            {
                var t = Avx2.ShiftRightLogical(Vector256.Load(highBits + 32 * k).AsUInt16(), shift);
                var bit4 = Vector256.Create((byte)0x10);
                lo |= Avx2.ShiftLeftLogical(t, 4).AsByte() & bit4;
                hi |= Avx2.ShiftLeftLogical(t, 3).AsByte() & bit4;
            }
        }
    }
}
